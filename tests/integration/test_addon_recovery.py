"""Add-ons that come back on the real engine: a stopped add-on container is started again by the
daemon like a replica; a daemon killed (SIGKILL) in the middle of a backup's verification or of a
Redis restore leaves, on its next start, no throw-away container, no half-written file, the
add-on running with its data whole (the old data or the restored, never none).

Needs the stand-in images scripts/test-env seeds (postgres:15, redis:7).
"""

from __future__ import annotations

import signal
import time

import pytest

from .test_addon_backups import container, newest, ok, psql, redis

pytestmark = pytest.mark.docker

APP = "keeper"


def scratch(docker_client, daemon) -> list:
    return docker_client.containers.list(
        all=True, filters={"label": [f"lbsolo.instance={daemon.instance}", "lbsolo.addon-scratch"]}
    )


def wait_for(what: str, check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def keeper(daemon):
    ok(daemon.cli("apps:create", APP))
    yield APP
    for name in ("keeper-cache", "keeper-pg"):
        daemon.cli("addons:destroy", name, "--confirm", name, "--detach", "--no-backup")
    daemon.cli("destroy", APP, "--yes")


def test_a_stopped_add_on_is_started_again(daemon, docker_client, keeper):
    ok(daemon.cli("addons:create", "redis", "--app", APP, "--name", "keeper-cache", "--version", "7"))
    c = container(docker_client, daemon, "keeper-cache")
    redis(c, "set", "kept", "yes")
    c.stop(timeout=5)  # a clean stop: Docker's unless-stopped policy leaves it stopped

    def running() -> bool:
        c.reload()
        return c.status == "running"

    wait_for("the add-on to run again", running, 15)
    assert redis(c, "get", "kept") == "yes"
    kinds = [e["kind"] for e in daemon.api_get("/api/events?limit=50").json()]
    assert "addon.restarted" in kinds, kinds


def test_a_daemon_killed_while_a_backup_is_verified_leaves_nothing_half_done(daemon, docker_client, keeper):
    ok(daemon.cli("addons:create", "postgres", "--app", APP, "--name", "keeper-pg", "--version", "15"))
    c = container(docker_client, daemon, "keeper-pg")
    psql(c, "create table items (n int); insert into items select generate_series(1, 50000)")
    backing_up = daemon.cli_background("addons:backup", "keeper-pg")
    wait_for("the verification's throw-away container", lambda: scratch(docker_client, daemon))
    daemon.stop(signal.SIGKILL)
    backing_up.wait(30)
    daemon.start()

    assert scratch(docker_client, daemon) == []
    assert not list((daemon.home / "backups" / "keeper-pg").glob("*.part"))
    b = newest(daemon, "keeper-pg")
    assert b["verified"] is None  # made, not verified yet: it says so, and can be
    ok(daemon.cli("addons:backups:verify", "keeper-pg", b["id"]))
    assert newest(daemon, "keeper-pg")["verified"] is True
    c = container(docker_client, daemon, "keeper-pg")
    assert c.status == "running" and psql(c, "select count(*) from items") == "50000"


def test_a_daemon_killed_during_a_redis_restore_keeps_the_data_whole(daemon, docker_client, keeper):
    c = container(docker_client, daemon, "keeper-cache")
    for i in range(200):
        redis(c, "set", f"key:{i}", str(i))
    ok(daemon.cli("addons:backup", "keeper-cache"))
    b = newest(daemon, "keeper-cache")
    redis(c, "set", "extra", "1")  # now 202 keys (with "kept"); the backup has 201
    restoring = daemon.cli_background("addons:restore", "keeper-cache", b["id"])

    def helper_up() -> bool:
        return any("-restore-" in s.name for s in scratch(docker_client, daemon))

    wait_for("the restore's helper container", helper_up)
    daemon.stop(signal.SIGKILL)
    restoring.wait(30)
    daemon.start()

    assert scratch(docker_client, daemon) == []

    def back() -> bool:
        c.reload()
        return c.status == "running"

    wait_for("the add-on to run again", back, 15)
    wait_for("redis to answer", lambda: c.exec_run(["redis-cli", "ping"]).exit_code == 0, 15)
    assert redis(c, "dbsize") in ("201", "202")  # the restored data or the data before: never none
    assert redis(c, "get", "key:7") == "7"
