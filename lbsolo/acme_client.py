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

An order is resumable: as soon as the CA has created it, `order` hands a `PendingOrder` (its URL,
the challenge kind, the certificate's key) to the caller, who keeps it; a daemon killed mid-order
passes it back (`resume=`) and the same order is taken up where it stands (its challenge answered
if it was not, polled, finalized, or its certificate just downloaded), so a restart sends no
second order. An order the CA has ended (invalid, expired, gone) raises `OrderGone`.

Polling starts at 0.1 s and grows to 1 s (certbot's `poll_and_finalize` sleeps a whole second
before each look, which made a certificate wait two seconds it did not need to).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
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
    "OrderGone",
    "PendingOrder",
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


class OrderGone(AcmeFailed):
    """The order a previous run left is over at the CA (invalid, expired or unknown): a new one is needed."""

    code = "order_gone"


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


@dataclass(frozen=True)
class PendingOrder:
    """An order the CA has created and not finished: what it takes to resume it after a restart."""

    url: str
    challenge: str  # HTTP01 or TLS_ALPN01
    key_pem: bytes  # the certificate's key, in the CSR the order is finalized with


_POLL_FIRST = 0.1  # seconds before the first look again at an authorization or an order
_POLL_MAX = 1.0


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

    def order(
        self,
        domain: str,
        responder: Responder,
        *,
        challenge: str = HTTP01,
        deadline: float = 90.0,
        resume: PendingOrder | None = None,
        created: Callable[[PendingOrder], None] | None = None,
        hold: Callable[[str], None] | None = None,
    ) -> Issued:
        """A certificate for `domain`, its `challenge` (HTTP01 or TLS_ALPN01) answered by
        `responder` (withdrawn afterwards, whatever happens): from a new order, handed to `created`
        as soon as the CA made it, or from the order `resume` names (its challenge kind, not
        `challenge`). `hold(step)` is called after "acme_ordered" and "acme_answered" (tests stop
        there)."""
        acme = self.connect()
        try:
            if resume is not None:
                challenge, key_pem = resume.challenge, resume.key_pem
                orderr = self._fetch_order(acme, domain, resume)
            else:
                key = ec.generate_private_key(ec.SECP256R1())
                key_pem = key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
                orderr = acme.new_order(crypto_util.make_csr(key_pem, [domain]))
                if created is not None:
                    created(PendingOrder(orderr.uri, challenge, key_pem))
                if hold is not None:
                    hold("acme_ordered")
            if orderr.body.status == messages.STATUS_PENDING:
                self._answer(acme, domain, orderr, challenge, responder)
                if hold is not None:
                    hold("acme_answered")
            chain = self._finish(acme, orderr, time.monotonic() + deadline)
        except AcmeFailed:
            raise
        except Exception as e:
            problem = getattr(e, "code", None) if isinstance(e, messages.Error) else None
            if isinstance(e, errors.ValidationError) or problem in _AUTHORIZATION_PROBLEMS:
                raise AuthorizationFailed(_reason(e)) from e
            raise AcmeFailed(_reason(e)) from e
        finally:
            responder.withdraw()
        issuer, not_before, not_after = certificate_facts(chain)
        return Issued(chain, key_pem, issuer, not_before, not_after)

    @staticmethod
    def _fetch_order(acme: client.ClientV2, domain: str, pending: PendingOrder) -> messages.OrderResource:
        """The order at `pending.url` as the CA has it now, with its authorizations; OrderGone if it is over."""
        try:
            # POST-as-GET (RFC 8555 6.3): certbot's client has no public call for an order by URL.
            body = messages.Order.from_json(acme._post_as_get(pending.url).json())
            if body.status in (messages.STATUS_INVALID, messages.STATUS_DEACTIVATED):
                why = f": {body.error.detail or body.error.typ}" if body.error is not None else ""
                raise OrderGone(f"the order left by the previous run is {body.status}{why}")
            if [i.value for i in body.identifiers] != [domain]:
                raise OrderGone(f"the order left by the previous run is not for {domain}")
            authorizations = [acme._authzr_from_response(acme._post_as_get(u), uri=u) for u in body.authorizations]
        except OrderGone:
            raise
        except messages.Error as e:  # unknown (404), expired, malformed
            raise OrderGone(f"the order left by the previous run is gone: {_reason(e)}") from e
        csr = crypto_util.make_csr(pending.key_pem, [domain])
        return messages.OrderResource(body=body, uri=pending.url, authorizations=authorizations, csr_pem=csr)

    @staticmethod
    def _answer(
        acme: client.ClientV2, domain: str, orderr: messages.OrderResource, challenge: str, responder: Responder
    ) -> None:
        """Hand the responder each pending authorization's `challenge`, and tell the CA to look
        (unless a previous run told it already: then it may look at any moment, and the answer
        must be there)."""
        kind = TLSALPN01 if challenge == TLS_ALPN01 else challenges.HTTP01
        for authz in orderr.authorizations:
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
            if chall.status == messages.STATUS_PENDING:
                acme.answer_challenge(chall, response)

    @staticmethod
    def _finish(acme: client.ClientV2, orderr: messages.OrderResource, deadline: float) -> bytes:
        """Wait for the authorizations, finalize (once ready) and download the chain, polling
        from _POLL_FIRST up to _POLL_MAX seconds apart (or as the CA's Retry-After says, within it)."""
        pause = _POLL_FIRST

        def wait(response: Any) -> None:
            nonlocal pause
            if time.monotonic() >= deadline:
                raise errors.TimeoutError()
            asked = response.headers.get("Retry-After", "")
            time.sleep(min(float(asked) if asked.isdigit() else pause, _POLL_MAX, deadline - time.monotonic()))
            pause = min(pause * 2, _POLL_MAX)

        for authz in orderr.authorizations:
            while authz.body.status in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                authz, response = acme.poll(authz)
                if authz.body.status in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                    wait(response)
            if authz.body.status != messages.STATUS_VALID:
                raise errors.ValidationError([authz])
        pause = _POLL_FIRST
        while True:
            response = acme._post_as_get(orderr.uri)
            body = messages.Order.from_json(response.json())
            if body.status == messages.STATUS_READY:
                finalized = acme.begin_finalization(orderr).body
                if finalized.status != messages.STATUS_VALID:
                    wait(response)
                    continue
                body = finalized
            if body.status == messages.STATUS_VALID and body.certificate is not None:
                return acme._post_as_get(body.certificate).text.encode()
            if body.status == messages.STATUS_INVALID:
                if body.error is not None:
                    raise errors.IssuanceError(body.error)
                raise AcmeFailed("the CA ended the order without a certificate")
            wait(response)
