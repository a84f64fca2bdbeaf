"""TLS minting never runs on the event loop, and the local CA can sign only lbsolo's own names.

Issue 11, item 6: random SNI names used to mint a key and certificate each, on the loop; the CA
could sign for any domain; there was no way to replace it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import secrets
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from typer.testing import CliRunner

from lbsolo.cli.verbs import app as cli
from lbsolo.proxy import ProxyServer, Route, Target
from lbsolo.proxy_tls import CertStore, LocalCA, LocalCASource
from tests.unit.proxy_harness import App

DOMAIN = "lbsolo.localhost"


class CountingCA(LocalCA):
    """A LocalCA that records the thread of every certificate it mints."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, domain=DOMAIN)
        self.minted: list[tuple[str, str]] = []  # (first name, thread name)

    def issue(self, host: str, *more: str) -> tuple[bytes, bytes]:
        self.minted.append((host, threading.current_thread().name))
        return super().issue(host, *more)


async def _handshake(port: int, server_name: str, cafile: Path | None) -> list[str]:
    """The DNS names of the certificate served for `server_name` (verified if `cafile`)."""
    if cafile is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(cafile))
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return san.value.get_values_for_type(x509.DNSName)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def test_random_sni_names_mint_nothing_on_the_loop(tmp_path: Path, run):
    ca = CountingCA(tmp_path / "tls")
    source = LocalCASource(ca, DOMAIN, rate=2.0, burst=3)
    store = CertStore(DOMAIN, ca, tmp_path / "tls" / "certs", sources=[source])

    async def scenario() -> None:
        # As the daemon does: the domain's certificate is made off the loop, before the listener.
        tls = await asyncio.to_thread(store.server_context)
        assert [name for name, _thread in ca.minted] == [DOMAIN]
        app = await App().start()
        proxy = ProxyServer(port=0, domain=DOMAIN, https_port=0, tls=tls)
        proxy.set_routes({"hello": Route(app="hello", targets=(Target("127.0.0.1", app.port),))})
        await proxy.start()
        try:
            assert proxy.https_port
            names = [f"{secrets.token_hex(6)}.{DOMAIN}" for _ in range(200)]
            for name in names:
                assert await _handshake(proxy.https_port, name, ca.cert_path) == [DOMAIN, f"*.{DOMAIN}"]
            assert len(ca.minted) == 1  # 200 names, one certificate, minted before them all

            # Deeper names are not covered by the wildcard: minted in a worker, a few a second;
            # the domain's certificate is served meanwhile.
            deep = [f"x.{secrets.token_hex(6)}.{DOMAIN}" for _ in range(30)]
            started = time.monotonic()
            for name in deep:
                assert await _handshake(proxy.https_port, name, None) == [DOMAIN, f"*.{DOMAIN}"]
            await asyncio.to_thread(source.wait_idle, 10)
            elapsed = time.monotonic() - started
            later = ca.minted[1:]
            assert 1 <= len(later) <= 3 + 2.0 * elapsed + 1
            loop_thread = threading.current_thread().name
            assert all(thread != loop_thread for _name, thread in later)
            # Once minted, the next handshake for that name gets its own verified certificate.
            ready = later[0][0]
            assert await _handshake(proxy.https_port, ready, ca.cert_path) == [ready]
        finally:
            await proxy.stop(1)
            await app.close()

    run(scenario)


def _forge(ca: LocalCA, host: str) -> x509.Certificate:
    """A leaf for `host` signed with the CA's key directly, as a thief of the key would."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _verify(ca: LocalCA, leaf: x509.Certificate, host: str) -> None:
    store = Store([x509.load_pem_x509_certificate(ca.cert_pem)])
    PolicyBuilder().store(store).build_server_verifier(x509.DNSName(host)).verify(leaf, [])


def _leaf(ca: LocalCA, *names: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(ca.issue(*names)[0])[0]


def test_the_local_ca_is_name_constrained_to_what_lbsolo_serves(tmp_path: Path):
    ca = LocalCA(tmp_path / "tls", domain=DOMAIN).load_or_create()
    ext = x509.load_pem_x509_certificate(ca.cert_pem).extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    permitted = {str(n.value) for n in ext.value.permitted_subtrees or ()}
    assert permitted == {DOMAIN, "localhost", "127.0.0.0/8", "::1/128"}
    assert ca.problem() is None

    _verify(ca, _leaf(ca, DOMAIN, f"*.{DOMAIN}", "127.0.0.1", "::1"), f"app.{DOMAIN}")
    _verify(ca, _leaf(ca, f"deep.app.{DOMAIN}"), f"deep.app.{DOMAIN}")
    with pytest.raises(ValueError, match="may not sign"):
        ca.issue("evil.example.com")
    with pytest.raises(VerificationError, match="name constraint"):
        _verify(ca, _forge(ca, "evil.example.com"), "evil.example.com")


def test_an_unconstrained_or_foreign_ca_is_reported(tmp_path: Path):
    old = LocalCA(tmp_path / "old").load_or_create()  # as made before name constraints
    assert "no name constraints" in (LocalCA(old.directory, domain=DOMAIN).problem() or "")
    LocalCA(tmp_path / "other", domain="other.test").load_or_create()
    assert "another domain" in (LocalCA(tmp_path / "other", domain="apps.example.com").problem() or "")


def test_rotate_ca_replaces_the_ca_and_old_leaves_stop_verifying(tmp_path: Path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LBSOLO_HOME", str(home))
    monkeypatch.setenv("LBSOLO_DOMAIN", DOMAIN)
    old = LocalCA(home / "tls").load_or_create()  # an old, unconstrained CA
    old_leaf = _leaf(old, f"app.{DOMAIN}")
    old_pem = old.cert_pem

    runner = CliRunner()
    # Refused while a daemon runs with this home (this test's process stands in for it).
    (home / "daemon.json").write_text(json.dumps({"pid": os.getpid()}))
    result = runner.invoke(cli, ["tls:rotate-ca"])
    assert result.exit_code == 1 and "running" in result.output
    assert LocalCA(home / "tls").cert_pem == old_pem
    (home / "daemon.json").unlink()

    result = runner.invoke(cli, ["tls:rotate-ca"])
    assert result.exit_code == 0, result.output
    assert "trust" in result.output and "ca.pem.old" in result.output
    new = LocalCA(home / "tls", domain=DOMAIN).load_or_create()
    assert new.cert_pem != old_pem and (home / "tls" / "ca.pem.old").read_bytes() == old_pem
    assert new.constraints is not None and new.problem() is None
    _verify(new, _leaf(new, f"app.{DOMAIN}"), f"app.{DOMAIN}")
    with pytest.raises(VerificationError):
        _verify(new, old_leaf, f"app.{DOMAIN}")

    assert "rotate-ca" in runner.invoke(cli, ["tls:trust"]).output
