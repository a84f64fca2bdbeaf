"""A restore drill on the real engine: `lbsolo backup`, the instance wiped, `lbsolo restore` into a new
home, `lbsolo up`: the apps answer with their volume's data, their release history and the old token;
the exposed add-on is published again on its port.

Slow (builds, a whole docker save and load): marked `drill`, always run in CI; --skip-drill skips it
elsewhere. The refusals that need no engine are unit tests (tests/unit/test_platform_archive.py,
test_platform_restore.py); the ones here need a daemon or an engine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT, Daemon, free_port, remove_instance

pytestmark = [pytest.mark.docker, pytest.mark.drill]

HELLO = str(ROOT / "examples" / "hello")


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def refused(out: subprocess.CompletedProcess[str], *words: str) -> str:
    assert out.returncode != 0, out.stdout + out.stderr
    line = out.stderr.strip()
    assert "Traceback" not in line and len(line.splitlines()) <= 3, line
    for word in words:
        assert word in line, line
    return line


def addon_container(docker_client, instance: str, addon: str):
    labels = [f"lbsolo.instance={instance}", f"lbsolo.addon={addon}"]
    (found,) = docker_client.containers.list(all=True, filters={"label": labels})
    return found


def psql(c, sql: str) -> str:
    client = 'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -XAtqc "$0"'
    code, out = c.exec_run(["sh", "-c", client, sql])
    assert code == 0, out
    return out.decode().strip()


def answered(d: Daemon, app: str, timeout: float = 60) -> httpx.Response:
    """The app's first 200 (its replicas start once the daemon serves), or its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        r = d.get(app)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.5)


def releases(d: Daemon, app: str) -> list[tuple[int, str]]:
    return [(r["version"], r["status"]) for r in d.api_get(f"/api/apps/{app}/releases").json()]


def test_restore_drill(docker_client, tmp_path: Path) -> None:
    old = Daemon(home=tmp_path / "old" / "home")
    old.home.parent.mkdir(parents=True)
    old.start()
    new = Daemon(home=tmp_path / "new" / "home")
    instance = old.instance
    try:
        ok(old.cli("apps:create", "hello"))
        ok(old.cli("volumes:add", "hello", "data:/data"))
        ok(old.cli("deploy", HELLO, "--app", "hello"))
        ok(old.cli("config:set", "hello", "GREETING=Restored"))
        ok(old.cli("run", "hello", "--", "echo kept-in-volume > /data/file.txt"))
        ok(old.cli("apps:create", "shop"))
        ok(old.cli("deploy", HELLO, "--app", "shop"))
        ok(old.cli("addons:create", "postgres", "--app", "shop", "--name", "shop-db", "--version", "15"))
        psql(addon_container(docker_client, instance, "shop-db"),
             "create table items (id int primary key, label text); "
             "insert into items select i, 'item ' || i from generate_series(1, 500) i")  # fmt: skip
        exposed = free_port()
        ok(old.cli("addons:expose", "shop-db", "--port", str(exposed)))
        before_shop = releases(old, "shop")
        assert "Restored from lbsolo" in old.get("hello").text
        before = releases(old, "hello")
        token = old.token
        ok(old.cli("tokens:create", "ci"))

        archive = tmp_path / "platform.tar"
        out = ok(old.cli("backup", "--out", str(archive)))
        assert archive.is_file() and "backed up" in out

        # Bad input before anything else: a backup onto a home that has apps is refused.
        refused(old.cli("restore", str(archive)), "running")  # the daemon answers on that home
        old.stop()
        refused(old.cli("restore", str(archive)), "already has", "--force")
        # No engine: one line, nothing written.
        no_engine = subprocess.run(
            [*new.cli_argv("restore", str(archive))], env={**new.env, "DOCKER_HOST": "unix:///nonexistent.sock"},
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        refused(no_engine, "engine")
        assert not new.home.exists()
        # A cut archive: refused, nothing written.
        cut = tmp_path / "cut.tar"
        with open(archive, "rb") as f, open(cut, "wb") as g:
            g.write(f.read(archive.stat().st_size // 2))
        refused(new.cli("restore", str(cut)), "cut short")
        assert not new.home.exists()

        # The old platform goes: its home, containers, volumes, networks and images.
        remove_instance(docker_client, instance)
        shutil.rmtree(old.home)
        assert not docker_client.volumes.list(filters={"label": f"lbsolo.instance={instance}"})

        out = ok(new.cli("restore", str(archive)))
        assert "restored" in out
        assert new.instance == instance  # the images' labels and volumes' names carry it
        new.start(timeout=180)  # the add-on is made again and loaded before the daemon serves
        assert releases(new, "hello") == before and releases(new, "shop") == before_shop
        assert answered(new, "shop").status_code == 200
        restored_db = addon_container(docker_client, instance, "shop-db")
        rows = psql(restored_db, "select count(*), max(label) from items")
        assert rows == "500|item 99"
        # Exposed again on the same port, with its data: a client here reaches it there.
        restored_db.reload()
        bound = restored_db.attrs["HostConfig"]["PortBindings"]["5432/tcp"]
        assert bound == [{"HostIp": "127.0.0.1", "HostPort": str(exposed)}], bound
        with socket.create_connection(("127.0.0.1", exposed), timeout=5):
            pass
        info = new.api_get("/api/addons/shop-db").json()
        assert info["exposed"] == {"address": "127.0.0.1", "port": exposed}, info
        assert f"127.0.0.1:{exposed}" in info["exposed_url"]
        response = answered(new, "hello")
        assert response.status_code == 200 and "Restored from lbsolo" in response.text
        assert "kept-in-volume" in ok(new.cli("run", "hello", "--", "cat", "/data/file.txt"))
        r = httpx.get(f"{new.api}/api/apps", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200 and sorted(a["name"] for a in r.json()) == ["hello", "shop"]
        assert "ci" in ok(new.cli("tokens"))
        ok(new.cli("rollback", "hello"))  # the previous release's image came back too
        assert "Hello from lbsolo" in new.get("hello").text
    finally:
        old.stop()
        new.stop()
        remove_instance(docker_client, instance)


def test_backup_is_encrypted_with_a_passphrase(docker_client, tmp_path: Path) -> None:
    d = Daemon(home=tmp_path / "home", extra_env={"LBSOLO_BACKUP_PASSPHRASE": "correct horse"})
    d.start()
    try:
        ok(d.cli("apps:create", "empty"))
        archive = tmp_path / "sealed.tar"
        ok(d.cli("backup", "--out", str(archive), "--encrypt"))
        assert b"state.json" not in archive.read_bytes()
        d.stop()
        other = Daemon(home=tmp_path / "other", extra_env={"LBSOLO_BACKUP_PASSPHRASE": "wrong horse"})
        refused(other.cli("restore", str(archive)), "wrong passphrase")
        assert not other.home.exists()
        env = {**other.env, "LBSOLO_BACKUP_PASSPHRASE": "correct horse", "LBSOLO_HOME": str(tmp_path / "third")}
        out = subprocess.run([*other.cli_argv("restore", str(archive))], env=env, capture_output=True, text=True,
                             timeout=120, cwd=ROOT)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "third" / "state.json").exists()
    finally:
        d.stop()
        remove_instance(docker_client, d.instance)


@pytest.fixture(autouse=True)
def _no_leftover_env() -> None:
    os.environ.pop("LBSOLO_BACKUP_PASSPHRASE", None)
