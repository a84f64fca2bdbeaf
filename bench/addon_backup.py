"""Add-on backup benchmark: `lbsolo addons:backup` (pg_dump -Fc streamed to the daemon's file)
and `lbsolo addons:restore` of a Postgres 15 add-on seeded to a given size, beside the raw path
on the same container in the same run: `docker exec pg_dump -Fc > file` and `docker exec -i
pg_restore < file`. The verification (a restore into a throw-away container and the counts)
is timed and reported separately. Target (PRODUCT.md): lbsolo's throughput >= 0.8x the raw path.

Usage: .venv/bin/python bench/addon_backup.py [size_mb] [rounds]   (default 1024 MB, 3 rounds;
needs a Docker engine and the seeded postgres:15 image)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lbsolo.config import Settings  # noqa: E402
from lbsolo.daemon import instance_id  # noqa: E402

ADDON = "bench-pg"
CLIENT = 'PGPASSWORD="$POSTGRES_PASSWORD" {tool} -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sh(container: str, script: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", "exec", "-i", container, "sh", "-c", script], check=True, **kw)  # type: ignore[call-overload]


def psql(container: str, sql: str) -> str:
    argv = ["docker", "exec", "-i", container, "sh", "-c", CLIENT.format(tool="psql") + " -XAtq -v ON_ERROR_STOP=1"]
    out = subprocess.run(argv, input=sql.encode(), capture_output=True)
    if out.returncode != 0:
        raise SystemExit(f"psql failed: {out.stderr.decode()}")
    return out.stdout.decode().strip()


def seed(container: str, size_mb: int) -> int:
    """A table of rows of about 150 bytes (random-ish text, so the dump's compression has work)
    until the database holds size_mb; its size in bytes."""
    psql(container, "create table items (id bigint primary key, n int, label text, body text)")
    rows_per_mb = 5200
    batch = 100 * rows_per_mb
    total = size_mb * rows_per_mb
    for start in range(0, total, batch):
        stop = min(start + batch, total)
        psql(
            container,
            "insert into items select i, ((i * 7919) % 100003)::int, md5(i::text), "
            "md5(random()::text) || md5(random()::text) || md5((i * 31)::text) "
            f"from generate_series({start + 1}::bigint, {stop}) i",
        )
    psql(container, "vacuum analyze items")
    return int(psql(container, "select pg_database_size(current_database())"))


def timed(argv: list[str], env: dict[str, str], **kw: object) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
    return seconds, out.stdout


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    work = Path(tempfile.mkdtemp(prefix="lbsolo-bench-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LBSOLO_")},
        "LBSOLO_HOME": str(work / "home"),
        "LBSOLO_API_PORT": str(free_port()),
        "LBSOLO_PROXY_PORT": str(free_port()),
        "LBSOLO_DNS_PORT": str(free_port()),
    }
    lbsolo = [sys.executable, "-m", "lbsolo"]
    daemon = subprocess.Popen([*lbsolo, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    instance = instance_id(Settings.load(home=work / "home"))
    container = f"lbsolo-{instance}-addon-{ADDON}"
    try:
        deadline = time.monotonic() + 30
        while not (work / "home" / "daemon.json").exists():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("the daemon did not start")
            time.sleep(0.1)
        timed([*lbsolo, "apps:create", "bench"], env)
        timed([*lbsolo, "addons:create", "postgres", "--app", "bench", "--name", ADDON, "--version", "15"], env)
        started = time.perf_counter()
        db_bytes = seed(container, size_mb)
        print(f"seeded {db_bytes / 2**20:.0f} MB in {time.perf_counter() - started:.0f}s", file=sys.stderr)

        raw_dump, raw_restore, our_dump, our_total, our_verify, our_restore = [], [], [], [], [], []
        dump_bytes = 0
        raw_file = work / "raw.dump"
        for _ in range(rounds):
            # The raw path: pg_dump -Fc by hand to a file, pg_restore by hand from it.
            with raw_file.open("wb") as f:
                t0 = time.perf_counter()
                sh(container, CLIENT.format(tool="pg_dump") + " -Fc --no-owner --no-acl", stdout=f)
                raw_dump.append(time.perf_counter() - t0)
            with raw_file.open("rb") as f:
                t0 = time.perf_counter()
                restore = " --clean --if-exists --no-owner --no-acl --single-transaction --exit-on-error"
                sh(container, CLIENT.format(tool="pg_restore") + restore, stdin=f)
                raw_restore.append(time.perf_counter() - t0)
            # lbsolo's: addons:backup (dump, then verification), addons:restore of that backup.
            seconds, _out = timed([*lbsolo, "addons:backup", ADDON], env)
            listing = json.loads(
                subprocess.run(
                    ["curl", "-s", "--unix-socket", str(work / "home" / "api.sock"), "-H",
                     f"Authorization: Bearer {(work / 'home' / 'token').read_text().strip()}",
                     f"http://localhost/api/addons/{ADDON}/backups"],
                    check=True, capture_output=True, text=True,
                ).stdout
            )  # fmt: skip
            newest = listing["backups"][0]
            our_total.append(seconds)
            our_dump.append(newest["dump_seconds"])
            our_verify.append(newest["verify_seconds"])
            dump_bytes = newest["size"]
            seconds, _out = timed([*lbsolo, "addons:restore", ADDON, newest["id"]], env)
            our_restore.append(seconds)
            for backup in listing["backups"]:
                timed([*lbsolo, "addons:backups:remove", ADDON, backup["id"]], env)

        def med(xs: list[float]) -> float:
            return statistics.median(xs)

        mb = db_bytes / 2**20
        print(f"database {mb:.0f} MB, dump {dump_bytes / 2**20:.0f} MB (pg_dump -Fc), {rounds} rounds, medians")
        print(f"backup  raw docker exec pg_dump -Fc > file  {med(raw_dump):6.2f}s  {mb / med(raw_dump):6.1f} MB/s")
        print(f"backup  lbsolo dump (daemon's file)        {med(our_dump):6.2f}s  {mb / med(our_dump):6.1f} MB/s")
        print(f"        throughput ratio lbsolo/raw        {med(raw_dump) / med(our_dump):6.2f}x  (target >= 0.8)")
        print(
            f"restore raw docker exec -i pg_restore       {med(raw_restore):6.2f}s  {mb / med(raw_restore):6.1f} MB/s"
        )
        print(f"restore lbsolo addons:restore (CLI wall)   {med(our_restore):6.2f}s  {mb / med(our_restore):6.1f} MB/s")
        print(
            f"        throughput ratio lbsolo/raw        {med(raw_restore) / med(our_restore):6.2f}x  (target >= 0.8)"
        )
        print(f"verify  (restore into a throw-away + counts) {med(our_verify):6.2f}s, reported apart")
        print(f"addons:backup CLI wall (dump + verify)     {med(our_total):6.2f}s")
    finally:
        gone = ["addons:destroy", ADDON, "--confirm", ADDON, "--detach", "--no-backup"]
        subprocess.run([*lbsolo, *gone], env=env, capture_output=True)
        subprocess.run([*lbsolo, "destroy", "bench", "--yes"], env=env, capture_output=True)
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
