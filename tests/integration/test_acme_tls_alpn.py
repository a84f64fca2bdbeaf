"""TLS-ALPN-01 against a real ACME CA (Debian's pebble on loopback), and the fall back from HTTP-01.

Pebble sends its HTTP-01 validations to a port where nothing listens (a server whose port 80 is
not reaching lbsolo, though lbsolo's own self-check passes), and its TLS-ALPN-01 validations to the
daemon's HTTPS listener. A domain's first order uses HTTP-01 and the CA finds it invalid: the record
learns to use TLS-ALPN-01 next, and no second order is sent before the backoff ends. Asked again,
the staging CA (the same pebble) and then production validate it over TLS-ALPN-01: the certificate
is served, and the record says which challenge worked. Pebble's certificates here live VALIDITY
seconds: the certificate renews by itself when a third of that is left, over the challenge
learned (one order, no HTTP-01 try), and the new one is served.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.conftest import Daemon, free_port, remove_instance
from tests.integration.test_acme import Pebble, pebble

pytestmark = [
    pytest.mark.acme,
    pytest.mark.skipif(shutil.which("pebble") is None and os.environ.get("CI") != "true", reason="no pebble"),
]

NAME = "alpn.acme-test.example.com"
VALIDITY = 45  # seconds: renewal due about 30 s after issuance


@dataclass
class Setup:
    daemon: Daemon
    pebble: Pebble
    https_port: int


@pytest.fixture(scope="module")
def alpn(docker_client, tmp_path_factory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("acme-alpn")
    d = Daemon(home=tmp / "home")
    https_port = free_port()
    nobody = free_port()  # pebble's HTTP-01 validations go here: refused
    with pebble(tmp, nobody, tls_port=https_port, validity=VALIDITY) as p:
        d.extra_env.update(
            LBSOLO_PROXY_HTTPS_PORT=str(https_port),
            LBSOLO_ACME_EMAIL="ops@acme-test.example.com",
            LBSOLO_ACME_DIRECTORY=p.directory,
            LBSOLO_ACME_STAGING_DIRECTORY=p.directory,
            LBSOLO_ACME_CA_BUNDLE=str(p.tls_ca),
            LBSOLO_ACME_RESOLVER=f"127.0.0.1:{p.dns}",
            LBSOLO_ACME_HTTP_PORT=str(d.proxy_port),  # lbsolo's HTTP-01 self-check passes
            LBSOLO_ACME_TLS_PORT=str(https_port),
        )
        d.start()
        try:
            yield Setup(d, p, https_port)
        finally:
            d.stop()
            remove_instance(docker_client, d.instance)


def _cert(d: Daemon, domain: str) -> dict:
    r = d.api_get("/api/certs")
    assert r.status_code == 200, r.text
    return {c["domain"]: c for c in r.json()}.get(domain, {})


def test_http01_found_invalid_backs_off_then_tls_alpn01_issues_and_is_remembered(alpn: Setup):
    d, p = alpn.daemon, alpn.pebble
    assert d.cli("apps:create", "alpn").returncode == 0
    orders_before = p.orders()
    assert d.cli("domains:add", "alpn", NAME).returncode == 0
    deadline = time.monotonic() + 60
    cert: dict = {}
    while time.monotonic() < deadline:  # the first try, in the background: HTTP-01, found invalid by the CA
        cert = _cert(d, NAME)
        if cert.get("failures", 0) >= 1 and cert.get("status") != "issuing":
            break
        time.sleep(0.5)
    assert cert.get("failures") == 1, f"{cert}\n{d.log_path.read_text()[-3000:]}"
    assert "(http-01)" in cert["last_error"] and cert["ca_attempts_last_hour"] == 1
    assert cert["challenge"] == "tls-alpn-01" and cert["ca"] == "staging"  # the next try's
    # Backoff: no second order before it ends, however often the loop wakes.
    assert cert["next_try"] >= cert["last_attempt"] + 60
    orders_after_failure = p.orders()
    assert orders_after_failure == orders_before + 1
    assert d.cli("apps:create", "other").returncode == 0  # wakes the loop (an event), nothing is due
    time.sleep(3)
    assert p.orders() == orders_after_failure
    # Asked by hand: staging, then production, both over TLS-ALPN-01 on the HTTPS listener.
    out = d.cli("certs:issue", NAME)
    assert out.returncode == 0, out.stdout + out.stderr + d.log_path.read_text()[-3000:]
    cert = _cert(d, NAME)
    assert cert["status"] == "valid" and cert["issuer"].startswith("Pebble Intermediate CA")
    assert cert["validated_by"] == "tls-alpn-01" and cert["challenge"] == "tls-alpn-01"
    assert cert["ca"] == "production" and cert["failures"] == 0
    assert p.orders() == orders_after_failure + 2  # staging's and production's
    # Served at once, the chain verified up to pebble's root; the challenge certificate is gone.
    context = ssl.create_default_context(cadata=p.root_pem())
    with (
        socket.create_connection(("127.0.0.1", alpn.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        issuer = dict(x[0] for x in tls.getpeercert()["issuer"])
        assert issuer["commonName"].startswith("Pebble Intermediate CA")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE
    probe.set_alpn_protocols(["acme-tls/1"])
    with (
        socket.create_connection(("127.0.0.1", alpn.https_port), timeout=10) as raw,
        probe.wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        assert tls.selected_alpn_protocol() is None  # no challenge pending: the usual handshake


def _served_serial(setup: Setup) -> int:
    context = ssl.create_default_context(cadata=setup.pebble.root_pem())
    with (
        socket.create_connection(("127.0.0.1", setup.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        return int(tls.getpeercert()["serialNumber"], 16)


def test_a_short_lived_certificate_renews_by_itself_over_the_learned_challenge_and_is_served(alpn: Setup):
    d, p = alpn.daemon, alpn.pebble
    first = _cert(d, NAME)
    assert first.get("status") == "valid", first  # issued by the test before
    assert first["not_after"] - first["not_before"] <= VALIDITY + 1
    assert first["renew_at"] < first["not_after"] - VALIDITY / 3 + 1
    serial = _served_serial(alpn)
    orders = p.orders()
    deadline = time.monotonic() + VALIDITY + 30
    cert = first
    while time.monotonic() < deadline:
        cert = _cert(d, NAME)
        if cert.get("last_success", 0) > first["last_success"] and cert.get("status") == "valid":
            break
        time.sleep(1)
    assert cert["last_success"] > first["last_success"], f"{cert}\n{d.log_path.read_text()[-3000:]}"
    assert cert["not_after"] > first["not_after"] and cert["failures"] == 0
    assert cert["validated_by"] == "tls-alpn-01" and cert["ca"] == "production"
    assert p.orders() == orders + 1  # one order: the learned challenge, no HTTP-01 try first
    assert cert["last_success"] >= first["renew_at"] - 1  # not before it was due
    assert _served_serial(alpn) != serial  # the new certificate is served, without a restart
