"""The certificate-source seam of CertStore (where ACME plugs in), with real TLS handshakes."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from lbsolo.proxy_tls import CertificateSource, CertStore, LocalCA, LocalCASource
from tests.unit.test_proxy_tls import _get, https_stack

DOMAIN = "lbsolo.localhost"


class FakeACME:
    """Stands in for an ACME client: serves only hosts it has 'obtained' (certificates from another CA)."""

    def __init__(self, ca: LocalCA) -> None:
        self.ca = ca
        self.ready: set[str] = set()
        self.asked: list[str] = []

    def issue(self, host: str) -> tuple[bytes, bytes] | None:
        self.asked.append(host)
        return self.ca.issue(host) if host in self.ready else None


def test_the_local_ca_source_serves_only_the_lbsolo_domain(tmp_path: Path):
    source: CertificateSource = LocalCASource(LocalCA(tmp_path / "ca"), "LBSolo.localhost.")
    assert source.issue("lbsolo.localhost") is not None
    assert source.issue("app.lbsolo.localhost") is not None
    assert source.issue("example.com") is None
    assert source.issue("evil-lbsolo.localhost") is None
    # The default store has exactly that source.
    store = CertStore(DOMAIN, LocalCA(tmp_path / "ca"))
    assert [type(s) for s in store.sources] == [LocalCASource]
    assert CertStore(DOMAIN).sources == ()


def test_sources_are_asked_in_order_for_hosts_without_a_certificate_and_answers_are_kept(tmp_path: Path):
    local = LocalCA(tmp_path / "ca")
    acme = FakeACME(LocalCA(tmp_path / "acme-ca", name="stand-in ACME CA"))
    store = CertStore(DOMAIN, local, sources=[LocalCASource(local, DOMAIN), acme])
    user = LocalCA(tmp_path / "user-ca", name="user CA")
    store.add("mine.example.com", *user.issue("mine.example.com"))

    assert store.context_for("mine.example.com") is not None and acme.asked == []  # user certificates first
    assert store.context_for("app.lbsolo.localhost") is not None and acme.asked == []  # local CA answered
    assert store.context_for("shop.example.com") is None  # order in flight: nothing yet, not remembered
    acme.ready.add("shop.example.com")
    ctx = store.context_for("shop.example.com")
    assert ctx is not None and store.context_for("SHOP.example.com.") is ctx
    assert acme.asked == ["shop.example.com", "shop.example.com"]  # kept after the first answer
    store.remove("shop.example.com")  # e.g. after a renewal
    assert store.context_for("shop.example.com") is not ctx and len(acme.asked) == 3


def test_a_handshake_for_a_custom_domain_gets_the_sources_certificate(run, tmp_path: Path):
    local = LocalCA(tmp_path / "ca")
    acme_ca = LocalCA(tmp_path / "acme-ca", name="stand-in ACME CA").load_or_create()
    acme = FakeACME(acme_ca)
    store = CertStore(DOMAIN, local, sources=[LocalCASource(local, DOMAIN), acme])

    async def scenario():
        async with https_stack(tmp_path, store) as (proxy, _app):
            assert proxy.https_port
            with pytest.raises((ssl.SSLError, ConnectionError)):  # no source has it yet: handshake refused
                await _get(proxy.https_port, "shop.test", acme_ca.cert_path)
            acme.ready.add("shop.test")
            status, _doc, san = await _get(proxy.https_port, "shop.test", acme_ca.cert_path)
            assert (status, san) == (200, "shop.test")
            status, _doc, san = await _get(proxy.https_port, "hello.lbsolo.localhost", local.cert_path)
            assert (status, san) == (200, "*.lbsolo.localhost")  # the domain's wildcard certificate

    run(scenario)


def test_issued_certificates_are_bounded_least_recently_used_first(tmp_path, monkeypatch) -> None:
    import lbsolo.proxy_tls as tls

    monkeypatch.setattr(tls, "_ISSUED_MAX", 3)
    # Names under the domain share its wildcard certificate: sources' certificates are kept per name.
    acme = FakeACME(tls.LocalCA(tmp_path / "acme-ca", name="stand-in ACME CA"))
    acme.ready = {f"{name}.example.com" for name in "abcd"}
    store = tls.CertStore("lbsolo.localhost", tls.LocalCA(tmp_path / "ca"), tmp_path / "certs", sources=[acme])
    for name in ("a", "b", "c"):
        assert store.context_for(f"{name}.example.com") is not None
    first = store.context_for("a.example.com")  # used again: now the most recent
    store.context_for("d.example.com")  # full: b, the least recently used, goes
    assert list(store._issued) == ["c.example.com", "a.example.com", "d.example.com"]
    assert store.context_for("a.example.com") is first
