"""TLS for the proxy: a local certificate authority and certificate selection by SNI.

For hosts under the lbsolo domain, a CA generated on first start (kept in a directory, key
readable by the owner only) issues one certificate per host on demand; a client that trusts
the CA's certificate gets valid HTTPS for `app.<domain>`. User-supplied certificates for custom
domains are picked by SNI first.

Where certificates come from is one seam, `CertificateSource`: `CertStore` asks its sources, in
order, for a host it has no certificate for. `LocalCASource` (the local CA, for the lbsolo domain)
is the one source today; an ACME client plugs in as another source, without changes here.
No I/O beyond the CA directory; no other lbsolo module imported.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertStore", "CertificateSource", "LocalCA", "LocalCASource"]

_CA_DAYS = 3650
_LEAF_DAYS = 397  # what browsers accept for a leaf certificate


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


class LocalCA:
    """A certificate authority kept in `directory` (ca.pem, ca-key.pem), created on first use."""

    def __init__(self, directory: Path | str, name: str = "lbsolo local CA") -> None:
        self.directory = Path(directory)
        self.name = name
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
        self.directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
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
            .sign(key, hashes.SHA256())
        )
        _write_private(self.key_path, _pem_key(key))
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._cert, self._key = cert, key
        return self

    @property
    def cert_pem(self) -> bytes:
        self.load_or_create()
        assert self._cert is not None
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, host: str) -> tuple[bytes, bytes]:
        """A leaf certificate and its key (PEM) for `host`, signed by this CA."""
        self.load_or_create()
        assert self._cert is not None and self._key is not None
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
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
        )


class CertificateSource(Protocol):
    """Issues certificates for hosts that have no user-supplied one; where ACME plugs in.

    `issue` runs inside the TLS handshake, on the event loop: it must answer at once, from memory
    or a local file. A source that has to ask someone (an ACME CA) answers None for now, orders
    the certificate in the background, and calls `CertStore.remove(host)` once it has it (and
    after each renewal), so the next handshake asks again. A source that does not serve a host
    answers None and the next source is asked.
    """

    def issue(self, host: str) -> tuple[bytes, bytes] | None:
        """(certificate chain, private key) in PEM for `host`, or None."""
        ...


class LocalCASource:
    """The local CA as a certificate source: the lbsolo domain and its subdomains, nothing else."""

    def __init__(self, ca: LocalCA, domain: str) -> None:
        self.ca = ca
        self.domain = domain.lower().strip(".")

    def issue(self, host: str) -> tuple[bytes, bytes] | None:
        # A certificate for a name outside the domain would be trusted only by machines that
        # trust this CA anyway, and would hide a missing real certificate: refuse instead.
        if host == self.domain or host.endswith("." + self.domain):
            return self.ca.issue(host)
        return None


def _context(cert_pem: bytes, key_pem: bytes, directory: Path) -> ssl.SSLContext:
    """A server context for one certificate (the ssl module loads chains from files only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".pem") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key_pem + cert_pem)
        f.flush()
        ctx.load_cert_chain(f.name)
    return ctx


_ISSUED_MAX = 512  # certificates from sources kept per store


class CertStore:
    """Chooses the certificate for each TLS handshake by SNI.

    Order: a user certificate for the exact host, then one for its wildcard (`*.example.com`),
    then one from the first `CertificateSource` that has one (kept until `remove`). By default
    the only source is the local CA, for the lbsolo domain and its subdomains.
    """

    def __init__(
        self,
        domain: str,
        ca: LocalCA | None = None,
        directory: Path | str | None = None,
        *,
        sources: Sequence[CertificateSource] | None = None,
    ) -> None:
        self.domain = domain.lower().strip(".")
        self.ca = ca
        self._dir = Path(directory) if directory is not None else (ca.directory if ca else Path(tempfile.gettempdir()))
        self._user: dict[str, ssl.SSLContext] = {}
        self._issued: dict[str, ssl.SSLContext] = {}
        if sources is None:
            sources = [LocalCASource(ca, self.domain)] if ca is not None else []
        self.sources: tuple[CertificateSource, ...] = tuple(sources)

    def add(self, host: str, cert_pem: bytes, key_pem: bytes) -> None:
        """Use this certificate (chain, PEM) and key for `host` (`*.example.com` for a wildcard)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._user[host.lower().strip(".")] = _context(cert_pem, key_pem, self._dir)

    def remove(self, host: str) -> None:
        """Forget the host's certificate (user-supplied or issued); the next handshake asks the sources again."""
        name = host.lower().strip(".")
        self._user.pop(name, None)
        self._issued.pop(name, None)

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        name = (server_name or self.domain).lower().strip(".")
        ctx = self._user.get(name)
        if ctx is None and "." in name:
            ctx = self._user.get("*." + name.partition(".")[2])
        if ctx is not None:
            return ctx
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
        # Not remembered: a source that answered None now (an ACME order in flight) may answer later.
        return None

    def server_context(self) -> ssl.SSLContext:
        """The listener's context: picks a certificate per handshake from the SNI name."""
        default = self.context_for(None) or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        store = self

        def pick(sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
            ctx = store.context_for(server_name)
            if ctx is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sock.context = ctx
            return None

        default.sni_callback = pick  # type: ignore[assignment]
        return default
