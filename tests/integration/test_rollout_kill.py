"""`kill -9` of the daemon at each named rollout step converges to one serving release, no orphans.

The daemon is started with LBSOLO_HOLD_AT_STEP=<step>: a rollout that has done that step's work
waits there, and the test kills the daemon (SIGKILL) at that known point, then starts it again
without the hold. A rollout killed before its swap failed and the previous release serves; one
killed at or after its swap is finished and the new release serves (its replicas had passed
their checks and took the traffic). Either way: exactly one active release, the app's
replicas all of it, running, the formation's count, nothing else left of the app.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator

import pytest

from .conftest import EXAMPLES, Daemon, remove_instance

pytestmark = pytest.mark.docker

REPLICAS = 2
BEFORE_SWAP = ("release_phase", "start", "wait_ready")
AFTER_SWAP = ("swap", "drain", "stop_old")


@pytest.fixture(scope="module")
def daemon(docker_client, tmp_path_factory) -> Iterator[Daemon]:
    d = Daemon(home=tmp_path_factory.mktemp("rollout-kill") / "home")
    try:
        yield d
    finally:
        d.stop()
        remove_instance(docker_client, d.instance)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """examples/hello with a release phase (a Procfile's `release:`), so that every step happens."""
    src = tmp_path_factory.mktemp("src") / "hello"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "Procfile").write_text("web: python app.py\nrelease: python -c 'print(\"migrated\")'\n")
    return src


def containers(docker_client, daemon: Daemon, app: str) -> list[tuple[str, str, str]]:
    """(status, release, process) of every container of the app, stopped and one-off ones too."""
    labels = [f"lbsolo.instance={daemon.instance}", f"lbsolo.app={app}"]
    found = docker_client.containers.list(all=True, filters={"label": labels})
    return sorted((c.status, c.labels.get("lbsolo.release", ""), c.labels.get("lbsolo.process", "")) for c in found)


def wait_for(what: str, check, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(0.2)


def held(daemon: Daemon, step: str) -> bool:
    assert daemon.log_path is not None
    return f"rollout held after step {step}" in daemon.log_path.read_text()


@pytest.mark.parametrize("step", BEFORE_SWAP + AFTER_SWAP)
def test_a_daemon_killed_at_a_rollout_step_converges_to_one_serving_release(daemon, docker_client, source, step):
    app = f"kill-{step.replace('_', '-')}"
    daemon.extra_env = {}
    daemon.start()
    try:
        assert daemon.cli("apps:create", app).returncode == 0
        assert daemon.cli("scale", app, f"web={REPLICAS}").returncode == 0
        out = daemon.cli("deploy", str(source), "--app", app)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "release=v1" in daemon.get(app).text
        daemon.stop()

        daemon.extra_env = {"LBSOLO_HOLD_AT_STEP": step}
        daemon.start()
        change = daemon.cli_background("config:set", app, "GREETING=Two")  # a new release, v2
        wait_for(f"the rollout held after {step}", lambda: held(daemon, step), 60)
        assert daemon.api_get(f"/api/apps/{app}/releases").json()[-1]["step"] == step
        daemon.stop(signal.SIGKILL)
        change.wait(timeout=30)

        daemon.extra_env = {}
        daemon.start()
        expected = "1" if step in BEFORE_SWAP else "2"
        want = [("running", expected, "web")] * REPLICAS
        wait_for(
            f"only {REPLICAS} running web replicas of v{expected}",
            lambda: containers(docker_client, daemon, app) == want,
            30,
        )
        releases = {r["version"]: r for r in daemon.api_get(f"/api/apps/{app}/releases").json()}
        assert [v for v, r in releases.items() if r["status"] == "active"] == [int(expected)], releases
        assert not [v for v, r in releases.items() if r["status"] in ("deploying", "pending")], releases
        if step in BEFORE_SWAP:
            assert releases[2]["status"] == "failed" and f"interrupted at step {step}" in releases[2]["error"]
        info = daemon.api_get(f"/api/apps/{app}").json()
        assert info["release"] == f"v{expected}" and info["replicas"] == REPLICAS
        greeting = "Hello" if step in BEFORE_SWAP else "Two"
        for _ in range(2 * REPLICAS):
            r = daemon.get(app)
            assert r.status_code == 200 and r.text.startswith(f"{greeting} from lbsolo! release=v{expected} ")
        if step in AFTER_SWAP:  # the app's config followed the finished release
            assert daemon.api_get(f"/api/apps/{app}").json()["config"]["GREETING"] == "Two"
        time.sleep(3)  # a few reconcile passes later, still exactly that
        assert containers(docker_client, daemon, app) == want
        assert daemon.cli("destroy", app, "--yes").returncode == 0
    finally:
        daemon.stop()
