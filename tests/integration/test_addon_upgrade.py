"""addons:upgrade on the real engine: a Postgres 15 add-on upgraded in place to a newer 15
image, then to 17 (a real major: Debian 13's postgresql-17) through a dump while an app that
queries it on every request is served without a failed request; every bad request refused
in one line with the database untouched; a major upgrade that fails half-way undone whole.

Needs the stand-in images scripts/test-env seeds (postgres:15, postgres:17).
"""

from __future__ import annotations

import signal
import time

import pytest

from .test_addon_access import PROBE_APP, Load, addon_container, ok, refused, web_env

pytestmark = pytest.mark.docker

APP, DB = "upgrader", "upgrader-db"
MINOR = "15.99"  # postgres:15 tagged under a newer minor's name, for the in-place path


def rows(docker_client, daemon, name: str, user: str = "upgrader_db") -> str:
    code, said = addon_container(docker_client, daemon, name).exec_run(
        ["psql", "-U", user, "-d", "upgrader_db", "-Atc", "select count(*), sum(n) from items"]
    )
    assert code == 0, said
    return said.decode().strip()


def addon(daemon, name: str) -> dict:
    r = daemon.api_get(f"/api/addons/{name}")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def upgrader(daemon, docker_client):
    ok(daemon.cli("apps:create", APP))
    ok(daemon.cli("deploy", str(PROBE_APP), "--app", APP))
    ok(daemon.cli("addons:create", "postgres", "--app", APP, "--name", DB, "--version", "15"))
    code, said = addon_container(docker_client, daemon, DB).exec_run(
        [
            "psql",
            "-U",
            "upgrader_db",
            "-d",
            "upgrader_db",
            "-Atc",
            "create table items (n int); insert into items select generate_series(1, 1000)",
        ]
    )
    assert code == 0, said
    image = docker_client.images.get("postgres:15")
    image.tag("postgres", MINOR)
    yield APP
    for name in (f"{DB}-17", DB):
        daemon.cli("addons:destroy", name, "--confirm", name, "--detach", "--no-backup")
    daemon.cli("destroy", APP, "--yes")
    docker_client.images.remove(f"postgres:{MINOR}", noprune=True)


def test_bad_upgrades_are_refused_in_one_line_and_change_nothing(daemon, docker_client, upgrader):
    before = addon_container(docker_client, daemon, DB).id
    cases = [
        (("addons:upgrade", DB, "--version", "17"), "is a major upgrade: 17 cannot read 15's data files"),
        (("addons:upgrade", DB, "--version", "14", "--via-dump"), "older than 15"),
        (("addons:upgrade", DB, "--version", "15"), "already runs postgres 15"),
        (("addons:upgrade", DB, "--version", "latest"), "invalid postgres version 'latest'"),
        (("addons:upgrade", DB, "--version", "15.3", "--via-dump"), "same major"),
        (("addons:upgrade", DB, "--version", "17", "--via-dump", "--name", APP), "is an app"),
        (("addons:upgrade", DB, "--version", "17", "--via-dump", "--name", "Bad_Name"), "add-on name"),
        (("addons:upgrade", "nothere", "--version", "17"), "no add-on 'nothere'"),
    ]
    for args, message in cases:
        refused(daemon.cli(*args), message)
    assert addon_container(docker_client, daemon, DB).id == before
    assert rows(docker_client, daemon, DB) == "1000|500500"
    assert [a["name"] for a in daemon.api_get("/api/addons").json()] == [DB]


def test_a_major_upgrade_that_fails_is_undone_whole_and_the_database_stays_writable(daemon, docker_client, upgrader):
    out = daemon.cli("addons:upgrade", DB, "--version", "99", "--via-dump")
    assert out.returncode == 1 and "no image postgres:99" in out.stderr and "nothing changed" in out.stderr, out
    assert [a["name"] for a in daemon.api_get("/api/addons").json()] == [DB]
    assert addon(daemon, DB)["upgrade"] == {} and addon(daemon, DB)["status"] == "running"
    code, said = addon_container(docker_client, daemon, DB).exec_run(
        ["psql", "-U", "upgrader_db", "-d", "upgrader_db", "-Atc", "insert into items values (0)"]
    )
    assert code == 0, said  # the fence is down (none was up: the image check comes first)


def test_the_same_major_upgrades_in_place_on_the_same_data(daemon, docker_client, upgrader):
    before = addon_container(docker_client, daemon, DB)
    env = web_env(docker_client, daemon, APP)["DATABASE_URL"]
    out = ok(daemon.cli("addons:upgrade", DB, "--version", MINOR))
    assert f"{DB} runs {MINOR}" in out.stdout, out.stdout
    after = addon_container(docker_client, daemon, DB)
    assert after.id != before.id and after.attrs["Config"]["Image"] == f"postgres:{MINOR}"
    assert rows(docker_client, daemon, DB).startswith("1001|")
    assert addon(daemon, DB)["version"] == MINOR
    assert web_env(docker_client, daemon, APP)["DATABASE_URL"] == env  # the app kept its URL: no release
    assert daemon.get(APP, "/q", params={"var": "DATABASE_URL"}).text.startswith("ok")


