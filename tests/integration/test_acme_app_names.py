"""ACME certificates for `<app>.<domain>` when the lbsolo domain is a public name, against a real
ACME CA (Debian's pebble on loopback; pebble-challtestsrv resolves every name to 127.0.0.1).

An app created while ACME was off gets its certificate when the daemon starts with ACME on, and
an app created afterwards gets one in the background; both are served on the HTTPS listener in
place of the local CA's wildcard for the domain. A laptop's domain (`lbsolo.localhost`) is not
public: its apps keep the local CA's certificate (tests/integration/test_acme.py's daemon).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time

import pytest

from tests.integration.conftest import Daemon, free_port, remove_instance
from tests.integration.test_acme import pebble

pytestmark = [
    pytest.mark.acme,
    pytest.mark.skipif(shutil.which("pebble") is None and os.environ.get("CI") != "true", reason="no pebble"),
]

DOMAIN = "apps.acme-test.example.com"


def _certs(d: Daemon) -> dict[str, dict]:
    r = d.api_get("/api/certs")
    assert r.status_code == 200, r.text
    return {c["domain"]: c for c in r.json()}


def _wait_valid(d: Daemon, name: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    cert: dict = {}
    while time.monotonic() < deadline:
        cert = _certs(d).get(name, {})
        if cert.get("status") == "valid":
            return cert
        time.sleep(0.3)
    log = d.log_path.read_text()[-4000:] if d.log_path else ""
    raise AssertionError(f"no certificate for {name} in {timeout}s: {cert}\n{log}")


def _issuer(port: int, name: str, root_pem: str) -> str:
    context = ssl.create_default_context(cadata=root_pem)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname=name) as tls:
        cert = tls.getpeercert()
    return str(dict(x[0] for x in cert["issuer"])["commonName"])


def test_apps_under_a_public_domain_get_acme_certificates_existing_ones_on_start(docker_client, tmp_path):
    d = Daemon(home=tmp_path / "home")
    https_port = free_port()
    d.extra_env.update(LBSOLO_DOMAIN=DOMAIN, LBSOLO_PROXY_HTTPS_PORT=str(https_port))
    with pebble(tmp_path, d.proxy_port) as p:
        try:
            d.start()  # ACME off: the app is served with the local CA's wildcard
            assert d.cli("apps:create", "old").returncode == 0
            d.stop()
            d.extra_env.update(
                LBSOLO_ACME_EMAIL="ops@acme-test.example.com",
                LBSOLO_ACME_DIRECTORY=p.directory,
                LBSOLO_ACME_STAGING_DIRECTORY=p.directory,
                LBSOLO_ACME_CA_BUNDLE=str(p.tls_ca),
                LBSOLO_ACME_RESOLVER=f"127.0.0.1:{p.dns}",
                LBSOLO_ACME_HTTP_PORT=str(d.proxy_port),
            )
            d.start()
            cert = _wait_valid(d, f"old.{DOMAIN}")  # an existing app, on start
            assert cert["issuer"].startswith("Pebble Intermediate CA") and cert["ca_attempts_last_hour"] == 1
            assert _issuer(https_port, f"old.{DOMAIN}", p.root_pem()).startswith("Pebble Intermediate CA")
            assert d.cli("apps:create", "new").returncode == 0
            _wait_valid(d, f"new.{DOMAIN}")  # a new app, in the background
            assert _issuer(https_port, f"new.{DOMAIN}", p.root_pem()).startswith("Pebble Intermediate CA")
            # The certificate turned the app's HTTPS redirect on, as for a custom domain.
            deadline = time.monotonic() + 10
            while not d.api_get("/api/apps/new/https").json().get("redirect") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert d.api_get("/api/apps/new/https").json()["redirect"] is True
            # The domain itself has no app: nothing is ordered for it.
            assert DOMAIN not in _certs(d)
        finally:
            d.stop()
            remove_instance(docker_client, d.instance)
