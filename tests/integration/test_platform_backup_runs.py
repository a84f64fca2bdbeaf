"""The platform backups the daemon keeps, on the real daemon and engine with moto's S3 server on
127.0.0.1 (credentials checked), the one the add-on backups' tests use.

`lbsolo backup --schedule … --keep 2` survives restarts; a run missed while the daemon was down
runs once when it is back and says so in an event; the archives are 0600 files in
$LBSOLO_HOME/backups/platform/ and only the newest 2 scheduled ones stay, here and in the bucket.
With `backup:target … --encrypt` each one is uploaded sealed, and one streamed to `lbsolo backup`
too (its copy here removed); a run that fails, or an upload that fails, raises
`platform.backup.failed`. `lbsolo restore NAME --bucket … --key-file` brings one back from the
bucket into a new home; a wrong name or no key is refused in one line, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from lbsolo import platform_archive as pa
from tests.moto_s3 import MotoS3

from .conftest import ROOT

pytestmark = pytest.mark.docker

BUCKET = "lbsolo-platform"
URL = f"s3://{BUCKET}/site"
DAY = 86400


@pytest.fixture(scope="module")
def s3():
    server = MotoS3.start(auth=True)
    server.make_bucket(BUCKET)
    yield server
    server.stop()


def run(daemon, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(daemon.cli_argv(*args), env={**daemon.env, **(env or {})}, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)  # fmt: skip


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def refused(out: subprocess.CompletedProcess[str], *words: str) -> str:
    assert out.returncode != 0, out.stdout + out.stderr
    line = " ".join(out.stderr.split())
    assert "Traceback" not in line and len(out.stderr.strip().splitlines()) <= 4, out.stderr
    for word in words:
        assert word in line, line
    return line


def creds(s3: MotoS3) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": s3.access_key_id, "AWS_SECRET_ACCESS_KEY": s3.secret_access_key}


def status(daemon) -> dict:
    return daemon.api_get("/api/backup/status").json()


def scheduled(daemon) -> list[dict]:
    return [b for b in status(daemon)["backups"] if b["source"] == "scheduled"]


def events(daemon, kind: str) -> list[dict]:
    return [e for e in daemon.api_get("/api/events?n=500").json() if e["kind"] == kind]


def folder(daemon) -> Path:
    return daemon.home / "backups" / "platform"


def miss_runs(daemon) -> None:
    """Stop the daemon and move the schedule's setting and its backups three days back: the runs
    since were missed while it was down."""
    daemon.stop()
    state = json.loads((daemon.home / "state.json").read_text())
    (doc,) = [d for d in state["settings"].values() if d["name"] == "platform_backup"]
    doc["since"] = time.time() - 3 * DAY
    (daemon.home / "state.json").write_text(json.dumps(state))
    for path in folder(daemon).glob("*.json") if folder(daemon).is_dir() else []:
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "created": record["created"] - 3 * DAY}))
    daemon.start()


def wait_for(check, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_scheduled_backups_are_kept_pruned_uploaded_and_restored_from_the_bucket(daemon, s3, tmp_path):
    ok(daemon.cli("apps:create", "keeper"))
    ok(daemon.cli("config:set", "keeper", "GREETING=from the bucket"))

    refused(daemon.cli("backup", "--schedule", "every night"), "invalid schedule")
    refused(daemon.cli("backup", "--schedule", "0 4 * * *", "--keep", "0"), "keep")
    out = ok(daemon.cli("backup", "--schedule", "0 4 * * *", "--keep", "2"))
    assert "keeping 2; next run" in out, out
    assert status(daemon)["next_run"] > time.time()

    refused(run(daemon, "backup:target", URL, "--endpoint", s3.endpoint, "--encrypt"), "credentials")
    assert status(daemon)["target"] is None
    out = ok(run(daemon, "backup:target", URL, "--endpoint", s3.endpoint, "--region", "us-east-1", "--encrypt",
                 env=creds(s3)))  # fmt: skip
    assert "KEEP THIS KEY" in out and s3.secret_access_key not in json.dumps(status(daemon))
    target = status(daemon)["target"]
    assert target["encrypt"] and target["secret_access_key"] == "********"
    key_file = daemon.home / "backup-keys" / f"{target['key_id']}.key"

    # Missed three times while down: one run when back, and one event saying so.
    miss_runs(daemon)
    first = wait_for(lambda: [b for b in scheduled(daemon) if b.get("location") == "local+remote"])
    assert len(first) == 1, status(daemon)
    assert len(events(daemon, "platform.backup.missed")) == 1
    assert status(daemon)["schedule"] == "0 4 * * *" and status(daemon)["keep"] == 2  # survived the restart
    shown = ok(daemon.cli("backup", "--status"))
    assert first[0]["file"] in shown and "here + bucket" in shown and "keeping 2; next run" in shown, shown
    assert "********" not in shown and s3.secret_access_key not in shown and "encrypted with key" in shown
    archive = folder(daemon) / first[0]["file"]
    assert os.stat(archive).st_mode & 0o777 == 0o600
    assert os.stat(archive.with_suffix(".json")).st_mode & 0o777 == 0o600
    sealed = s3.boto().get_object(Bucket=BUCKET, Key=f"site/platform/{first[0]['file']}")["Body"].read()
    assert sealed.startswith(pa.MAGIC) and b"state.json" not in sealed

    # Two more runs: the oldest goes, here and in the bucket.
    for _ in range(2):
        before = {b["id"] for b in scheduled(daemon)}
        miss_runs(daemon)
        assert wait_for(lambda before=before: [b for b in scheduled(daemon) if b["id"] not in before
                                               and b.get("location") == "local+remote"]), status(daemon)  # fmt: skip
    assert wait_for(lambda: len(scheduled(daemon)) == 2), status(daemon)
    kept = scheduled(daemon)
    assert len(kept) == 2 and first[0]["id"] not in [b["id"] for b in kept], kept
    assert sorted(p.name for p in folder(daemon).glob("*.tar")) == sorted(b["file"] for b in kept)
    objects = {o["Key"] for o in s3.boto().list_objects_v2(Bucket=BUCKET, Prefix="site/platform/")["Contents"]}
    assert {f"site/platform/{b['file']}" for b in kept} <= objects
    assert f"site/platform/{first[0]['file']}" not in objects

    # One streamed to lbsolo backup is uploaded too; no copy stays here.
    ok(daemon.cli("backup", "--out", str(tmp_path / "by-hand.tar")))
    manual = wait_for(lambda: [b for b in status(daemon)["backups"] if b["source"] == "manual"])
    assert len(manual) == 1 and manual[0]["location"] == "remote", manual
    assert not list(folder(daemon).glob("*.part")) and len(list(folder(daemon).glob("*.tar"))) == 2

    # A run that fails (its folder cannot be made) raises an event; so does an upload that fails.
    aside = folder(daemon).with_name("platform-aside")
    folder(daemon).rename(aside)
    folder(daemon).write_text("in the way")
    try:
        refused(daemon.cli("backup", "--now"), "failed")
    finally:
        folder(daemon).unlink()
        aside.rename(folder(daemon))
    assert any("platform backup failed" in e["message"] for e in events(daemon, "platform.backup.failed"))
    gone = MotoS3.start()
    gone.make_bucket("elsewhere")
    ok(run(daemon, "backup:target", "s3://elsewhere", "--endpoint", gone.endpoint, env=creds(gone)))
    gone.stop()
    out = ok(daemon.cli("backup", "--now"))
    assert "not uploaded" in out, out
    assert any("not uploaded" in e["message"] for e in events(daemon, "platform.backup.failed"))
    assert "not uploaded" in status(daemon)["last_failure"]["error"]
    shown = ok(daemon.cli("backup", "--status"))
    assert "Last failure" in shown and "upload failed" in shown, shown
    ok(run(daemon, "backup:target", URL, "--endpoint", s3.endpoint, "--region", "us-east-1", "--key-file",
           str(key_file), env=creds(s3)))  # fmt: skip

    # Restored from the bucket by name into a new home, opened with the key.
    name = kept[0]["file"]
    home = tmp_path / "restored" / "home"
    env = {**creds(s3), "LBSOLO_HOME": str(home)}
    where = ["--bucket", URL, "--endpoint", s3.endpoint, "--region", "us-east-1"]
    refused(run(daemon, "restore", name, *where, env=env), "--key-file")
    refused(run(daemon, "restore", "lbsolo-backup-20000101T000000Z.tar", *where, "--key-file", str(key_file),
                env=env), "no such object")  # fmt: skip
    refused(run(daemon, "restore", "state.json", *where, env=env), "not a backup's name")
    assert not (home / "state.json").exists()
    out = ok(run(daemon, "restore", name, *where, "--key-file", str(key_file), env=env))
    assert "downloaded" in out and "restored" in out, out
    state = json.loads((home / "state.json").read_text())
    (app,) = [a for a in state["apps"].values() if a["name"] == "keeper"]
    assert app["config"]["GREETING"] == "from the bucket"
    assert (home / "backup-keys" / key_file.name).read_text() == key_file.read_text()  # the bucket's keys came back
    assert not (home.parent / ".home.download").exists()

    out = ok(daemon.cli("backup", "--schedule", "off"))
    assert status(daemon)["schedule"] is None and status(daemon)["next_run"] is None
    ok(daemon.cli("backup:target", "--local"))
    ok(daemon.cli("destroy", "keeper", "--yes"))
