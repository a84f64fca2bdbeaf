"""Add-on backups on the real engine: a Postgres 15, a Redis 7 and a MariaDB 10.11 backed up and
verified (a restore into a throw-away container), restored after their data changed, exported
and imported back; a dump of another kind, of a newer major, cut short or changed since it was
made is refused, and the data is left as it was by each refusal. A schedule's run missed while
the daemon was down runs once when it is back.

Needs the stand-in images scripts/test-env seeds (postgres:15, postgres:17, redis:7,
mariadb:10.11); versions are explicit.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.docker

APP = "shop"
SCRATCH = "lbsolo.addon-scratch"


def container(docker_client, daemon, addon: str):
    labels = [f"lbsolo.instance={daemon.instance}", f"lbsolo.addon={addon}"]
    (found,) = docker_client.containers.list(all=True, filters={"label": labels})
    return found


def no_scratch_left(docker_client, daemon) -> bool:
    labels = [f"lbsolo.instance={daemon.instance}", SCRATCH]
    return docker_client.containers.list(all=True, filters={"label": labels}) == []


def ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    return out.stdout


def refused(out: subprocess.CompletedProcess, said: str) -> None:
    assert out.returncode == 1, out.stdout + out.stderr
    assert said in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def export(daemon, name: str, path: Path, *extra: str) -> Path:
    with path.open("wb") as f:
        out = subprocess.run(
            daemon.cli_argv("addons:export", name, *extra), env=daemon.env, stdout=f, stderr=subprocess.PIPE,
            text=False, timeout=300, cwd=ROOT,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    assert path.stat().st_size > 0
    return path


def import_(daemon, name: str, path: Path) -> subprocess.CompletedProcess:
    with path.open("rb") as f:
        return subprocess.run(
            daemon.cli_argv("addons:import", name), env=daemon.env, stdin=f, capture_output=True, text=True,
            timeout=300, cwd=ROOT,
        )  # fmt: skip


def backups(daemon, name: str) -> dict:
    return daemon.api_get(f"/api/addons/{name}/backups").json()


def newest(daemon, name: str) -> dict:
    return backups(daemon, name)["backups"][0]


# ---- the databases' own clients, in their containers


def psql(c, sql: str) -> str:
    client = 'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -XAtqc "$0"'
    code, out = c.exec_run(["sh", "-c", client, sql])
    assert code == 0, out
    return out.decode().strip()


def redis(c, *args: str) -> str:
    cmd = c.attrs["Config"]["Cmd"]
    password = cmd[cmd.index("--requirepass") + 1]
    code, out = c.exec_run(["redis-cli", "--no-auth-warning", "-a", password, *args])
    assert code == 0, out
    return out.decode().strip()


def maria(c, sql: str) -> str:
    client = 'mariadb -h 127.0.0.1 -u root --password="$MARIADB_ROOT_PASSWORD" -N -B "$MARIADB_DATABASE" -e "$0"'
    code, out = c.exec_run(["sh", "-c", client, sql])
    assert code == 0, out
    return out.decode().strip()


PG_STATE = "select count(*), coalesce(sum(n), 0) from items; select count(*) from notes"


@pytest.fixture(scope="module")
def app(daemon):
    ok(daemon.cli("apps:create", APP))
    yield APP
    for name in ("shop-pg", "shop-pg17", "shop-cache", "shop-maria"):
        daemon.cli("addons:destroy", name, "--confirm", name, "--detach")
    daemon.cli("destroy", APP, "--yes")


@pytest.fixture(scope="module")
def pg(daemon, docker_client, app):
    ok(daemon.cli("addons:create", "postgres", "--app", app, "--name", "shop-pg", "--version", "15"))
    c = container(docker_client, daemon, "shop-pg")
    psql(c, "create table items (id serial primary key, n int, label text)")
    psql(c, "insert into items (n, label) select i, 'item ' || i from generate_series(1, 2000) i")
    psql(c, "create table notes (id int primary key, body text); insert into notes values (1, 'one'), (2, 'two')")
    return c


@pytest.fixture(scope="module")
def cache(daemon, docker_client, app):
    ok(daemon.cli("addons:create", "redis", "--app", app, "--name", "shop-cache", "--version", "7"))
    return "shop-cache"


def test_postgres_backup_is_verified_and_restores_after_the_data_changed(daemon, docker_client, pg):
    before = psql(pg, PG_STATE)
    out = ok(daemon.cli("addons:backup", "shop-pg"))
    assert "pg_restore --list" in out and "verified in" in out and "Backup " in out
    b = newest(daemon, "shop-pg")
    assert (b["kind"], b["major"], b["source"], b["verified"], b["tables"], b["rows"]) == (
        "postgres", "15", "backup", True, 2, 2002
    )  # fmt: skip
    manifest = daemon.api_get(f"/api/addons/shop-pg/backups/{b['id']}").json()
    assert manifest["counts"] == {"public.items": 2000, "public.notes": 2}
    folder = daemon.home / "backups" / "shop-pg"
    for path in (folder / f"{b['id']}.dump", folder / f"{b['id']}.json"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert folder.stat().st_mode & 0o777 == 0o700
    assert no_scratch_left(docker_client, daemon)
    listed = ok(daemon.cli("addons:backups", "shop-pg"))
    assert b["id"] in listed and "yes" in listed

    psql(pg, "delete from items where n > 100; update notes set body = 'changed'; insert into notes values (3, 'x')")
    assert psql(pg, PG_STATE) != before
    out = ok(daemon.cli("addons:restore", "shop-pg", b["id"]))
    assert "restored" in out
    assert psql(pg, PG_STATE) == before  # the tables in the dump are as they were, the row added since gone
    assert psql(pg, "select body from notes where id = 1") == "one"

    out = ok(daemon.cli("addons:backups:verify", "shop-pg", b["id"]))
    assert "verified in" in out and no_scratch_left(docker_client, daemon)


def test_postgres_export_import_round_trip(daemon, pg, tmp_path):
    before = psql(pg, PG_STATE)
    dump = export(daemon, "shop-pg", tmp_path / "shop.dump")
    assert dump.read_bytes()[:5] == b"PGDMP"
    psql(pg, "truncate items; delete from notes")
    out = import_(daemon, "shop-pg", dump)
    assert "Imported" in ok(out)
    assert psql(pg, PG_STATE) == before
    assert newest(daemon, "shop-pg")["source"] == "import"
    # A stored backup downloads whole, byte for byte.
    b = newest(daemon, "shop-pg")
    copy = export(daemon, "shop-pg", tmp_path / "copy.dump", "--backup", b["id"])
    assert copy.read_bytes() == (daemon.home / "backups" / "shop-pg" / f"{b['id']}.dump").read_bytes()


def test_postgres_refuses_wrong_kind_newer_major_cut_and_changed_dumps_and_keeps_its_data(
    daemon, docker_client, pg, cache, tmp_path
):
    before = psql(pg, PG_STATE)
    count = len(backups(daemon, "shop-pg")["backups"])
    # Another kind: a Redis RDB.
    rdb = export(daemon, "shop-cache", tmp_path / "cache.rdb")
    refused(import_(daemon, "shop-pg", rdb), "is a redis dump; this add-on is postgres")
    # A newer major: Postgres 17's dump into this 15.
    ok(daemon.cli("addons:create", "postgres", "--app", APP, "--name", "shop-pg17", "--version", "17", "--as", "PG17"))
    pg17 = export(daemon, "shop-pg17", tmp_path / "pg17.dump")
    refused(import_(daemon, "shop-pg", pg17), "comes from postgres 17, newer than this add-on's 15")
    # Cut short: half of a good dump.
    good = export(daemon, "shop-pg", tmp_path / "good.dump").read_bytes()
    cut = tmp_path / "cut.dump"
    cut.write_bytes(good[: len(good) // 2])
    refused(import_(daemon, "shop-pg", cut), "does not load, so shop-pg was not touched")
    # Not a dump at all.
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    refused(import_(daemon, "shop-pg", junk), "not a dump lbsolo can restore")
    # A stored backup whose file changed since it was made.
    b = newest(daemon, "shop-pg")
    path = daemon.home / "backups" / "shop-pg" / f"{b['id']}.dump"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(daemon.cli("addons:restore", "shop-pg", b["id"]), "is corrupt")
    refused(daemon.cli("addons:restore", "shop-pg", "20200101T000000Z"), "has no backup 20200101T000000Z")

    assert psql(pg, PG_STATE) == before
    assert len(backups(daemon, "shop-pg")["backups"]) == count  # nothing refused was kept
    assert not list((daemon.home / "backups" / "shop-pg").glob("*.part"))
    assert no_scratch_left(docker_client, daemon)


def test_redis_backup_restore_and_round_trip(daemon, docker_client, cache, tmp_path):
    c = container(docker_client, daemon, "shop-cache")
    for i in range(300):
        redis(c, "set", f"key:{i}", str(i))
    redis(c, "-n", "2", "set", "other", "db")
    out = ok(daemon.cli("addons:backup", "shop-cache"))
    assert "verified in" in out
    b = newest(daemon, "shop-cache")
    assert (b["kind"], b["major"], b["verified"], b["rows"]) == ("redis", "7", True, 301)

    redis(c, "flushall")
    redis(c, "set", "new", "1")
    ok(daemon.cli("addons:restore", "shop-cache", b["id"]))
    c = container(docker_client, daemon, "shop-cache")
    assert (
        redis(c, "dbsize") == "300" and redis(c, "get", "key:7") == "7" and redis(c, "-n", "2", "get", "other") == "db"
    )

    dump = export(daemon, "shop-cache", tmp_path / "cache.rdb")
    cut = tmp_path / "cut.rdb"
    cut.write_bytes(dump.read_bytes()[:-20])
    redis(c, "del", "key:1")
    refused(import_(daemon, "shop-cache", cut), "cut short")
    assert redis(c, "dbsize") == "299"  # untouched by the refusal
    ok(import_(daemon, "shop-cache", dump))
    c = container(docker_client, daemon, "shop-cache")
    assert redis(c, "dbsize") == "300" and redis(c, "get", "key:1") == "1"
    assert no_scratch_left(docker_client, daemon)


def test_mariadb_backup_restore_and_round_trip(daemon, docker_client, app, pg, tmp_path):
    ok(daemon.cli("addons:create", "mariadb", "--app", APP, "--name", "shop-maria", "--version", "10.11", "--as", "MY"))
    c = container(docker_client, daemon, "shop-maria")
    maria(c, "create table orders (id int primary key, total int); create table empty_one (id int)")
    maria(c, "insert into orders select seq, seq * 3 from seq_1_to_500")
    state = "select count(*), sum(total) from orders"
    before = maria(c, state)
    out = ok(daemon.cli("addons:backup", "shop-maria"))
    assert "verified in" in out
    b = newest(daemon, "shop-maria")
    assert (b["kind"], b["major"], b["verified"], b["tables"], b["rows"]) == ("mariadb", "10.11", True, 2, 500)

    maria(c, "delete from orders where id > 10")
    ok(daemon.cli("addons:restore", "shop-maria", b["id"]))
    assert maria(c, state) == before

    dump = export(daemon, "shop-maria", tmp_path / "maria.sql")
    assert b"-- Dump completed" in dump.read_bytes()[-200:]
    cut = tmp_path / "cut.sql"
    cut.write_bytes(dump.read_bytes()[: len(dump.read_bytes()) // 2])
    maria(c, "delete from orders where id > 400")
    refused(import_(daemon, "shop-maria", cut), "cut short")
    pg = export(daemon, "shop-pg", tmp_path / "pg.dump")
    refused(import_(daemon, "shop-maria", pg), "is a postgres dump; this add-on is mariadb")
    assert maria(c, "select count(*) from orders") == "400"
    ok(import_(daemon, "shop-maria", dump))
    assert maria(c, state) == before
    assert no_scratch_left(docker_client, daemon)


def test_a_schedule_survives_a_restart_and_a_missed_run_runs_once(daemon, cache):
    out = ok(daemon.cli("addons:backups:schedule", "shop-cache", "0 * * * *", "--keep", "2"))
    assert "keeping 2; next run" in out
    refused(daemon.cli("addons:backups:schedule", "shop-cache", "every day"), "invalid schedule")
    refused(daemon.cli("addons:backups:schedule", "shop-cache", "61 * * * *"), "invalid schedule")
    scheduled = [b for b in backups(daemon, "shop-cache")["backups"] if b["source"] == "scheduled"]
    assert scheduled == []

    daemon.stop()
    since = daemon.home / "backups" / "shop-cache" / "schedule.json"
    record = json.loads(since.read_text())
    since.write_text(json.dumps({**record, "since": time.time() - 3 * 3600}))  # three runs missed while down
    daemon.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        scheduled = [b for b in backups(daemon, "shop-cache")["backups"] if b["source"] == "scheduled"]
        if scheduled and scheduled[0].get("verified") is not None:
            break
        time.sleep(1)
    assert len(scheduled) == 1 and scheduled[0]["verified"] is True, scheduled
    listing = backups(daemon, "shop-cache")
    assert (listing["schedule"], listing["keep"]) == ("0 * * * *", 2)  # kept in the add-on's record
    assert listing["next_run"] > time.time()
    events = daemon.api_get("/api/events?app=shop-cache&n=50").json()
    kinds = [e["kind"] for e in events]
    assert kinds.count("addon.backup.missed") == 1 and "addon.backup.succeeded" in kinds, kinds
    time.sleep(3)
    assert len([b for b in backups(daemon, "shop-cache")["backups"] if b["source"] == "scheduled"]) == 1
    ok(daemon.cli("addons:backups:schedule", "shop-cache", "off"))
    assert backups(daemon, "shop-cache")["schedule"] is None
    assert os.stat(since).st_mode & 0o777 == 0o600
