"""The ACME client (RFC 8555): an account at a CA and orders for one domain at a time, over HTTP-01.

Built on certbot's `acme` and `josepy` libraries, the only module that imports them; it is
imported only when ACME is on (`LBSOLO_ACME_EMAIL`), so the idle daemon never pays for them
(they bring requests and pyOpenSSL along). Every call blocks on the network: the core runs them
in a thread (`asyncio.to_thread`). The account key is made once and kept 0600 in the directory
it is given, with the account's URL.

What it must not do: decide when to order (lbsolo.acme_plan does), answer challenges (the proxy
does, from the tokens `publish` hands it), or keep certificates (the core stores them).
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lbsolo.errors import LbsoloError

__all__ = ["AcmeAccount", "AcmeFailed", "AuthorizationFailed", "Issued", "certificate_facts"]

_USER_AGENT = "lbsolo"


class AcmeFailed(LbsoloError):
    """The CA refused or could not be reached; the message is one line, for `lbsolo certs`."""

    status = 502
    code = "acme_failed"


class AuthorizationFailed(AcmeFailed):
    """The CA could not validate the domain: the failures Let's Encrypt counts against its limit."""

    code = "authorization_failed"


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

    def order(
        self,
        domain: str,
        publish: Callable[[str, str], None],
        withdraw: Callable[[str], None],
        *,
        deadline: float = 90.0,
    ) -> Issued:
        """A certificate for `domain` from a new order, its HTTP-01 challenges answered by whoever
        `publish(token, key_authorization)` hands them to (withdrawn afterwards, whatever happens)."""
        acme = self.connect()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        published: list[str] = []
        try:
            order = acme.new_order(crypto_util.make_csr(key_pem, [domain]))
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # validated recently for this account: the CA reuses it
                chall = next((c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)), None)
                if chall is None:
                    raise AcmeFailed(f"the CA offers no HTTP-01 challenge for {domain}")
                response, validation = chall.response_and_validation(acme.net.key)
                token = chall.chall.encode("token")
                publish(token, validation)
                published.append(token)
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
            for token in published:
                withdraw(token)
        chain = done.fullchain_pem.encode()
        issuer, not_before, not_after = certificate_facts(chain)
        return Issued(chain, key_pem, issuer, not_before, not_after)
