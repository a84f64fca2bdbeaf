"""End to end on the real engine: `lbsolo up`, deploy examples/hello, reach it through the proxy
and DNS, redeploy, survive kill -9, refuse bad input without losing anything."""

from __future__ import annotations

import shutil
import signal
import time

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from .conftest import EXAMPLES

pytestmark = pytest.mark.docker


def hello_containers(docker_client, daemon):
    return docker_client.containers.list(
        all=True, filters={"label": [f"lbsolo.instance={daemon.instance}", "lbsolo.app=hello"]}
    )


def test_a_request_without_token_gets_401(daemon):
    for path in ("/api/apps", "/api/apps/hello", "/api/info"):
        r = daemon.api_get(path, token=None)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
    assert daemon.api_get("/api/apps", token="wrong").status_code == 401
    assert daemon.api_get("/api/apps").status_code == 200
    assert (daemon.home / "token").stat().st_mode & 0o777 == 0o600


def test_openapi_document_is_served(daemon):
    r = daemon.api_get("/openapi.json")
    assert r.status_code == 200
    assert "/api/apps/{name}/deploy" in r.json()["paths"]


def test_invalid_app_name_is_refused_and_nothing_is_created(daemon):
    for bad in ("Bad_Name", "my.app", "a" * 40):
        out = daemon.cli("apps:create", bad)
        assert out.returncode == 1
        assert "invalid app name" in out.stderr
    assert daemon.api_get("/api/apps").json() == []


def test_deploy_to_unknown_app_is_refused(daemon):
    out = daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", "nosuchapp")
    assert out.returncode == 1
    assert "unknown app" in out.stderr


def test_deploy_hello_and_reach_it_through_proxy_and_dns(daemon, docker_client):
    out = daemon.cli("apps:create", "hello")
    assert out.returncode == 0, out.stderr
    out = daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", "hello")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Building hello" in out.stdout
    assert "Step" in out.stdout or "COPY" in out.stdout  # the build output is streamed through
    assert "Deployed hello v1" in out.stdout

    r = daemon.get("hello")
    assert r.status_code == 200
    assert "release=v1" in r.text

    # The container publishes no port (the proxy reaches it on its app's network, with no userland
    # proxy between), and it carries lbsolo's labels.
    [container] = hello_containers(docker_client, daemon)
    assert not [b for bs in container.ports.values() for b in (bs or [])]
    [network] = container.attrs["NetworkSettings"]["Networks"].values()
    assert httpx.get(f"http://{network['IPAddress']}:{container.labels['lbsolo.port']}/up", timeout=5).text == "ok\n"
    assert container.labels["lbsolo.release"] == "1"
    assert container.labels["lbsolo.managed"] == "true"

    q = dns.message.make_query("hello.lbsolo.localhost", dns.rdatatype.A)
    answer = dns.query.udp(q, "127.0.0.1", port=daemon.dns_port, timeout=3)
    assert [rr.address for rrset in answer.answer for rr in rrset] == ["127.0.0.1"]
    q = dns.message.make_query("example.com", dns.rdatatype.A)
    assert dns.query.udp(q, "127.0.0.1", port=daemon.dns_port, timeout=3).rcode() == dns.rcode.REFUSED

    apps = daemon.cli("apps")
    assert "hello" in apps.stdout and "running" in apps.stdout and "v1" in apps.stdout
    ps = daemon.cli("ps", "hello")
    assert ps.returncode == 0 and "running" in ps.stdout
    logs = daemon.cli("logs", "hello")
    assert "listening" in logs.stdout


def test_directory_lbsolo_cannot_build_is_refused(daemon, tmp_path):
    (tmp_path / "app.py").write_text("print('hi')\n")
    out = daemon.cli("deploy", str(tmp_path), "--app", "hello")
    assert out.returncode == 1
    assert "cannot tell how to build" in out.stderr and "Dockerfile" in out.stderr
    assert "release=v1" in daemon.get("hello").text


def test_failing_build_keeps_the_previous_release_serving(daemon, tmp_path):
    src = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "Dockerfile").write_text("FROM python:3.12-slim\nRUN exit 3\n")
    out = daemon.cli("deploy", str(src), "--app", "hello")
    assert out.returncode == 1
    assert "build failed" in out.stderr
    assert "release=v1" in daemon.get("hello").text
    releases = daemon.api_get("/api/apps/hello/releases").json()
    assert [(r["version"], r["status"]) for r in releases] == [(1, "active")]


