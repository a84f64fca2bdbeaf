"""Static routes, the per-app HTTPS redirect and request buffering on a real daemon: CLI -> API -> state -> proxy.

The static route targets a plain HTTP server the test starts on loopback (a service lbsolo does
not run); the redirect needs no deploy: the proxy answers it before looking for replicas.
"""

from __future__ import annotations

from collections.abc import Iterator

import dns.message
import dns.query
import dns.rdatatype
import httpx
import pytest

from .conftest import EXAMPLES, Daemon, free_port, host_service, https_get, running_daemon

pytestmark = pytest.mark.docker
BUFFER_MAX = 64 * 1024  # the proxy's cap on a held body (413 beyond it; no cap on streamed ones)


@pytest.fixture(scope="module")
def daemon(docker_client, tmp_path_factory) -> Iterator[Daemon]:
    https = free_port()
    env = {"LBSOLO_PROXY_HTTPS_PORT": str(https), "LBSOLO_PROXY_BUFFER_MAX": str(BUFFER_MAX)}
    with running_daemon(docker_client, tmp_path_factory.mktemp("routes") / "home", env) as d:
        d.https_port = https  # type: ignore[attr-defined]
        yield d


@pytest.fixture
def service() -> Iterator[int]:
    with host_service() as port:
        yield port


def _a(daemon: Daemon, name: str) -> list[str]:
    q = dns.message.make_query(name, dns.rdatatype.A)
    answer = dns.query.udp(q, "127.0.0.1", port=daemon.dns_port, timeout=3)
    return [rr.address for rrset in answer.answer for rr in rrset]


def _via_proxy(daemon: Daemon, host: str, path: str = "/") -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{daemon.proxy_port}{path}", headers={"Host": host}, timeout=10)


def test_a_static_route_reaches_a_service_on_the_host_through_proxy_and_dns(daemon, service):
    out = daemon.cli("routes:add", "grafana", "--to", f"localhost:{service}", "--domain", "Grafana.Example.TEST")
    assert out.returncode == 0, out.stderr
    assert "grafana.lbsolo.localhost" in out.stdout and f"127.0.0.1:{service}" not in out.stdout  # kept as typed
    try:
        r = daemon.get("grafana", "/dash?x=1")
        assert r.status_code == 200
        assert r.text == f"static service: /dash?x=1 for grafana.lbsolo.localhost:{daemon.proxy_port}"
        r = _via_proxy(daemon, "grafana.example.test", "/d")
        assert r.text == "static service: /d for grafana.example.test"
        assert _a(daemon, "grafana.lbsolo.localhost") == ["127.0.0.1"]
        assert _a(daemon, "grafana.example.test") == ["127.0.0.1"]

        listed = daemon.cli("routes")
        assert listed.returncode == 0 and f"localhost:{service}" in listed.stdout
        [doc] = daemon.api_get("/api/routes").json()
        assert (doc["name"], doc["to"], doc["domains"]) == ("grafana", f"localhost:{service}", ["grafana.example.test"])

        # One namespace with the apps, and validated input, in the API's one error shape.
        out = daemon.cli("apps:create", "grafana")
        assert out.returncode == 1 and "static route" in out.stderr
        out = daemon.cli("routes:add", "db", "--to", "db.internal:5432")
        assert out.returncode == 1 and "invalid address" in out.stderr
        headers = {"Authorization": f"Bearer {daemon.token}"}
        bad = httpx.post(f"{daemon.api}/api/routes", json={"name": "x", "to": "1.2.3.4:0"}, headers=headers)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid"
        dup = httpx.post(f"{daemon.api}/api/routes", json={"name": "grafana", "to": "127.0.0.1:1"}, headers=headers)
        assert dup.status_code == 409 and "already exists" in dup.json()["error"]["message"]

        # Stored: a restarted daemon routes it again before anything else happens.
        assert daemon.stop() == 0
        daemon.start()
        assert daemon.get("grafana", "/again").text.startswith("static service: /again")
    finally:
        out = daemon.cli("routes:remove", "grafana")
    assert out.returncode == 0, out.stderr
    assert daemon.get("grafana").status_code == 404
    assert _a(daemon, "grafana.example.test") == []  # (names under the lbsolo domain: wildcard unless strict)
    assert daemon.cli("routes:remove", "grafana").returncode == 1


def test_an_app_with_the_https_redirect_sends_plain_http_to_https(daemon):
    assert daemon.cli("apps:create", "secure").returncode == 0
    try:
        out = daemon.cli("apps:https", "secure", "--redirect")
        assert out.returncode == 0 and "redirect on" in out.stdout, out.stderr
        assert daemon.api_get("/api/apps/secure/https").json() == {
            "name": "secure",
            "redirect": True,
            "redirect_chosen": True,  # by hand: the redirect ACME turns on by default never overrides it
            "hsts": False,
            "hsts_max_age": 0,
            "hsts_subdomains": False,
            "active": True,
        }

        r = daemon.get("secure", "/pay?amount=5")
        assert r.status_code == 308
        assert r.headers["location"] == f"https://secure.lbsolo.localhost:{daemon.https_port}/pay?amount=5"

        # Over HTTPS the request is proxied as usual: the app has no replicas yet, so 503 from the proxy.
        data = https_get(daemon, daemon.https_port, "secure.lbsolo.localhost", "/pay")
        assert data.startswith(b"HTTP/1.1 503") and b"not running" in data

        out = daemon.cli("apps:https", "secure", "--no-redirect")
        assert out.returncode == 0 and "redirect off" in out.stdout
        assert daemon.get("secure").status_code == 503
    finally:
        assert daemon.cli("destroy", "secure", "--yes").returncode == 0


def test_request_buffering_is_switched_per_app_and_the_proxy_follows(daemon):
    """A body over the proxy's buffer cap gets 413 while the app's bodies are held, and reaches it when streamed."""
    assert daemon.cli("apps:create", "stream").returncode == 0
    try:
        out = daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", "stream")
        assert out.returncode == 0, out.stdout + out.stderr
        assert daemon.api_get("/api/apps/stream/proxy").json() == {"name": "stream", "request_buffering": True}
        body = b"x" * (BUFFER_MAX + 1)
        headers = {"Host": "stream.lbsolo.localhost", "Connection": "close"}
        url = f"http://127.0.0.1:{daemon.proxy_port}/up"
        r = httpx.post(url, content=body, headers=headers, timeout=10)
        assert r.status_code == 413 and "body limit" in r.text

        out = daemon.cli("apps:proxy", "stream", "--request-buffering", "off")
        assert out.returncode == 0 and "request buffering off" in out.stdout, out.stderr
        assert daemon.api_get("/api/apps/stream").json()["request_buffering"] is False
        # The app (no do_POST) answers 501 itself: the body went on to it.
        r = httpx.post(url, content=body, headers=headers, timeout=10)
        assert r.status_code == 501, r.text

        out = daemon.cli("apps:proxy", "stream", "--request-buffering", "maybe")
        assert out.returncode == 2 and "on or off" in out.stderr
        out = daemon.cli("apps:proxy", "stream", "--request-buffering", "on")
        assert out.returncode == 0 and "request buffering on" in out.stdout
        assert httpx.post(url, content=body, headers=headers, timeout=10).status_code == 413
        assert daemon.cli("apps:proxy", "nosuch").returncode == 1
    finally:
        assert daemon.cli("destroy", "stream", "--yes").returncode == 0
