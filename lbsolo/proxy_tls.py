"""TLS for the proxy: a local certificate authority and certificate selection by SNI.

For the lbsolo domain, a CA generated on first start (kept in a directory, key readable by the
owner only) issues one certificate for `<domain>` and `*.<domain>`, made once before the
listener opens and served to every name one label under the domain: a handshake never mints on
the event loop. The CA carries critical NameConstraints (the domain, localhost, loopback
addresses), so its key, if it leaks, cannot sign for anyone else's names. User-supplied
certificates for custom domains are picked by SNI first.

Where certificates come from is one seam, `CertificateSource`: `CertStore` asks its sources, in
order, for a host it has no certificate for. `LocalCASource` (the local CA, for the lbsolo domain)
is one source; `PushedSource` is another: certificates another part obtained (ACME, in the
core) are pushed into it, and `CertStore.refresh` makes the next handshake use them.
No I/O beyond the CA directory; of lbsolo, only the token bucket of `dns_ratelimit` is used.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lbsolo.dns_ratelimit import RateLimit, RateLimiter

__all__ = [
    "ALPN_PROTOCOLS",
    "CertStore",
    "CertificateSource",
    "LocalCA",
    "LocalCASource",
    "PushedSource",
    "served_names",
]

# What the HTTPS listener offers by ALPN, in order of preference: HTTP/2 (lbsolo.proxy_h2), then
# HTTP/1.1 (and what a client that offers nothing gets). Every context a handshake may switch to
# offers the same (`_offer`).
ALPN_PROTOCOLS = ("h2", "http/1.1")
_CA_DAYS = 3650
_LEAF_DAYS = 397  # what browsers accept for a leaf certificate
# What a local CA may sign besides its domain: loopback, where lbsolo also answers.
_LOCAL_NAMES = ("localhost",)
_LOCAL_NETWORKS = ("127.0.0.0/8", "::1/128")
_LOOPBACK_IPS = ("127.0.0.1", "::1")  # also in the domain certificate, for https://127.0.0.1:<port>


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically, readable by the owner only."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _norm(host: str) -> str:
    return host.lower().strip(".")


def _under(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def served_names(domain: str) -> x509.NameConstraints:
    """The names a local CA for `domain` may sign: the domain and its subdomains, localhost, loopback."""
    dns: list[x509.GeneralName] = [x509.DNSName(n) for n in (_norm(domain), *_LOCAL_NAMES)]
    ips: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_network(n)) for n in _LOCAL_NETWORKS]
    return x509.NameConstraints(permitted_subtrees=dns + ips, excluded_subtrees=None)


def _is_address(name: str) -> bool:
    if not name or not (name[-1].isdigit() or ":" in name):  # no top-level domain ends in a digit
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _permits(constraints: x509.NameConstraints, name: x509.GeneralName) -> bool:
    for subtree in constraints.permitted_subtrees or ():
        if isinstance(name, x509.DNSName) and isinstance(subtree, x509.DNSName):
            if _under(name.value.removeprefix("*."), subtree.value):
                return True
        elif isinstance(name, x509.IPAddress) and isinstance(subtree, x509.IPAddress):
            net = subtree.value
            if isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network) and name.value in net:
                return True
    return False


class LocalCA:
    """A certificate authority kept in `directory` (ca.pem, ca-key.pem), created on first use.

    Made with a `domain`, a new CA is limited by NameConstraints to `served_names(domain)` and
    refuses to issue outside them. Without one (stand-ins for other CAs in tests) it is unlimited.
    """

    def __init__(self, directory: Path | str, name: str = "lbsolo local CA", *, domain: str | None = None) -> None:
        self.directory = Path(directory)
        self.name = name
        self.domain = _norm(domain) if domain else None
        self.cert_path = self.directory / "ca.pem"
        self.key_path = self.directory / "ca-key.pem"
        self._cert: x509.Certificate | None = None
        self._key: ec.EllipticCurvePrivateKey | None = None

    def load_or_create(self) -> LocalCA:
        if self._cert is not None:
            return self
        if self.cert_path.exists() and self.key_path.exists():
            self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{self.key_path} is not an EC key")
            self._key = key
            return self
        self._create()
        return self

    def _create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if self.domain:
            builder = builder.add_extension(served_names(self.domain), critical=True)
        cert = builder.sign(key, hashes.SHA256())
        _write_private(self.key_path, _pem_key(key))
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._cert, self._key = cert, key

    def rotate(self) -> LocalCA:
        """Replace the CA with a new one: leaves it signed stop verifying once the new one is trusted.

        The old key is deleted (a rotation is for a key that may have leaked); the old certificate
        is kept as ca.pem.old, to remove it from trust stores. The caller makes sure no running
        daemon still serves certificates of the old CA.
        """
        if self.cert_path.exists():
            self.cert_path.replace(self.directory / "ca.pem.old")
        self.key_path.unlink(missing_ok=True)
        self._cert = self._key = None
        self._create()
        return self

    @property
    def constraints(self) -> x509.NameConstraints | None:
        """The CA's NameConstraints (None for a CA made before they existed, or without a domain)."""
        self.load_or_create()
        assert self._cert is not None
        try:
            return self._cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return None

    def problem(self) -> str | None:
        """Why this CA should be replaced with `lbsolo tls:rotate-ca`, or None."""
        if not self.domain:
            return None
        constraints = self.constraints
        if constraints is None:
            return (
                f"the local CA {self.cert_path} has no name constraints (made by an older lbsolo): a leaked key "
                "could sign for any domain; replace it with `lbsolo tls:rotate-ca`"
            )
        if not _permits(constraints, x509.DNSName(self.domain)):
            return (
                f"the local CA {self.cert_path} may not sign for the domain {self.domain} (made for another "
                "domain); replace it with `lbsolo tls:rotate-ca`"
            )
        return None

    @property
    def cert_pem(self) -> bytes:
        self.load_or_create()
        assert self._cert is not None
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, host: str, *more: str) -> tuple[bytes, bytes]:
        """A leaf certificate for `host` (and `more` names) and its key (PEM), signed by this CA."""
        self.load_or_create()
        assert self._cert is not None and self._key is not None
        names = [_san(n) for n in (host, *more)]
        constraints = self.constraints
        outside = [n.value for n in names if constraints is not None and not _permits(constraints, n)]
        if outside:
            raise ValueError(f"the local CA may not sign for {', '.join(map(str, outside))}")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem, _pem_key(key)

    def trust_instructions(self) -> str:
        """How to make a browser or system trust this CA (what `lbsolo` prints for it)."""
        path = self.cert_path
        return (
            f"lbsolo's local CA certificate: {path}\n"
            f"  Debian/Ubuntu: sudo cp {path} /usr/local/share/ca-certificates/lbsolo.crt && "
            "sudo update-ca-certificates\n"
            f"  macOS: sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {path}\n"
            f"  curl: curl --cacert {path} https://APP.DOMAIN/\n"
            "  Firefox: Settings > Privacy & Security > Certificates > Import\n"
            "After `lbsolo tls:rotate-ca` the CA is a new one: trust it again the same way (and remove the "
            "old one, kept as ca.pem.old, from the places you had added it to).\n"
        )


