"""The Docker engine restarts under a running daemon with a deployed app.

A private engine in its own network namespace (see private_engine.py), with the daemon under
test in the same namespace. While the engine is down the daemon's API and UI answer and say
the engine is unavailable; once it answers again the app serves within 10 s, with no
duplicate containers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import httpx
import pytest

from .conftest import EXAMPLES
from .private_engine import NetnsDaemon, PrivateEngine, private_engine

pytestmark = pytest.mark.docker

APP = "site"  # examples/static: busybox httpd, the smallest image to copy into the private engine


@pytest.fixture(scope="module")
def engine(docker_client, in_ci) -> Iterator[PrivateEngine]:
    if os.geteuid() != 0:
        if in_ci:
            pytest.fail("the engine restart test needs root (network namespaces, a private dockerd)")
        pytest.skip("needs root: network namespaces and a private dockerd")
    with private_engine(["busybox:latest"]) as e:
        yield e


@pytest.fixture
def daemon(engine, tmp_path) -> Iterator[NetnsDaemon]:
    d = NetnsDaemon(home=tmp_path / "home", engine=engine)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        if not engine.answers():  # the test failed while the engine was stopped
            engine.start()
        with engine.client() as c:
            for container in c.containers.list(all=True, filters={"label": [f"lbsolo.instance={d.instance}"]}):
                container.remove(force=True)


def containers(engine: PrivateEngine, daemon: NetnsDaemon) -> list[tuple[str, str, str]]:
    """(id, status, release) of every container of the app, stopped ones too."""
    with engine.client() as c:
        labels = [f"lbsolo.instance={daemon.instance}", f"lbsolo.app={APP}"]
        found = c.containers.list(all=True, filters={"label": labels})
        return sorted((x.id, x.status, x.labels["lbsolo.release"]) for x in found)


def ui_pages(daemon: NetnsDaemon) -> dict[str, tuple[int, str]]:
    """The dashboard and the app's page, logged in to the UI (call it inside the namespace)."""
    with httpx.Client(base_url=daemon.api, timeout=10) as ui:
        r = ui.post("/ui/login", data={"token": daemon.token, "next": "/ui/"})
        assert r.status_code == 303, r.text
        pages = {}
        for path in ("/ui/", f"/ui/apps/{APP}"):
            page = ui.get(path)
            pages[path] = (page.status_code, page.text)
        return pages


def first_200(daemon: NetnsDaemon, within: float) -> float:
    """Seconds until the app answers 200 through the proxy; fails after `within`."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < within:
        try:
            r = daemon.get(APP)
            if r.status_code == 200:
                return time.monotonic() - start
            last = r.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{APP} did not answer 200 within {within}s (last: {last!r})")


def test_the_app_serves_again_after_the_engine_restarts(engine, daemon):
    assert daemon.cli("apps:create", APP).returncode == 0
    out = daemon.cli("deploy", str(EXAMPLES / "static"), "--app", APP)
    assert out.returncode == 0, out.stdout + out.stderr
    out = daemon.cli("scale", APP, "web=2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert daemon.get(APP).status_code == 200
    before = containers(engine, daemon)
    assert [(s, r) for _, s, r in before] == [("running", "1")] * 2

    engine.stop()
    assert not engine.answers()

    # The daemon keeps answering, and says the engine is away where it needs it.
    assert daemon.api_get("/healthz").status_code == 200
    r = daemon.api_get("/api/apps")
    assert r.status_code == 200 and [a["name"] for a in r.json()] == [APP]
    r = daemon.api_get(f"/api/apps/{APP}/ps")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "engine_unavailable"
    assert "Docker engine is not reachable" in r.json()["error"]["message"]
    pages = daemon.in_netns(ui_pages, daemon)
    assert pages["/ui/"][0] == 200 and APP in pages["/ui/"][1]
    status, html = pages[f"/ui/apps/{APP}"]
    assert status == 503 and "Docker engine is not reachable" in html
    # The UI through the proxy's own route too.
    own = daemon.in_netns(
        httpx.get, f"http://127.0.0.1:{daemon.proxy_port}/healthz", headers={"Host": "lbsolo.lbsolo.localhost"}
    )
    assert own.status_code == 200

    engine.start()  # returns once the engine answers
    took = first_200(daemon, within=10)

    # Both replicas back, the same containers restarted: none added, none left stopped.
    deadline = time.monotonic() + 10
    while (after := containers(engine, daemon)) != [(i, "running", r) for i, _, r in before]:
        assert time.monotonic() < deadline, f"containers before the restart: {before}, now: {after}"
        time.sleep(0.2)
    time.sleep(3)  # a few reconcile passes later, still no more and no fewer
    assert containers(engine, daemon) == after
    r = daemon.api_get(f"/api/apps/{APP}/ps")
    assert r.status_code == 200 and len(r.json()) == 2
    print(f"first 200 {took:.2f}s after the engine answered")
