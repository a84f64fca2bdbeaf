"""The ACME client (RFC 8555): an account at a CA and orders for one domain at a time, validated
over HTTP-01 or TLS-ALPN-01 (RFC 8737).

Built on certbot's `acme` and `josepy` libraries, the only module that imports them; it is
imported only when ACME is on (`LBSOLO_ACME_EMAIL`), so the idle daemon never pays for them
(they bring requests and pyOpenSSL along). Every call blocks on the network: the core runs them
in a thread (`asyncio.to_thread`). The account key is made once and kept 0600 in the directory
it is given, with the account's URL.

certbot's `acme` dropped its TLS-ALPN-01 classes (5.x parses the challenge as unrecognized): the
challenge and its response are declared here (`TLSALPN01`), and the challenge certificate
(`alpn_certificate`: self-signed, the name as its only SAN, the critical acmeIdentifier extension
holding the SHA-256 of the key authorization) is built with `cryptography`.

What it must not do: decide when to order or which challenge to use (lbsolo.acme_plan does),
answer challenges (the proxy does, from what the `Responder` hands it), or keep certificates
(the core stores them).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lbsolo.errors import LbsoloError

__all__ = [
    "HTTP01",
    "TLS_ALPN01",
    "AcmeAccount",
    "AcmeFailed",
    "AuthorizationFailed",
    "ChallengeUnavailable",
    "Issued",
    "Responder",
    "alpn_certificate",
    "certificate_facts",
]

HTTP01 = "http-01"
TLS_ALPN01 = "tls-alpn-01"
# RFC 8737: the acmeIdentifier extension of a TLS-ALPN-01 certificate.
_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")

_USER_AGENT = "lbsolo"


class AcmeFailed(LbsoloError):
    """The CA refused or could not be reached; the message is one line, for `lbsolo certs`."""

    status = 502
    code = "acme_failed"


class AuthorizationFailed(AcmeFailed):
    """The CA could not validate the domain: the failures Let's Encrypt counts against its limit."""

    code = "authorization_failed"