class CertificateSource(Protocol):
    """Issues certificates for hosts that have no user-supplied one; where ACME plugs in.

    `issue` runs inside the TLS handshake, on the event loop: it must answer at once, from memory
    or a local file. A source that has to ask someone (an ACME CA) or work for it (mint a key)
    answers None for now, gets the certificate in the background, and calls `CertStore.remove(host)`
    after each renewal, so the next handshake asks again. A source that does not serve a host
    answers None and the next source is asked.
    """

    def issue(self, host: str) -> tuple[bytes, bytes] | None:
        """(certificate chain, private key) in PEM for `host`, or None."""
        ...


_MINTED_MAX = 64  # minted certificates not yet handed to the store


class LocalCASource:
    """The local CA as a certificate source: the lbsolo domain and its subdomains, nothing else.

    The domain and the names one label under it share one certificate (`<domain>`, `*.<domain>`),
    minted on the first ask: `CertStore.server_context` asks before the listener opens. A name
    deeper under the domain, which a wildcard does not cover, is minted in a worker thread at no
    more than `rate` a second (bursts of `burst`): until it is ready the answer is None.
    """

    def __init__(self, ca: LocalCA, domain: str, *, rate: float = 4.0, burst: int = 8) -> None:
        self.ca = ca
        self.domain = _norm(domain)
        self._domain_pem: tuple[bytes, bytes] | None = None
        self._limit = RateLimiter(RateLimit(qps=rate, burst=burst, exempt_loopback=False, max_clients=1))
        self._lock = threading.Lock()
        self._minted: dict[str, tuple[bytes, bytes]] = {}
        self._pending: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None

    def issue(self, host: str) -> tuple[bytes, bytes] | None:
        # A certificate for a name outside the domain would be trusted only by machines that
        # trust this CA anyway, and would hide a missing real certificate: refuse instead.
        if not _under(host, self.domain):
            return None
        if host == self.domain or "." not in host[: -len(self.domain) - 1]:
            if self._domain_pem is None:
                self._domain_pem = self.ca.issue(self.domain, "*." + self.domain, *_LOOPBACK_IPS)
            return self._domain_pem
        with self._lock:
            pem = self._minted.pop(host, None)
            if pem is not None or host in self._pending or not self._limit.allow("mint"):
                return pem
            self._pending.add(host)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lbsolo-tls-mint")
        self._pool.submit(self._mint, host)
        return None

    def _mint(self, host: str) -> None:
        try:
            pem = self.ca.issue(host)
        finally:
            with self._lock:
                self._pending.discard(host)
        with self._lock:
            while len(self._minted) >= _MINTED_MAX:  # never asked for again: oldest first
                del self._minted[next(iter(self._minted))]
            self._minted[host] = pem

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait for the background mints asked so far (for tests)."""
        if self._pool is not None:
            self._pool.submit(lambda: None).result(timeout)


class PushedSource:
    """Certificates obtained elsewhere (an ACME CA, by the core), pushed in by host; answers from memory.

    `put` and `drop` may be called from any thread; the handshake reads one dict entry.
    """

    def __init__(self) -> None:
        self._pems: dict[str, tuple[bytes, bytes]] = {}

    def put(self, host: str, chain_pem: bytes, key_pem: bytes) -> None:
        self._pems[_norm(host)] = (chain_pem, key_pem)

    def drop(self, host: str) -> None:
        self._pems.pop(_norm(host), None)

    def hosts(self) -> list[str]:
        return sorted(self._pems)

    def issue(self, host: str) -> tuple[bytes, bytes] | None:
        return self._pems.get(host)


def _offer(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Make `ctx` offer the listener's protocols (ALPN_PROTOCOLS)."""
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    return ctx


