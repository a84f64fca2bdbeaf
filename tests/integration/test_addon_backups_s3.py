"""Add-on backups in an S3-compatible bucket, on the real engine and daemon: a Postgres 15 add-on
with a target on moto's S3 server (127.0.0.1, credentials checked) and --encrypt. Bad targets are
refused in one line and leave the target as it was; a backup lands in the bucket sealed; with
its local files removed by hand it is listed as in the bucket only and `addons:restore` brings
it back from there; a tampered object and a key this server lacks are refused before anything
is restored; the user's own key (--key-file) opens it again. Credentials are never shown.

Needs the stand-in image postgres:15 (scripts/test-env).
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from tests.moto_s3 import MotoS3

from .conftest import ROOT
from .test_addon_backups import PG_STATE, container, ok, psql, refused

pytestmark = pytest.mark.docker

APP = "vault"
PG = "vault-pg"
BUCKET = "lbsolo-offsite"


@pytest.fixture(scope="module")
def s3():
    server = MotoS3.start(auth=True)
    server.make_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pg(daemon, docker_client):
    ok(daemon.cli("apps:create", APP))
    ok(daemon.cli("addons:create", "postgres", "--app", APP, "--name", PG, "--version", "15"))
    c = container(docker_client, daemon, PG)
    psql(c, "create table items (id serial primary key, n int, label text)")
    psql(c, "insert into items (n, label) select i, 'item ' || i from generate_series(1, 500) i")
    psql(c, "create table notes (id int primary key, body text); insert into notes values (1, 'one')")
    yield c
    daemon.cli("addons:destroy", PG, "--confirm", PG, "--detach")
    daemon.cli("destroy", APP, "--yes")


def cli(daemon, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        daemon.cli_argv(*args), env={**daemon.env, **(env or {})}, capture_output=True, text=True,
        timeout=300, cwd=ROOT,
    )  # fmt: skip


def target_cmd(s3: MotoS3, *extra: str, url: str = f"s3://{BUCKET}/site", endpoint: str | None = None) -> list[str]:
    return ["addons:backups:target", PG, url, "--endpoint", endpoint or s3.endpoint, "--region", "us-east-1", *extra]


def creds(s3: MotoS3) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": s3.access_key_id, "AWS_SECRET_ACCESS_KEY": s3.secret_access_key}


def listing(daemon) -> dict:
    return daemon.api_get(f"/api/addons/{PG}/backups").json()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_targets_are_refused_in_one_line_and_change_nothing(daemon, pg, s3, tmp_path):
    good = creds(s3)
    refused(cli(daemon, *target_cmd(s3, url="s3://"), env=good), "s3://BUCKET")
    refused(cli(daemon, *target_cmd(s3, endpoint="ftp://127.0.0.1:21"), env=good), "http:// or https://")
    unreachable = f"http://127.0.0.1:{closed_port()}"
    refused(cli(daemon, *target_cmd(s3, endpoint=unreachable), env=good), f"cannot reach {unreachable}")
    wrong = {**good, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    refused(cli(daemon, *target_cmd(s3), env=wrong), "refused the credentials (SignatureDoesNotMatch)")
    refused(cli(daemon, *target_cmd(s3, url="s3://no-such-bucket"), env=good), "bucket no-such-bucket does not exist")
    short = tmp_path / "short.key"
    short.write_bytes(os.urandom(31))
    refused(cli(daemon, *target_cmd(s3, "--key-file", str(short)), env=good), "32 raw bytes or 64 hex")
    assert listing(daemon)["target"] is None
    assert not (daemon.home / "backup-keys").exists()


def test_encrypted_backup_goes_to_the_bucket_and_comes_back_from_it(daemon, pg, s3, tmp_path):
    out = ok(cli(daemon, *target_cmd(s3, "--encrypt"), env=creds(s3)))
    assert "KEEP THIS KEY" in out and "checked" in out
    key_hex = next(line.strip() for line in out.splitlines() if len(line.strip()) == 64)
    keys = list((daemon.home / "backup-keys").iterdir())
    assert len(keys) == 1 and keys[0].stat().st_mode & 0o777 == 0o600
    assert keys[0].read_text().strip() == key_hex
    # The credentials are never shown again: not by the listing, the add-on's info, or the events.
    for shown in (
        ok(daemon.cli("addons:backups", PG)), ok(daemon.cli("addons:info", PG)),
        daemon.api_get(f"/api/addons/{PG}").text, daemon.api_get(f"/api/addons/{PG}/backups").text,
        daemon.api_get("/api/events").text,
    ):  # fmt: skip
        assert s3.secret_access_key not in shown and s3.access_key_id not in shown and key_hex not in shown

    before = psql(pg, PG_STATE)
    out = ok(daemon.cli("addons:backup", PG))
    assert "Uploading" in out and "(encrypted)" in out
    b = listing(daemon)["backups"][0]
    assert b["location"] == "local+remote" and b["remote"]["ok"] is True and b["remote"]["encrypted"] is True
    boto = s3.boto()
    obj = boto.get_object(Bucket=BUCKET, Key=f"site/{PG}/{b['id']}.dump")["Body"].read()
    assert obj.startswith(b"LBSENC") and not obj.startswith(b"PGDMP") and b"PGDMP" not in obj
    local = (daemon.home / "backups" / PG / f"{b['id']}.dump").read_bytes()
    assert local.startswith(b"PGDMP")  # local files stay as they are
    boto.head_object(Bucket=BUCKET, Key=f"site/{PG}/{b['id']}.json")

    # Its local files removed by hand: listed as in the bucket only, and restored from there.
    for ext in ("dump", "json"):
        (daemon.home / "backups" / PG / f"{b['id']}.{ext}").unlink()
    psql(pg, "delete from items where n > 10; update notes set body = 'changed'")
    changed = psql(pg, PG_STATE)
    assert changed != before
    (entry,) = [x for x in listing(daemon)["backups"] if x["id"] == b["id"]]
    assert entry["location"] == "remote"
    assert "bucket only" in ok(daemon.cli("addons:backups", PG))

    # A tampered object is refused before anything is restored (the file never published).
    tampered = bytearray(obj)
    tampered[len(obj) // 2] ^= 0x01
    boto.put_object(Bucket=BUCKET, Key=f"site/{PG}/{b['id']}.dump", Body=bytes(tampered))
    refused(daemon.cli("addons:restore", PG, b["id"]), "tampered")
    assert psql(pg, PG_STATE) == changed
    assert not (daemon.home / "backups" / PG / f"{b['id']}.dump").exists()
    boto.put_object(Bucket=BUCKET, Key=f"site/{PG}/{b['id']}.dump", Body=obj)

    # As on a new server: the key is not here, then a wrong one is given, then the right one.
    keys[0].unlink()
    refused(daemon.cli("addons:restore", PG, b["id"]), "which this server does not have")
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    ok(cli(daemon, *target_cmd(s3, "--key-file", str(wrong)), env=creds(s3)))
    refused(daemon.cli("addons:restore", PG, b["id"]), "which this server does not have")
    assert psql(pg, PG_STATE) == changed
    mine = tmp_path / "mine.key"
    mine.write_text(key_hex + "\n")
    ok(cli(daemon, *target_cmd(s3, "--key-file", str(mine)), env=creds(s3)))

    out = ok(daemon.cli("addons:restore", PG, b["id"]))
    assert "Downloading" in out and "restored" in out
    assert psql(pg, PG_STATE) == before
    assert (daemon.home / "backups" / PG / f"{b['id']}.dump").read_bytes() == local
    (entry,) = [x for x in listing(daemon)["backups"] if x["id"] == b["id"]]
    assert entry["location"] == "local+remote"


def test_a_failed_upload_fails_the_backup_and_keeps_the_local_copy(daemon, pg, s3):
    ok(cli(daemon, *target_cmd(s3), env=creds(s3)))
    # The bucket goes away after the target was set: the upload fails, the backup job fails.
    boto = s3.boto()
    for o in boto.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        boto.delete_object(Bucket=BUCKET, Key=o["Key"])
    boto.delete_bucket(Bucket=BUCKET)
    try:
        out = daemon.cli("addons:backup", PG)
        assert out.returncode == 1 and "not uploaded (kept here)" in out.stdout + out.stderr, out.stdout + out.stderr
        assert "does not exist" in out.stdout + out.stderr
        b = listing(daemon)["backups"][0]
        assert b["remote"]["ok"] is False and (daemon.home / "backups" / PG / f"{b['id']}.dump").is_file()
        assert "addon.backup.failed" in daemon.api_get("/api/events").text
    finally:
        s3.make_bucket(BUCKET)
    ok(daemon.cli("addons:backups:target", PG, "--local"))
    assert listing(daemon)["target"] is None
