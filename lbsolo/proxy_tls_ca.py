"""The local certificate authority of the lbsolo domain: its key and certificate, and the leaf
certificates it signs.

A CA generated on first start (kept in a directory, key readable by the owner only) issues the
certificate of `<domain>` and `*.<domain>` and, on demand, of deeper names. It carries critical
NameConstraints (the domain, localhost, loopback addresses), so its key, if it leaks, cannot sign
for anyone else's names. Keys are ECDSA P-256.

What it must not do: choose certificates for handshakes (lbsolo.proxy_tls does) or touch the
network; its only I/O is its own directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LOOPBACK_IPS", "LocalCA", "is_address", "norm", "served_names", "under"]

_CA_DAYS = 3650
_LEAF_DAYS = 397  # what browsers accept for a leaf certificate
# What a local CA may sign besides its domain: loopback, where lbsolo also answers.
_LOCAL_NAMES = ("localhost",)
_LOCAL_NETWORKS = ("127.0.0.0/8", "::1/128")
LOOPBACK_IPS = ("127.0.0.1", "::1")  # also in the domain certificate, for https://127.0.0.1:<port>


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


def norm(host: str) -> str:
    return host.lower().strip(".")


def under(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def served_names(domain: str) -> x509.NameConstraints:
    """The names a local CA for `domain` may sign: the domain and its subdomains, localhost, loopback."""
    dns: list[x509.GeneralName] = [x509.DNSName(n) for n in (norm(domain), *_LOCAL_NAMES)]
    ips: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_network(n)) for n in _LOCAL_NETWORKS]
    return x509.NameConstraints(permitted_subtrees=dns + ips, excluded_subtrees=None)


def is_address(name: str) -> bool:
    """Whether `name` is an IPv4 or IPv6 address. It runs twice in every handshake that names an
    address (wrk and some clients send one as SNI): the C parser, not `ipaddress` (which took 8%
    of such a handshake's time)."""
    if not name or not (name[-1].isdigit() or ":" in name):  # no top-level domain ends in a digit
        return False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, name)
        except OSError:
            continue
        return True
    return False


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _permits(constraints: x509.NameConstraints, name: x509.GeneralName) -> bool:
    for subtree in constraints.permitted_subtrees or ():
        if isinstance(name, x509.DNSName) and isinstance(subtree, x509.DNSName):
            if under(name.value.removeprefix("*."), subtree.value):
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
        self.domain = norm(domain) if domain else None
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

    def issue(self, host: str, *more: str, client: bool = False) -> tuple[bytes, bytes]:
        """A leaf certificate for `host` (and `more` names) and its key (PEM), signed by this CA;
        a server's, or with `client` a client's (TLS client authentication)."""
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
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
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
