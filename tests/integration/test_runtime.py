"""The runtime on the real engine: zero-downtime rollouts under load, rollbacks, health checks,
scaling, config and secrets, persistent logs, promotion, and convergence after crashes."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from .conftest import EXAMPLES, Daemon, running_daemon

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def daemon(docker_client, tmp_path_factory):
    with running_daemon(
        docker_client,
        tmp_path_factory.mktemp("runtime") / "home",
        {"LBSOLO_DEPLOY_TIMEOUT": "8", "LBSOLO_DRAIN_TIMEOUT": "5"},
    ) as d:
        yield d


def running(docker_client, daemon, app, process=None):
    labels = [f"lbsolo.instance={daemon.instance}", f"lbsolo.app={app}"]
    if process:
        labels.append(f"lbsolo.process={process}")
    return docker_client.containers.list(filters={"label": labels})


def deploy(daemon, src, app):
    out = daemon.cli("deploy", str(src), "--app", app)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


class Load:
    """A client loop on loopback through the proxy, recording every outcome."""

    def __init__(self, daemon: Daemon, app: str) -> None:
        self.daemon, self.app = daemon, app
        self.ok: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = self.stopped = 0.0

    def _run(self) -> None:
        host = f"{self.app}.lbsolo.localhost:{self.daemon.proxy_port}"
        with httpx.Client(base_url=f"http://127.0.0.1:{self.daemon.proxy_port}", headers={"Host": host}) as c:
            while not self._stop.is_set():
                try:
                    r = c.get("/", timeout=10)
                    if r.status_code == 200:
                        self.ok[r.text.split("release=")[1].split()[0]] += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:80]}")
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)
        self.stopped = time.monotonic()

    @property
    def total(self) -> int:
        return sum(self.ok.values()) + len(self.failures)

    @property
    def rate(self) -> float:
        return self.total / max(self.stopped - self.started, 0.001)


def test_redeploys_and_rollbacks_under_load_drop_nothing(daemon, docker_client):
    assert daemon.cli("apps:create", "zd").returncode == 0
    deploy(daemon, EXAMPLES / "hello", "zd")
    with Load(daemon, "zd") as load:
        for _ in range(10):
            deploy(daemon, EXAMPLES / "hello", "zd")
        for version in ("v3", "v7", "v11"):
            out = daemon.cli("rollback", "zd", version)
            assert out.returncode == 0, out.stdout + out.stderr
            assert "Building" not in out.stdout  # a rollback never rebuilds
    assert load.failures == [], load.failures[:5]
    assert load.rate >= 100, f"load loop reached only {load.rate:.0f} req/s"
    assert len(load.ok) >= 10  # responses came from many releases, old and new
    releases = daemon.api_get("/api/apps/zd/releases").json()
    assert len(releases) == 14
    assert [r["status"] for r in releases].count("active") == 1
    assert releases[-1]["description"] == "rollback to v11" and releases[-1]["status"] == "active"
    assert len(running(docker_client, daemon, "zd")) == 1


def test_release_that_fails_its_health_check_keeps_the_previous_one(daemon, tmp_path):
    src = tmp_path / "unhealthy"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "lbsolo.toml").write_text('[healthcheck]\npath = "/no-such-path"\n')
    out = daemon.cli("deploy", str(src), "--app", "zd")
    assert out.returncode == 1
    assert "health check" in out.stdout + out.stderr
    assert daemon.get("zd").status_code == 200
    releases = daemon.api_get("/api/apps/zd/releases").json()
    assert releases[-1]["status"] == "failed"
    assert "answered 404" in releases[-1]["error"]


def test_scale_up_spreads_requests_then_back_down_without_errors(daemon, docker_client):
    with Load(daemon, "zd") as load:
        out = daemon.cli("scale", "zd", "web=3")
        assert out.returncode == 0, out.stderr
        assert len(running(docker_client, daemon, "zd", "web")) == 3
        seen = Counter()
        with httpx.Client() as c:
            for _ in range(60):
                r = c.get(
                    f"http://127.0.0.1:{daemon.proxy_port}/",
                    headers={"Host": "zd.lbsolo.localhost"},
                )
                seen[r.text.split("hostname=")[1].strip()] += 1
        assert len(seen) == 3, seen
        out = daemon.cli("scale", "zd", "web=1")
        assert out.returncode == 0, out.stderr
    assert load.failures == [], load.failures[:5]
    assert len(running(docker_client, daemon, "zd", "web")) == 1
    assert daemon.cli("scale", "zd", "nosuch=1").returncode == 1


def test_config_change_makes_a_release_and_secrets_never_show(daemon):
    out = daemon.cli("config:set", "zd", "GREETING=Howdy")
    assert out.returncode == 0, out.stdout + out.stderr
    assert daemon.get("zd").text.startswith("Howdy from lbsolo!")
    out = daemon.cli("config:set", "zd", "--secret", "DB_PASSWORD=hunter2-xyzzy", "API_TOKEN=tok-plugh")
    assert out.returncode == 0, out.stdout + out.stderr
    shown = daemon.cli("config", "zd").stdout
    assert "GREETING=Howdy" in shown and "DB_PASSWORD" in shown and "API_TOKEN" in shown
    everything = shown + out.stdout + daemon.cli("releases", "zd").stdout
    for path in ("/api/apps/zd", "/api/apps/zd/config", "/api/apps/zd/releases", "/api/apps"):
        everything += daemon.api_get(path).text
    assert "hunter2-xyzzy" not in everything and "tok-plugh" not in everything
    # ... but the app itself gets them.
    run = daemon.cli("run", "zd", "--", "echo", "pw=$DB_PASSWORD")
    assert run.returncode == 0 and "pw=hunter2-xyzzy" in run.stdout
    assert daemon.cli("run", "zd", "--", "exit 7").returncode == 7
    # Reconcile passes run every second here; a one-off is not theirs to remove.
    slow = daemon.cli("run", "zd", "--", "sleep 3; echo slept")
    assert slow.returncode == 0 and "slept" in slow.stdout, slow.stdout + slow.stderr
    out = daemon.cli("config:unset", "zd", "GREETING")
    assert out.returncode == 0
    assert daemon.get("zd").text.startswith("Hello from lbsolo!")


def test_logs_of_replaced_releases_are_kept(daemon):
    out = daemon.cli("logs", "zd", "--release", "v1", "--grep", "listening")
    assert out.returncode == 0
    assert "hello v1 listening" in out.stdout and "web.v1" in out.stdout
    everything = daemon.cli("logs", "zd", "--tail", "100000", "--grep", "listening").stdout
    for version in range(1, 12):
        assert f"hello v{version} listening" in everything


def test_promote_moves_the_image_without_a_build(daemon):
    assert daemon.cli("apps:create", "zprod").returncode == 0
    assert daemon.cli("config:set", "zprod", "GREETING=Prod").returncode == 0
    out = daemon.cli("promote", "zd", "zprod")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Building" not in out.stdout
    assert daemon.get("zprod").text.startswith("Prod from lbsolo!")
    src = daemon.api_get("/api/apps/zd/releases").json()
    dst = daemon.api_get("/api/apps/zprod/releases").json()
    active = next(r for r in src if r["status"] == "active")
    assert dst[-1]["image"] == active["image"]


def test_sigkill_mid_rollout_converges_to_one_release(daemon, docker_client, tmp_path):
    src = tmp_path / "slow"
    shutil.copytree(EXAMPLES / "hello", src)
    app = (
        (src / "app.py")
        .read_text()
        .replace('if __name__ == "__main__":\n', 'if __name__ == "__main__":\n    time.sleep(4)\n')
    )
    (src / "app.py").write_text("import time\n" + app)
    one_off = daemon.cli_background("run", "zd", "--", "sleep 120")
    deadline = time.monotonic() + 30
    while not running(docker_client, daemon, "zd", "one-off") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running(docker_client, daemon, "zd", "one-off")
    proc = daemon.cli_background("deploy", str(src), "--app", "zd")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        releases = daemon.api_get("/api/apps/zd/releases").json()
        if releases[-1]["step"] == "wait_ready":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the rollout never reached wait_ready")
    daemon.stop(signal.SIGKILL)
    proc.wait(timeout=30)
    one_off.wait(timeout=30)
    daemon.start()
    assert not running(docker_client, daemon, "zd", "one-off")  # nobody waits for it any more
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        web = running(docker_client, daemon, "zd", "web")
        if len(web) == 1:
            break
        time.sleep(0.3)
    web = running(docker_client, daemon, "zd", "web")
    assert len(web) == 1
    current = daemon.api_get("/api/apps/zd").json()["release"]
    assert web[0].labels["lbsolo.release"] == current.lstrip("v")
    releases = daemon.api_get("/api/apps/zd/releases").json()
    assert releases[-1]["status"] == "failed" and "interrupted" in releases[-1]["error"]
    assert daemon.get("zd").status_code == 200


def test_killed_replica_is_serving_again_within_5s(daemon, docker_client):
    [container] = running(docker_client, daemon, "zd", "web")
    container.kill()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        try:
            if daemon.get("zd").status_code == 200 and len(running(docker_client, daemon, "zd", "web")) == 1:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    assert time.monotonic() - t0 < 5
    assert daemon.get("zd").status_code == 200


def test_resources_and_volumes_apply_as_releases_and_data_persists(daemon, docker_client):
    out = daemon.cli("resources:set", "zd", "web", "--memory", "96m", "--cpus", "0.5")
    assert out.returncode == 0, out.stdout + out.stderr
    [web] = running(docker_client, daemon, "zd", "web")
    assert web.attrs["HostConfig"]["Memory"] == 96 * 1024 * 1024
    assert web.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    out = daemon.cli("volumes:add", "zd", "data:/data")
    assert out.returncode == 0, out.stdout + out.stderr
    assert daemon.cli("run", "zd", "--", "echo kept > /data/marker").returncode == 0
    out = daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", "zd")
    assert out.returncode == 0, out.stdout + out.stderr
    [web] = running(docker_client, daemon, "zd", "web")
    assert web.exec_run(["cat", "/data/marker"]).output.strip() == b"kept"
    assert daemon.cli("resources:set", "zd", "web", "--memory", "1k").returncode == 1
    assert daemon.cli("volumes:add", "zd", "data:relative").returncode == 1
