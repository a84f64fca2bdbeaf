"""`kill -9` of the daemon while an ACME order is in flight at a real CA (Debian's pebble on loopback):
the next start takes the same order up, the certificate is issued and served, and pebble never
sees a second order for the name.

The daemon is started with LBSOLO_HOLD_AT_STEP=<step>: an order that has done that step waits
there (in its thread), and the test kills the daemon (SIGKILL) at that known point, then starts it
again on the same $LBSOLO_HOME without the hold. `acme_ordered`: the CA made the order, its
challenge not answered yet (the next run answers it). `acme_answered`: the challenge was answered
and pebble (which validates at once here) found it valid (the next run finalizes the order with
the key kept beside the record).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
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


def _wait(what: str, check, within: float, d: Daemon) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            log = d.log_path.read_text()[-4000:] if d.log_path else ""
            raise AssertionError(f"{what}: not within {within}s\n{log}")
        time.sleep(0.2)


def _cert(d: Daemon, domain: str) -> dict:
    r = d.api_get("/api/certs")
    assert r.status_code == 200, r.text
    return {c["domain"]: c for c in r.json()}.get(domain, {})


@pytest.mark.parametrize("step", ["acme_ordered", "acme_answered"])
def test_a_daemon_killed_mid_order_resumes_the_same_order_and_the_certificate_is_served(
    docker_client, tmp_path, step
):
    name = f"{step.replace('_', '-')}.kill-test.example.com"
    app = step.replace("_", "-")
    d = Daemon(home=tmp_path / "home")
    https_port = free_port()
    with pebble(tmp_path, d.proxy_port) as p:
        d.extra_env.update(
            LBSOLO_PROXY_HTTPS_PORT=str(https_port),
            LBSOLO_ACME_EMAIL="ops@kill-test.example.com",
            LBSOLO_ACME_DIRECTORY=p.directory,
            LBSOLO_ACME_STAGING_DIRECTORY=p.directory,
            LBSOLO_ACME_CA_BUNDLE=str(p.tls_ca),
            LBSOLO_ACME_RESOLVER=f"127.0.0.1:{p.dns}",
            LBSOLO_ACME_HTTP_PORT=str(d.proxy_port),
            LBSOLO_HOLD_AT_STEP=step,
        )
        try:
            d.start()
            assert d.cli("apps:create", app).returncode == 0
            assert d.cli("domains:add", app, name).returncode == 0
            assert d.log_path is not None
            held = f"acme order held after {step}"
            _wait(f"the order held after {step}", lambda: held in d.log_path.read_text(), 60, d)
            record = json.loads((d.home / "acme" / "certs" / f"{name}.json").read_text())
            assert record["order_url"].startswith("https://127.0.0.1:") and record["order_challenge"] == "http-01"
            key = d.home / "acme" / "certs" / f"{name}.order.key"
            assert key.stat().st_mode & 0o777 == 0o600
            orders = p.orders()
            assert orders >= 1
            looks = p.log.read_text().count("POST /my-order/")
            d.stop(signal.SIGKILL)

            d.extra_env.pop("LBSOLO_HOLD_AT_STEP")
            d.start()
            _wait(f"a certificate for {name}", lambda: _cert(d, name).get("status") == "valid", 60, d)
            cert = _cert(d, name)
            assert cert["issuer"].startswith("Pebble Intermediate CA") and cert["last_error"] == ""
            assert cert["order_url"] == "" and not key.exists()
            assert cert["ca_attempts_last_hour"] == 1  # the resumed order is the one counted before the kill
            assert p.orders() == orders, "a second order was sent to the CA"
            assert p.log.read_text().count("POST /my-order/") > looks  # the order, looked at again
            # Served on the HTTPS listener, verified up to pebble's root.
            context = ssl.create_default_context(cadata=p.root_pem())
            raw = socket.create_connection(("127.0.0.1", https_port), timeout=10)
            with context.wrap_socket(raw, server_hostname=name) as tls:
                served = tls.getpeercert()
            assert dict(x[0] for x in served["issuer"])["commonName"].startswith("Pebble Intermediate CA")
        finally:
            d.stop()
            remove_instance(docker_client, d.instance)
