"""Sleeping idle apps on the real engine: examples/hello stops after a while without a request, the
next requests are held (none refused) while it starts, and a wake that cannot start answers 503
promptly with the reason."""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from collections.abc import Iterator

import pytest

from .conftest import EXAMPLES, Daemon, running_daemon

pytestmark = pytest.mark.docker
APP = "napper"
BAD = "napless"


@pytest.fixture(scope="module")
def daemon(docker_client, tmp_path_factory) -> Iterator[Daemon]:
    with running_daemon(docker_client, tmp_path_factory.mktemp("sleep") / "home") as d:
        out = d.cli("apps:create", APP)
        assert out.returncode == 0, out.stdout + out.stderr
        out = d.cli("deploy", str(EXAMPLES / "hello"), "--app", APP)
        assert out.returncode == 0, out.stdout + out.stderr
        try:
            yield d
        finally:
            d.cli("destroy", APP, "--yes")


def running(docker_client, daemon: Daemon, app: str = APP) -> list:
    labels = [f"lbsolo.instance={daemon.instance}", f"lbsolo.app={app}", "lbsolo.process=web"]
    return docker_client.containers.list(filters={"label": labels})


def wait_asleep(docker_client, daemon: Daemon, app: str = APP, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while running(docker_client, daemon, app) or not daemon.api_get(f"/api/apps/{app}/sleep").json()["asleep"]:
        assert time.monotonic() < deadline, "the app did not fall asleep"
        time.sleep(0.3)


def test_bad_input_is_refused_and_changes_nothing(daemon):
    for bad in ("soon", "0s", "-5m", "99d"):
        out = daemon.cli("apps:sleep", APP, "--after", bad)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stdout + out.stderr
    out = daemon.cli("apps:sleep", "nobody", "--after", "5m")
    assert out.returncode == 1 and "nobody" in out.stderr
    assert daemon.api_get(f"/api/apps/{APP}/sleep").json()["sleep_after"] is None


def test_an_idle_app_sleeps_and_the_next_requests_wait_for_it_none_refused(daemon, docker_client):
    out = daemon.cli("apps:sleep", APP, "--after", "2")
    assert out.returncode == 0 and "sleeps after 2 s" in out.stdout, out.stdout + out.stderr
    wait_asleep(docker_client, daemon)
    assert "asleep now" in daemon.cli("apps:sleep", APP).stdout
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: daemon.get(APP, timeout=60), range(6)))
    woke = time.monotonic() - t0
    assert [r.status_code for r in answers] == [200] * 6, [r.text[:200] for r in answers]
    assert len(running(docker_client, daemon)) == 1
    assert woke < 30
    kinds = [e["kind"] for e in daemon.api_get("/api/events?limit=50").json()]
    assert "app.slept" in kinds and "app.woke" in kinds
    # Requests keep it awake; --never keeps it so.
    assert daemon.cli("apps:sleep", APP, "--never").returncode == 0
    time.sleep(3)
    assert len(running(docker_client, daemon)) == 1 and daemon.get(APP).status_code == 200


def test_a_wake_that_cannot_start_answers_503_promptly_and_the_app_sleeps_on(daemon, docker_client, tmp_path):
    # An image of its own (a unique file in the source), so that removing it touches no other app.
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "hello", source)
    (source / "unique.txt").write_text(f"{time.time_ns()}\n")
    assert daemon.cli("apps:create", BAD).returncode == 0
    try:
        out = daemon.cli("deploy", str(source), "--app", BAD)
        assert out.returncode == 0, out.stdout + out.stderr
        assert daemon.cli("apps:sleep", BAD, "--after", "1").returncode == 0
        wait_asleep(docker_client, daemon, BAD)
        # The release's image is gone: the start fails, and the held request is told why at once.
        image = docker_client.images.get(f"lbsolo/{BAD}:v1")
        docker_client.images.remove(image.id, force=True)
        t0 = time.monotonic()
        r = daemon.get(BAD, timeout=60)
        assert r.status_code == 503 and "could not wake up" in r.text, r.text[:300]
        assert time.monotonic() - t0 < 20
        assert daemon.api_get(f"/api/apps/{BAD}/sleep").json()["asleep"] is True
        assert not running(docker_client, daemon, BAD)
    finally:
        daemon.cli("destroy", BAD, "--yes")
