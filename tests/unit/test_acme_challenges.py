"""ACME challenge choice: HTTP-01 or TLS-ALPN-01 per domain, learned and switched after failures
(pure, then through core_certs with fake CAs), the TLS-ALPN-01 certificate (RFC 8737), and the
TLS-ALPN-01 preflight over a real HTTPS listener and a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("acme")

from cryptography import x509

from lbsolo.acme_client import TLS_ALPN01, AuthorizationFailed, ChallengeUnavailable, alpn_certificate
from lbsolo.acme_plan import CertRecord, Challenge, after_challenge, challenge_for
from lbsolo.acme_preflight import PreflightFailed
from lbsolo.config import Settings
from lbsolo.core_certs import Certificates
from lbsolo.dns import DNSServer, Zone
from lbsolo.events import EventBus
from lbsolo.proxy import ProxyServer
from lbsolo.proxy_tls import CertStore, LocalCA
from tests.unit.test_acme_retry import DAY, T0, Clock, FakeCA, _certs, _issued

BOTH = (Challenge.HTTP01, Challenge.TLS_ALPN01)
HTTP_ONLY = (Challenge.HTTP01,)


def test_http01_first_the_one_that_worked_kept_the_other_after_a_failure_of_its_own():
    record = CertRecord("shop.example.com")
    assert challenge_for(record, BOTH) == Challenge.HTTP01
    after_challenge(record, Challenge.HTTP01, ok=False, failure="authorization_failed", available=BOTH)
    assert challenge_for(record, BOTH) == Challenge.TLS_ALPN01
    after_challenge(record, Challenge.TLS_ALPN01, ok=True, failure="", available=BOTH)
    assert (record.challenge, record.validated_by) == ("tls-alpn-01", "tls-alpn-01")
    # The CA unreachable or the hourly cap say nothing about the challenge: kept.
    for failure in ("acme_failed", "error"):
        after_challenge(record, Challenge.TLS_ALPN01, ok=False, failure=failure, available=BOTH)
        assert challenge_for(record, BOTH) == Challenge.TLS_ALPN01
    for failure in ("preflight_failed", "challenge_unavailable"):
        after_challenge(record, Challenge.TLS_ALPN01, ok=False, failure=failure, available=BOTH)
        assert challenge_for(record, BOTH) == Challenge.HTTP01
        record.challenge = "tls-alpn-01"
    # Without an HTTPS listener there is nothing to switch to; a learned TLS-ALPN-01 is not used.
    assert challenge_for(record, HTTP_ONLY) == Challenge.HTTP01
    after_challenge(record, Challenge.HTTP01, ok=False, failure="authorization_failed", available=HTTP_ONLY)
    assert challenge_for(record, HTTP_ONLY) == Challenge.HTTP01
    again = CertRecord.from_dict(record.to_dict())
    assert (again.challenge, again.validated_by) == (record.challenge, record.validated_by)


def test_the_tls_alpn_01_certificate_carries_the_name_and_the_critical_acme_identifier():
    chain, key = alpn_certificate("shop.example.com", "token.thumbprint")
    cert = x509.load_pem_x509_certificate(chain)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["shop.example.com"]
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"))
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumbprint").digest()  # type: ignore[attr-defined]
    assert b"PRIVATE KEY" in key


def test_core_switches_to_tls_alpn_01_after_a_failed_authorization_and_after_a_failed_preflight(run, tmp_path: Path):
    clock = Clock()
    prod = FakeCA("production", [AuthorizationFailed("validation failed: connection refused"), _issued(T0 + 90 * DAY)])
    staging = FakeCA("staging", [_issued(T0 + 30 * DAY)])

    async def scenario():
        certs, _events = _certs(tmp_path / "a", prod, staging, clock)
        out = await certs.issue("shop.example.com")
        assert out["challenge"] == "tls-alpn-01" and "(http-01)" in out["last_error"]
        clock.now += 120
        out = await certs.issue("shop.example.com")  # staging, then production: TLS-ALPN-01 both
        assert out["status"] == "valid" and out["validated_by"] == "tls-alpn-01"
        assert prod.challenges == ["http-01", "tls-alpn-01"] and staging.challenges == ["tls-alpn-01"]

        # A preflight failure of HTTP-01 (port 80 not reaching lbsolo): no order, TLS-ALPN-01 next.
        other = FakeCA("production", [_issued(T0 + 90 * DAY)])
        certs, _ = _certs(tmp_path / "b", other, FakeCA("staging"), clock)
        seen: list[Any] = []

        async def preflight(domain: str, challenge: Any = None) -> None:
            seen.append(challenge)
            if challenge == Challenge.HTTP01:
                raise PreflightFailed("the self-check through http://shop.example.com:80/ failed")

        certs.preflight = preflight  # type: ignore[method-assign]
        out = await certs.issue("shop.example.com")
        assert out["failures"] == 1 and other.orders == [] and out["challenge"] == "tls-alpn-01"
        out = await certs.issue("shop.example.com")
        assert out["status"] == "valid" and other.challenges == ["tls-alpn-01"] and seen == list(BOTH)

        # The CA offering no TLS-ALPN-01: back to HTTP-01.
        third = FakeCA("production", [ChallengeUnavailable(f"the CA offers no {TLS_ALPN01} challenge")])
        certs, _ = _certs(tmp_path / "c", third, FakeCA("staging"), clock)
        certs._records["shop.example.com"] = CertRecord("shop.example.com", challenge="tls-alpn-01")
        out = await certs.issue("shop.example.com")
        assert third.challenges == ["tls-alpn-01"] and out["challenge"] == "http-01"

    run(scenario)


def test_the_tls_alpn_01_preflight_passes_only_through_this_https_listener(run, tmp_path: Path):
    class _State:
        def list_apps(self) -> list[Any]:
            return []

        def list_routes(self) -> list[Any]:
            return []

    async def scenario():
        store = CertStore("lbsolo.localhost", LocalCA(tmp_path / "ca", domain="lbsolo.localhost"))
        proxy = ProxyServer(
            port=0, https_port=0, tls=store.server_context(), tls_knows=store.knows, acme_challenges=True
        )
        await proxy.start()
        dns = DNSServer(host="127.0.0.1", port=0, zone=Zone(domain="lbsolo.localhost", ipv4=("127.0.0.1",),
                                                             domains=frozenset({"shop.example.com"})))  # fmt: skip
        await dns.start()
        # Another TLS server: a handshake completes there, but not with the self-check's certificate.
        elsewhere = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        other_ca = LocalCA(tmp_path / "other")
        (tmp_path / "other.pem").write_bytes(b"".join(reversed(other_ca.issue("shop.example.com"))))
        elsewhere.load_cert_chain(tmp_path / "other.pem")
        other = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=elsewhere)
        try:

            def certs(port: int) -> Certificates:
                s = Settings(home=tmp_path, acme_email="ops@example.com", acme_resolver=f"127.0.0.1:{dns.port}",
                             acme_tls_port=port, proxy_host="127.0.0.1")  # fmt: skip
                return Certificates(s, _State(), EventBus(), proxy, lambda d, c, k: None)  # type: ignore[arg-type]

            await certs(proxy.https_port).preflight("shop.example.com", Challenge.TLS_ALPN01)
            assert proxy.alpn_challenges == {}  # the self-check's certificate is gone
            with pytest.raises(PreflightFailed, match="did not reach this proxy's HTTPS listener"):
                await certs(other.sockets[0].getsockname()[1]).preflight("shop.example.com", Challenge.TLS_ALPN01)
            with pytest.raises(PreflightFailed, match="does not resolve"):
                await certs(proxy.https_port).preflight("nowhere.example.com", Challenge.TLS_ALPN01)
            assert proxy.alpn_challenges == {}
        finally:
            other.close()
            await other.wait_closed()
            await dns.stop()
            await proxy.stop(1)

    run(scenario)
