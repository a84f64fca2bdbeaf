"""Add-ons observed on the real engine: a Redis add-on's container output through `lbsolo logs`
(read, tailed, filtered, followed while redis-server writes a new line) and the API; its CPU and
memory in `addons`, `addons:info` and GET /api/addons; a name that is neither app nor add-on
refused with the apps' one line.

Needs the stand-in redis:7 that scripts/test-env seeds.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time

import pytest

pytestmark = pytest.mark.docker

APP, NAME = "watched", "watched-cache"


@pytest.fixture(scope="module")
def cache(daemon, docker_client):
    assert daemon.cli("apps:create", APP).returncode == 0
    out = daemon.cli("addons:create", "redis", "--app", APP, "--name", NAME, "--version", "7")
    assert out.returncode == 0, out.stdout + out.stderr
    labels = [f"lbsolo.instance={daemon.instance}", f"lbsolo.addon={NAME}"]
    (container,) = docker_client.containers.list(filters={"label": labels})
    yield container
    daemon.cli("addons:destroy", NAME, "--confirm", NAME, "--detach", "--no-backup")
    daemon.cli("destroy", APP, "--yes")


def redis_cli(container, *args: str) -> bytes:
    command = container.attrs["Config"]["Cmd"]
    password = command[command.index("--requirepass") + 1]
    code, said = container.exec_run(["redis-cli", "-a", password, "--no-auth-warning", *args])
    assert code == 0, said
    return bytes(said)


def test_logs_of_an_addon_are_its_containers_output(daemon, cache):
    out = daemon.cli("logs", NAME)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Ready to accept connections" in out.stdout
    assert "redis.7" in out.stdout  # the kind and version where an app shows process and release

    one = daemon.cli("logs", NAME, "-n", "1")
    assert one.returncode == 0 and len(one.stdout.strip().splitlines()) == 1, one.stdout

    ready = daemon.cli("logs", NAME, "--grep", "Ready to accept")
    lines = ready.stdout.strip().splitlines()
    assert lines and all("Ready to accept" in line for line in lines), ready.stdout
    assert daemon.cli("logs", NAME, "--since", "1d").stdout.count("Ready to accept") >= 1

    rows = daemon.api_get(f"/api/addons/{NAME}/logs?tail=3").json()
    assert 1 <= len(rows) <= 3
    assert {(r["app"], r["process"], r["release"]) for r in rows} == {(NAME, "redis", "7")}
    assert all(r["ts"] > time.time() - 3600 for r in rows)

    wrong = daemon.cli("logs", NAME, "--process", "web")
    assert wrong.returncode != 0 and "is an add-on" in wrong.stdout + wrong.stderr

    neither = daemon.cli("logs", "no-such-thing")
    said = (neither.stdout + neither.stderr).strip()
    assert neither.returncode != 0 and "unknown app 'no-such-thing'" in said and len(said.splitlines()) == 1, said
    assert daemon.api_get("/api/addons/no-such-thing/logs").status_code == 404


def test_follow_prints_a_line_redis_writes_afterwards(daemon, cache):
    proc = subprocess.Popen(
        daemon.cli_argv("logs", NAME, "-f", "-n", "1"),
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()

    def wait_for(text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                assert proc.poll() is None, f"logs -f ended: {seen}"
                continue
            seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {timeout}s: {seen}")

    try:
        wait_for("")  # the one line of the backlog: the follow is under way
        time.sleep(0.5)
        redis_cli(cache, "SAVE")  # redis-server logs "DB saved on disk"
        assert "redis.7" in wait_for("DB saved on disk")
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(5)
        proc.stdout.close()  # type: ignore[union-attr]


def test_cpu_and_memory_of_an_addon(daemon, cache):
    out = daemon.cli("addons:info", NAME)
    assert out.returncode == 0, out.stdout + out.stderr
    (memory,) = [line for line in out.stdout.splitlines() if line.strip().startswith("memory")]
    used = memory.split()[1:3]  # e.g. ['7.9', 'MB']
    assert float(used[0]) > 0 and used[1] in ("KB", "MB", "GB"), memory
    assert "/" in memory  # used / the limit (the machine's memory: add-ons have none of their own)

    started = time.monotonic()
    listing = daemon.api_get("/api/addons").json()
    elapsed = time.monotonic() - started
    (shown,) = [a for a in listing if a["name"] == NAME]
    stats = shown["stats"]
    assert stats["mem_bytes"] > 0 and stats["mem_limit"] >= stats["mem_bytes"] and stats["cpu_percent"] >= 0
    assert elapsed < 3, elapsed  # read on demand, at once: a second reading at most a quarter second later

    listed = daemon.cli("addons").stdout
    row = next(line for line in listed.splitlines() if NAME in line)
    assert "%" in row and "B" in row, listed
