"""Whole-platform backup benchmark on the drill set: examples/hello as one app with a volume holding a
file, and a second app with a postgres:15 add-on holding a table of `rows` rows. Times `lbsolo backup`
(daemon running), `lbsolo restore` into a new home after the instance is wiped (no daemon), and the
`lbsolo up` that follows until it is ready (the add-on made again and loaded) and both apps answer;
reports the archive's size and what it holds. Anchor in the same run: a raw `docker save` of the same images.
Also `lbsolo backup --now` with an encrypted bucket target (moto's S3 server on loopback): the archive
written into the daemon's folder, then uploaded sealed.

Usage: .venv/bin/python bench/platform_backup.py [rows]   (default 100000; needs a Docker engine, the
seeded postgres:15 and busybox images; run it under the Docker lock where the engine is shared)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from tests.integration.conftest import Daemon, remove_instance  # noqa: E402
from tests.integration.test_platform_backup import addon_container, answered, psql  # noqa: E402
from tests.moto_s3 import MotoS3  # noqa: E402


def ok(out: subprocess.CompletedProcess[str]) -> str:
    if out.returncode != 0:
        raise SystemExit(f"failed: {out.args}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    result = fn()
    return time.monotonic() - started, result


def keep_and_upload(d: Daemon) -> dict[str, float]:
    """`lbsolo backup --now` with an encrypted target on moto's S3 server (loopback): the daemon
    writes the archive into its folder, then uploads it sealed; the record's seconds of each."""
    s3 = MotoS3.start()
    try:
        s3.make_bucket("bench")
        env = {**d.env, "AWS_ACCESS_KEY_ID": s3.access_key_id, "AWS_SECRET_ACCESS_KEY": s3.secret_access_key}
        ok(subprocess.run(d.cli_argv("backup:target", "s3://bench/site", "--endpoint", s3.endpoint, "--encrypt"),
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT))  # fmt: skip
        now_s, _ = timed(lambda: ok(d.cli("backup", "--now", timeout=1800)))
        (b,) = [b for b in d.api_get("/api/backup/status").json()["backups"] if b["source"] == "now"]
        assert b["remote"]["ok"], b
        up = b["remote"]
        return {"now_with_upload_s": round(now_s, 2), "now_written_s": b["seconds"],
                "upload_sealed_s": up["seconds"], "uploaded_mb": round(up["size"] / 1e6, 1)}  # fmt: skip
    finally:
        s3.stop()


def main(rows: int) -> None:
    client = docker.from_env()
    work = Path(tempfile.mkdtemp(prefix="lbsolo-bench-backup-"))
    old = Daemon(home=work / "old" / "home")
    old.home.parent.mkdir(parents=True)
    new = Daemon(home=work / "new" / "home")
    old.start()
    instance = old.instance
    hello = str(ROOT / "examples" / "hello")
    try:
        ok(old.cli("apps:create", "hello"))
        ok(old.cli("volumes:add", "hello", "data:/data"))
        ok(old.cli("deploy", hello, "--app", "hello"))
        ok(old.cli("run", "hello", "--", "echo kept > /data/file.txt"))
        ok(old.cli("apps:create", "shop"))
        ok(old.cli("deploy", hello, "--app", "shop"))
        ok(old.cli("addons:create", "postgres", "--app", "shop", "--name", "shop-db", "--version", "15"))
        psql(addon_container(client, instance, "shop-db"),
             "create table items (id int primary key, label text); "
             f"insert into items select i, md5(i::text) from generate_series(1, {rows}) i")  # fmt: skip
        archive = work / "platform.tar"
        backup_s, _ = timed(lambda: ok(old.cli("backup", "--out", str(archive), timeout=1800)))
        with tarfile.open(archive) as tf:
            manifest = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        by_kind: dict[str, int] = {}
        for e in manifest["entries"]:
            by_kind[e["kind"]] = by_kind.get(e["kind"], 0) + e["size"]
        images = next(e["meta"]["ids"] for e in manifest["entries"] if e["kind"] == "images")
        staged = [line for line in old.log_path.read_text().splitlines() if "platform backup staged" in line]  # type: ignore[union-attr]
        raw_s, _ = timed(lambda: subprocess.run(["docker", "save", "-o", str(work / "raw.tar"), *images], check=True))
        kept = keep_and_upload(old)
        old.stop()
        remove_instance(client, instance)
        restore_s, _ = timed(lambda: ok(new.cli("restore", str(archive), timeout=1800)))
        up_s, _ = timed(lambda: new.start(timeout=600))
        serving_s, codes = timed(lambda: [answered(new, a, 300).status_code for a in ("hello", "shop")])
        assert codes == [200, 200], codes
        count = psql(addon_container(client, instance, "shop-db"), "select count(*) from items")
        assert count == str(rows), count
        print(json.dumps({
            "rows": rows, "archive_mb": round(archive.stat().st_size / 1e6, 1),
            "by_kind_mb": {k: round(v / 1e6, 2) for k, v in by_kind.items()},
            "backup_s": round(backup_s, 2), "raw_docker_save_s": round(raw_s, 2),
            "raw_docker_save_mb": round((work / "raw.tar").stat().st_size / 1e6, 1),
            "restore_s": round(restore_s, 2), "up_ready_s": round(up_s, 2),
            "both_apps_200_after_ready_s": round(serving_s, 2), **kept, "daemon": staged[-1:],
        }, indent=1))  # fmt: skip
    finally:
        old.stop()
        new.stop()
        remove_instance(client, instance)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