class ChallengeUnavailable(AcmeFailed):
    """The CA offers no challenge of the kind asked for this name (the other kind may do)."""

    code = "challenge_unavailable"


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The response to a TLS-ALPN-01 challenge: an empty object, as for HTTP-01 (RFC 8555 7.5.1)."""

    typ = TLS_ALPN01


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """A TLS-ALPN-01 challenge (RFC 8737). `validation` is the key authorization; the
    certificate the validator must get is `alpn_certificate(domain, it)`."""

    response_cls = TLSALPN01Response
    typ = TLS_ALPN01

    def validation(self, account_key: jose.JWK, **kwargs: Any) -> str:
        return self.key_authorization(account_key)


def alpn_certificate(domain: str, key_authorization: str) -> tuple[bytes, bytes]:
    """The self-signed certificate (and its key), PEM, that answers TLS-ALPN-01 for `domain`:
    `domain` as its only SAN, and the critical acmeIdentifier extension holding the SHA-256 of
    the key authorization (as a DER OCTET STRING, RFC 8737 section 3)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "lbsolo TLS-ALPN-01 challenge")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(_ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class Responder(Protocol):
    """Who answers the challenges of an order (the proxy, through the core); called from the
    order's thread. `withdraw` takes back everything handed so far."""

    def http01(self, token: str, key_authorization: str) -> None: ...

    def tls_alpn01(self, domain: str, cert_pem: bytes, key_pem: bytes) -> None: ...

    def withdraw(self) -> None: ...


# Problem types (RFC 8555 section 6.7) of a failed validation.
_AUTHORIZATION_PROBLEMS = {"unauthorized", "connection", "dns", "incorrectResponse", "tls", "caa"}


@dataclass(frozen=True)
class Issued:
    chain_pem: bytes  # the leaf first, then the intermediates
    key_pem: bytes
    issuer: str
    not_before: float
    not_after: float


def certificate_facts(chain_pem: bytes) -> tuple[str, float, float]:
    """(issuer's common name or whole name, not before, not after) of the first certificate of a chain."""
    cert = x509.load_pem_x509_certificate(chain_pem)
    names = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    issuer = str(names[0].value) if names else cert.issuer.rfc4514_string()
    return issuer, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def _write_private(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reason(e: BaseException) -> str:
    """A CA's or the network's failure as one short line."""
    if isinstance(e, errors.ValidationError):
        for authz in e.failed_authzrs:
            for chall in authz.body.challenges:
                if chall.error is not None:
                    return f"validation failed: {chall.error.detail or chall.error.typ}"
        return "validation failed"
    if isinstance(e, messages.Error):
        return f"the CA refused: {e.detail or e.typ}"
    if isinstance(e, errors.TimeoutError):
        return "the CA did not finish the order in time"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:300]


class AcmeAccount:
    """An account at the ACME CA at `directory_url`, its key and URL kept in `home` (0600).

    `ca_bundle`: a file of CA certificates the CA's HTTPS endpoint is checked against (a private
    ACME CA such as Pebble); empty: the system's.
    """

    def __init__(
        self, directory_url: str, email: str, home: Path, *, ca_bundle: str = "", timeout: float = 30.0
    ) -> None:
        self.directory_url = directory_url
        self.email = email
        self.home = Path(home)
        self.ca_bundle = ca_bundle
        self.timeout = timeout
        self._client: client.ClientV2 | None = None

    @property
    def key_path(self) -> Path:
        return self.home / "account-key.pem"

    @property
    def account_path(self) -> Path:
        return self.home / "account.json"

    def _key(self) -> jose.JWKRSA:
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.key_path.exists():
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise AcmeFailed(f"{self.key_path} is not an RSA key")
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            _write_private(self.key_path, pem)
        return jose.JWKRSA(key=key)

    def connect(self) -> client.ClientV2:
        """The client with a registered account (registered on the first call: the account's key
        is new, or the CA knows it already and says where its account is)."""
        if self._client is not None:
            return self._client
        try:
            net = client.ClientNetwork(
                self._key(),
                user_agent=_USER_AGENT,
                verify_ssl=self.ca_bundle or True,  # type: ignore[arg-type]  # requests takes a path too
                timeout=int(self.timeout),
            )
            directory = client.ClientV2.get_directory(self.directory_url, net)
            acme = client.ClientV2(directory, net)
            registration = messages.NewRegistration.from_data(email=self.email or None, terms_of_service_agreed=True)
            try:
                regr = acme.new_account(registration)
            except errors.ConflictError as e:  # this key has an account already
                regr = messages.RegistrationResource(uri=e.location, body=messages.Registration())
                net.account = regr
            _write_private(self.account_path, json.dumps({"url": regr.uri, "email": self.email}).encode())
        except AcmeFailed:
            raise
        except Exception as e:
            raise AcmeFailed(f"no account at {self.directory_url}: {_reason(e)}") from e
        self._client = acme
        return acme

    def order(self, domain: str, responder: Responder, *, challenge: str = HTTP01, deadline: float = 90.0) -> Issued:
        """A certificate for `domain` from a new order, its `challenge` (HTTP01 or TLS_ALPN01)
        answered by `responder` (withdrawn afterwards, whatever happens)."""
        kind = TLSALPN01 if challenge == TLS_ALPN01 else challenges.HTTP01
        acme = self.connect()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            order = acme.new_order(crypto_util.make_csr(key_pem, [domain]))
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # validated recently for this account: the CA reuses it
                chall = next((c for c in authz.body.challenges if isinstance(c.chall, kind)), None)
                if chall is None:
                    raise ChallengeUnavailable(f"the CA offers no {challenge} challenge for {domain}")
                response, validation = chall.response_and_validation(acme.net.key)
                if kind is TLSALPN01:
                    responder.tls_alpn01(domain, *alpn_certificate(domain, validation))
                else:
                    responder.http01(chall.chall.encode("token"), validation)
                acme.answer_challenge(chall, response)
            when = datetime.datetime.now() + datetime.timedelta(seconds=deadline)
            done = acme.poll_and_finalize(order, deadline=when)
        except AcmeFailed:
            raise
        except Exception as e:
            problem = getattr(e, "code", None) if isinstance(e, messages.Error) else None
            if isinstance(e, errors.ValidationError) or problem in _AUTHORIZATION_PROBLEMS:
                raise AuthorizationFailed(_reason(e)) from e
            raise AcmeFailed(_reason(e)) from e
        finally:
            responder.withdraw()
        chain = done.fullchain_pem.encode()
        issuer, not_before, not_after = certificate_facts(chain)
        return Issued(chain, key_pem, issuer, not_before, not_after)
