"""A replica killed with SIGKILL serves again within seconds, every time; a replica that keeps dying
right after its restart backs off, ever wider, and its app shows as crash-looping.

The daemon's reconcile interval is set far above the bounds asserted here, so what restarts the
replica is its `die` event (and, for the crash loop, the end of each backoff), never the interval.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time

import httpx
import pytest

from lbsolo.core_plan import BACKOFF_FIRST, HEALTHY_AFTER

from .conftest import EXAMPLES, running_daemon

pytestmark = pytest.mark.docker

BACK_WITHIN = 3.0  # seconds from `docker kill` to the first 200 (the benchmark's bound is 2 s)


@pytest.fixture(scope="module")
def daemon(docker_client, tmp_path_factory):
    home = tmp_path_factory.mktemp("restart") / "home"
    with running_daemon(docker_client, home, {"LBSOLO_RECONCILE_INTERVAL": "30"}) as d:
        yield d


def web_replica(docker_client, daemon, app):
    labels = [f"lbsolo.instance={daemon.instance}", f"lbsolo.app={app}", "lbsolo.process=web"]
    [container] = docker_client.containers.list(filters={"label": labels})
    return container


def deploy(daemon, src, app):
    out = daemon.cli("apps:create", app)
    assert out.returncode == 0, out.stdout + out.stderr
    out = daemon.cli("deploy", str(src), "--app", app)
    assert out.returncode == 0, out.stdout + out.stderr


def docker_kill(container) -> float:
    """SIGKILL the container as a user would; the moment just before."""
    t0 = time.monotonic()
    subprocess.run(["docker", "kill", container.id], check=True, capture_output=True)
    return t0


def seconds_to_200(daemon, app, t0: float, limit: float) -> float:
    while time.monotonic() - t0 < limit:
        try:
            if daemon.get(app).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{app} did not answer 200 through the proxy within {limit}s of the kill")


def test_a_killed_replica_answers_200_again_within_seconds_every_time(daemon, docker_client):
    deploy(daemon, EXAMPLES / "hello", "rs")
    for kill in range(3):
        if kill:
            time.sleep(HEALTHY_AFTER + 0.5)  # it has been up and healthy since its last restart
        container = web_replica(docker_client, daemon, "rs")
        started = container.attrs["State"]["StartedAt"]
        took = seconds_to_200(daemon, "rs", docker_kill(container), 30)
        assert took < BACK_WITHIN, f"kill {kill + 1}: {took:.2f}s to the first 200"
        container.reload()
        assert container.attrs["State"]["StartedAt"] != started  # restarted, not a survivor
        assert web_replica(docker_client, daemon, "rs").id == container.id  # the same replica, once
    app = daemon.api_get("/api/apps/rs").json()
    assert app["status"] == "running" and app["restarts"] == 1  # each restart counted afresh


def test_a_crash_looping_replica_backs_off_and_shows_as_crash_looping(daemon, docker_client, tmp_path):
    # Serves on its first start (the deploy's health check passes), exits at once on every later one.
    src = tmp_path / "flaky"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "Dockerfile").write_text(
        "FROM python:3.12-slim\nWORKDIR /app\nCOPY app.py .\nENV PYTHONUNBUFFERED=1\n"
        'CMD ["sh", "-c", "[ -e /tmp/started ] && exit 3; touch /tmp/started; exec python app.py"]\n'
    )
    deploy(daemon, src, "loop")
    container = web_replica(docker_client, daemon, "loop")
    since = time.time()
    docker_kill(container)
    window = 14.0
    time.sleep(window)
    status = daemon.api_get("/api/apps/loop").json()
    events = docker_client.events(
        since=since, until=time.time(), decode=True, filters={"container": container.id, "event": "start"}
    )
    starts = [e["timeNano"] / 1e9 for e in events]
    assert starts, "the killed replica was never restarted"
    assert starts[0] - since < BACK_WITHIN  # it had been healthy: the first restart is at once
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Each restart waits BACKOFF_FIRST, doubling, after the one before (give or take the time
    # a restart takes). Without a backoff it would restart every second or so.
    for i, gap in enumerate(gaps):
        assert gap >= BACKOFF_FIRST * 2**i - 0.3, f"restarts at {[round(s - since, 2) for s in starts]}"
    assert 4 <= len(starts) <= 6, f"restarts at {[round(s - since, 2) for s in starts]}"
    assert status["status"] == "crashloop" and status["restarts"] >= 5, status
    assert daemon.get("loop").status_code in (502, 503)  # down, not served by a stale target