def test_a_daemon_killed_while_the_new_add_on_is_made_undoes_the_upgrade_on_its_next_start(
    daemon, docker_client, upgrader
):
    def new_container():
        return docker_client.containers.list(
            all=True, filters={"label": [f"lbsolo.instance={daemon.instance}", f"lbsolo.addon={DB}-17"]}
        )

    upgrading = daemon.cli_background("addons:upgrade", DB, "--version", "17", "--via-dump")
    deadline = time.monotonic() + 60
    while not new_container():
        assert time.monotonic() < deadline and upgrading.poll() is None, "the new add-on never appeared"
        time.sleep(0.05)
    assert addon(daemon, DB)["upgrade"]["step"] == "restoring"
    daemon.stop(signal.SIGKILL)
    upgrading.wait(timeout=30)
    daemon.start()

    old = addon(daemon, DB)
    assert (old["status"], old["upgrade"], old["attachments"]) == ("running", {}, {APP: "DATABASE_URL"})
    assert [a["name"] for a in daemon.api_get("/api/addons").json()] == [DB]
    assert new_container() == []
    assert not docker_client.volumes.list(filters={"label": f"lbsolo.addon={DB}-17"})
    code, said = addon_container(docker_client, daemon, DB).exec_run(
        ["psql", "-U", "upgrader_db", "-d", "upgrader_db", "-Atc", "insert into items values (0); select 1"]
    )
    assert code == 0, said  # the fence is down again
    assert rows(docker_client, daemon, DB).startswith("1002|")
    assert daemon.get(APP, "/q", params={"var": "DATABASE_URL"}).text.startswith("ok")


def test_a_new_major_through_a_dump_moves_the_app_with_no_failed_request(daemon, docker_client, upgrader):
    ok(daemon.cli("addons:backups:schedule", DB, "0 3 * * *", "--keep", "3"))
    with Load(daemon, APP, ("DATABASE_URL",), threads=2) as load:
        out = ok(daemon.cli("addons:upgrade", DB, "--version", "17", "--via-dump"))
    assert load.failures == [], load.failures[:5]
    assert load.count > 20, load.count
    assert f"{DB}-17 runs 17 and serves {APP}" in out.stdout, out.stdout
    assert "read-only for its apps" in out.stdout

    new = addon(daemon, f"{DB}-17")
    assert (new["version"], new["status"], new["attachments"]) == ("17", "running", {APP: "DATABASE_URL"})
    assert new["backup_schedule"] == "0 3 * * *" and new["backup_keep"] == 3
    old = addon(daemon, DB)
    assert (old["status"], old["attachments"], old["upgrade"]["to"]) == ("retired", {}, f"{DB}-17")
    assert addon_container(docker_client, daemon, DB).status == "exited"  # kept, stopped
    assert addon_container(docker_client, daemon, f"{DB}-17").attrs["Config"]["Image"] == "postgres:17"

    assert rows(docker_client, daemon, f"{DB}-17").startswith("1002|")
    code, said = addon_container(docker_client, daemon, f"{DB}-17").exec_run(["postgres", "--version"])
    assert b"17." in said, said
    assert f"@{DB}-17:5432/" in web_env(docker_client, daemon, APP)["DATABASE_URL"]
    assert daemon.get(APP, "/q", params={"var": "DATABASE_URL"}).text.startswith("ok")
    # The new one is writable (the fence stayed on the old one), and the dump is one of the old one's backups.
    code, said = addon_container(docker_client, daemon, f"{DB}-17").exec_run(
        ["psql", "-U", "upgrader_db", "-d", "upgrader_db", "-Atc", "insert into items values (2)"]
    )
    assert code == 0, said
    sources = [b["source"] for b in daemon.api_get(f"/api/addons/{DB}/backups").json()["backups"]]
    assert "upgrade" in sources, sources

    refused(daemon.cli("addons:attach", DB, "--app", APP, "--as", "OLD_URL"), "is retired, not running")
    out = ok(daemon.cli("addons:destroy", DB, "--confirm", DB))
    assert "final backup" not in out.stdout  # a stopped add-on has none to take
    assert [a["name"] for a in daemon.api_get("/api/addons").json()] == [f"{DB}-17"]


def test_destroy_takes_a_final_verified_backup_unless_told_not_to(daemon, docker_client, upgrader):
    for name in ("upgrader-cache", "upgrader-spare"):
        ok(
            daemon.cli(
                "addons:create",
                "redis",
                "--app",
                APP,
                "--name",
                name,
                "--version",
                "7",
                "--as",
                f"{name.upper().replace('-', '_')}_URL",
            )
        )
    out = ok(daemon.cli("addons:destroy", "upgrader-cache", "--confirm", "upgrader-cache", "--detach"))
    assert "Its final backup" in out.stdout, out.stdout
    (rdb,) = (daemon.home / "backups" / "upgrader-cache").glob("*.rdb")
    assert rdb.read_bytes()[:5] == b"REDIS" and rdb.stat().st_mode & 0o777 == 0o600
    (manifest,) = (daemon.home / "backups" / "upgrader-cache").glob("*.json")
    assert '"verified": true' in manifest.read_text() and '"source": "final"' in manifest.read_text()

    out = ok(daemon.cli("addons:destroy", "upgrader-spare", "--confirm", "upgrader-spare", "--detach", "--no-backup"))
    assert "final backup" not in out.stdout
    assert not (daemon.home / "backups" / "upgrader-spare").exists() or not list(
        (daemon.home / "backups" / "upgrader-spare").glob("*.rdb")
    )
    assert addon(daemon, f"{DB}-17")["status"] == "running"