def test_app_that_crashes_on_start_fails_its_release_and_v1_keeps_serving(daemon, tmp_path):
    src = tmp_path / "crashes"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "Dockerfile").write_text('FROM python:3.12-slim\nCMD ["python", "-c", "raise SystemExit(\'boom\')"]\n')
    out = daemon.cli("deploy", str(src), "--app", "hello")
    assert out.returncode == 1
    assert "previous release keeps serving" in out.stderr
    assert "release=v1" in daemon.get("hello").text
    statuses = {r["version"]: r["status"] for r in daemon.api_get("/api/apps/hello/releases").json()}
    assert statuses == {1: "active", 2: "failed"}


def test_second_deploy_creates_a_new_release_and_serves_it(daemon, docker_client):
    out = daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", "hello")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Deployed hello v3" in out.stdout
    assert "release=v3" in daemon.get("hello").text
    [container] = hello_containers(docker_client, daemon)
    assert container.labels["lbsolo.release"] == "3"
    statuses = {r["version"]: r["status"] for r in daemon.api_get("/api/apps/hello/releases").json()}
    assert statuses == {1: "superseded", 2: "failed", 3: "active"}


def test_proxy_answers_404_for_unknown_hosts_and_503_for_idle_apps(daemon):
    r = daemon.get("nosuch")
    assert r.status_code == 404
    assert "hello" not in r.text  # an unknown host learns nothing about the apps (issue 11, item 8)
    assert daemon.cli("apps:create", "idle").returncode == 0
    assert daemon.get("idle").status_code == 503


def test_kill_9_then_up_adopts_the_running_app(daemon, docker_client):
    [before] = hello_containers(docker_client, daemon)
    daemon.stop(signal.SIGKILL)
    daemon.start()
    r = daemon.get("hello")
    assert r.status_code == 200 and "release=v3" in r.text
    [after] = hello_containers(docker_client, daemon)
    assert after.id == before.id  # adopted: not restarted, not duplicated
    after.reload()
    assert after.attrs["State"]["StartedAt"] == before.attrs["State"]["StartedAt"]
    names = [a["name"] for a in daemon.api_get("/api/apps").json()]
    assert names == ["hello", "idle"]


def test_replica_killed_from_outside_comes_back(daemon, docker_client):
    [container] = hello_containers(docker_client, daemon)
    container.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = daemon.get("hello")
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200 and "release=v3" in r.text
    assert len([c for c in hello_containers(docker_client, daemon) if c.status == "running"]) == 1


def test_sigterm_stops_the_daemon_gracefully_and_leaves_apps_running(daemon, docker_client):
    assert daemon.stop(signal.SIGTERM, timeout=15) == 0
    [container] = hello_containers(docker_client, daemon)
    assert container.status == "running"
    daemon.start()
    assert "release=v3" in daemon.get("hello").text


def _a(daemon, name):
    q = dns.message.make_query(name, dns.rdatatype.A)
    return dns.query.udp(q, "127.0.0.1", port=daemon.dns_port, timeout=3)


def test_custom_domains_reach_proxy_and_dns_and_go_away(daemon):
    out = daemon.cli("domains:add", "hello", "Shop.Example.TEST")
    assert out.returncode == 0, out.stderr
    r = httpx.get(f"http://127.0.0.1:{daemon.proxy_port}/", headers={"Host": "shop.example.test"}, timeout=10)
    assert r.status_code == 200 and "release=v3" in r.text
    answer = _a(daemon, "shop.example.test")
    assert [rr.address for rrset in answer.answer for rr in rrset] == ["127.0.0.1"]
    assert daemon.cli("domains:add", "idle", "shop.example.test").returncode == 1  # one owner per domain
    assert daemon.cli("domains:add", "hello", "not a domain").returncode == 1
    assert daemon.cli("domains:remove", "hello", "shop.example.test").returncode == 0
    r = httpx.get(f"http://127.0.0.1:{daemon.proxy_port}/", headers={"Host": "shop.example.test"}, timeout=10)
    assert r.status_code == 404
    assert _a(daemon, "shop.example.test").rcode() == dns.rcode.REFUSED


def test_dns_setup_prints_the_steps(daemon):
    out = daemon.cli("dns:setup", "--system", "linux-resolved")
    assert out.returncode == 0
    assert f"127.0.0.1:{daemon.dns_port}" in out.stdout and "lbsolo.localhost" in out.stdout


def test_destroy_removes_containers_route_and_images(daemon, docker_client):
    out = daemon.cli("destroy", "hello", "--images", "--yes")
    assert out.returncode == 0, out.stderr
    assert hello_containers(docker_client, daemon) == []
    assert (
        docker_client.images.list(filters={"label": [f"lbsolo.instance={daemon.instance}", "lbsolo.app=hello"]}) == []
    )
    assert daemon.get("hello").status_code == 404
    assert daemon.cli("destroy", "hello", "--yes").returncode == 1