def _context(cert_pem: bytes, key_pem: bytes, directory: Path) -> ssl.SSLContext:
    """A server context for one certificate (the ssl module loads chains from files only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _offer(ctx)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".pem") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key_pem + cert_pem)
        f.flush()
        ctx.load_cert_chain(f.name)
    return ctx


_ISSUED_MAX = 512  # certificates from sources kept per store


class CertStore:
    """Chooses the certificate for each TLS handshake by SNI.

    Order: a user certificate for the exact host, then one for its wildcard (`*.example.com`);
    for the domain and the names one label under it, the domain certificate; then one from the
    first `CertificateSource` that has one (kept until `remove`). A deeper name under the domain
    that no source has yet, or a name `routed` says a route serves, gets the domain certificate
    meanwhile; any other name, none (the listener's unrecognized_name alert). By
    default the only source is the local CA, for the lbsolo domain and its subdomains.
    """

    def __init__(
        self,
        domain: str,
        ca: LocalCA | None = None,
        directory: Path | str | None = None,
        *,
        sources: Sequence[CertificateSource] | None = None,
        routed: Callable[[str], bool] | None = None,
    ) -> None:
        self.domain = _norm(domain)
        self.ca = ca
        self._dir = Path(directory) if directory is not None else (ca.directory if ca else Path(tempfile.gettempdir()))
        self._user: dict[str, ssl.SSLContext] = {}
        self._issued: dict[str, ssl.SSLContext] = {}
        self._domain_ctx: ssl.SSLContext | None = None
        if sources is None:
            sources = [LocalCASource(ca, self.domain)] if ca is not None else []
        self.sources: tuple[CertificateSource, ...] = tuple(sources)
        self._routed = routed  # whether a route serves a name: it gets the domain certificate meanwhile

    def add(self, host: str, cert_pem: bytes, key_pem: bytes) -> None:
        """Use this certificate (chain, PEM) and key for `host` (`*.example.com` for a wildcard)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._user[_norm(host)] = _context(cert_pem, key_pem, self._dir)

    def remove(self, host: str) -> None:
        """Forget the host's certificate (user-supplied or issued); the next handshake asks the sources again."""
        name = _norm(host)
        self._user.pop(name, None)
        self._issued.pop(name, None)
        if name == self.domain:
            self._domain_ctx = None

    def refresh(self, host: str) -> None:
        """Forget what a source gave for `host` (not a user certificate, which keeps priority): the
        next handshake asks the sources again and gets the new certificate."""
        self._issued.pop(_norm(host), None)

    def _domain_context(self) -> ssl.SSLContext | None:
        """The certificate of the domain and `*.<domain>`, from the first source that has it."""
        if self._domain_ctx is None:
            for source in self.sources:
                pem = source.issue(self.domain)
                if pem is not None:
                    self._dir.mkdir(parents=True, exist_ok=True)
                    self._domain_ctx = _context(*pem, self._dir)
                    break
        return self._domain_ctx

    def knows(self, server_name: str) -> bool:
        """Whether a handshake naming `server_name` gets a certificate (else: the alert, proxy_hello)."""
        return self.context_for(server_name) is not None

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        name = _norm(server_name or self.domain)
        if _is_address(name):  # an address is no name (RFC 6066), but some clients send one: the default
            name = self.domain
        ctx = self._user.get(name)
        if ctx is None and "." in name:
            ctx = self._user.get("*." + name.partition(".")[2])
        if ctx is not None:
            return ctx
        under = _under(name, self.domain)
        if under and (name == self.domain or "." not in name[: -len(self.domain) - 1]):
            return self._domain_context()  # covered by the wildcard: nothing per name
        issued = self._issued
        ctx = issued.pop(name, None)
        if ctx is not None:
            issued[name] = ctx  # most recently used last
            return ctx
        for source in self.sources:
            pem = source.issue(name)
            if pem is not None:
                self._dir.mkdir(parents=True, exist_ok=True)
                # Clients choose the SNI name: keep a bounded number, forgetting the least recently used.
                while len(issued) >= _ISSUED_MAX:
                    del issued[next(iter(issued))]
                ctx = issued[name] = _context(*pem, self._dir)
                return ctx
        # Not remembered: a source that answered None now (a mint, an ACME order) may answer later.
        # Under the domain, or for a routed name, the domain certificate stands in meanwhile.
        routed = self._routed
        return self._domain_context() if under or (routed is not None and routed(name)) else None

    def server_context(self) -> ssl.SSLContext:
        """The listener's context: picks a certificate per handshake from the SNI name.

        Makes the domain certificate if it is not made yet: call it off the event loop.
        """
        default = self.context_for(None) or _offer(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        store = self

        def pick(sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
            ctx = store.context_for(server_name)
            if ctx is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sock.context = ctx
            return None

        default.sni_callback = pick  # type: ignore[assignment]
        return default
