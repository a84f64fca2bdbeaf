"""Add-on creation benchmark: `lbsolo addons:create postgres --app APP` until the attached app
answers a request with a query result, beside the raw path in the same run: `docker run
postgres`, `pg_isready` until it takes connections, then a manual config change and restart of
the app's container (removed and run again with DATABASE_URL set) until it answers the same
request. Both use the same app (tests/integration/dbprobe: each request queries the database
afresh) and the same postgres:15 image. Target (PRODUCT.md): lbsolo <= 1.5x the raw path.

Usage: .venv/bin/python bench/addon_create.py [rounds]   (default 5; needs a Docker engine and
the seeded postgres:15 and python:3.12-slim images)
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "integration" / "dbprobe"
LABEL = "lbsolo.bench=addon-create"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str], **kw: object) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
    return str(out.stdout)


def answers(url: str, host: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            return r.status == 200 and r.read().startswith(b"ok")
    except OSError:
        return False


def until(check: object, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def raw_round(i: int, image: str, network: str) -> float:
    """docker run postgres, pg_isready, then the app's container re-run with DATABASE_URL."""
    pw, pg, app = secrets.token_urlsafe(24), f"bench-raw-pg-{i}", f"bench-raw-app-{i}"
    app_port = free_port()
    run(["docker", "run", "-d", "--name", f"{app}-old", "--label", LABEL, "--network", network,
         "-p", f"127.0.0.1:{app_port}:5000", image])  # fmt: skip  (the app as it ran before the database)
    try:
        started = time.perf_counter()
        run(["docker", "run", "-d", "--name", pg, "--label", LABEL, "--network", network,
             "-v", f"{pg}-data:/var/lib/postgresql/data", "-e", "POSTGRES_USER=app", "-e", f"POSTGRES_PASSWORD={pw}",
             "-e", "POSTGRES_DB=app", "-e", "PGDATA=/var/lib/postgresql/data/pgdata", "postgres:15"])  # fmt: skip
        until(
            lambda: subprocess.run(
                ["docker", "exec", pg, "pg_isready", "-q", "-h", "127.0.0.1", "-U", "app", "-d", "app"],
                capture_output=True,
            ).returncode
            == 0,
            "pg_isready",
        )
        run(["docker", "rm", "-f", f"{app}-old"])
        run(["docker", "run", "-d", "--name", app, "--label", LABEL, "--network", network,
             "-p", f"127.0.0.1:{app_port}:5000", "-e", f"DATABASE_URL=postgres://app:{pw}@{pg}:5432/app",
             image])  # fmt: skip
        until(lambda: answers(f"http://127.0.0.1:{app_port}/q?var=DATABASE_URL"), "the raw app's answer")
        return time.perf_counter() - started
    finally:
        subprocess.run(["docker", "rm", "-f", pg, app, f"{app}-old"], capture_output=True)
        subprocess.run(["docker", "volume", "rm", f"{pg}-data"], capture_output=True)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    work = Path(tempfile.mkdtemp(prefix="lbsolo-bench-"))
    proxy_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LBSOLO_")},
        "LBSOLO_HOME": str(work / "home"),
        "LBSOLO_API_PORT": str(free_port()),
        "LBSOLO_PROXY_PORT": str(proxy_port),
        "LBSOLO_DNS_PORT": str(free_port()),
    }
    lbsolo = [sys.executable, "-m", "lbsolo"]
    daemon = subprocess.Popen([*lbsolo, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    image, network = "lbsolo-bench-dbprobe:latest", "lbsolo-bench-raw"
    ours: list[float] = []
    raw: list[float] = []
    try:
        until(lambda: (work / "home" / "daemon.json").exists(), "the daemon", 30)
        run([*lbsolo, "apps:create", "bench"], env=env)
        run([*lbsolo, "deploy", str(PROBE), "--app", "bench"], env=env)
        run(["docker", "build", "-q", "--label", LABEL, "-t", image, str(PROBE)])
        run(["docker", "network", "create", "--label", LABEL, network])
        host = "bench.lbsolo.localhost"
        for i in range(rounds):
            raw.append(raw_round(i, image, network))
            name = f"bench-db-{i}"
            started = time.perf_counter()
            run([*lbsolo, "addons:create", "postgres", "--app", "bench", "--name", name, "--version", "15"], env=env)
            until(lambda: answers(f"http://127.0.0.1:{proxy_port}/q?var=DATABASE_URL", host), "lbsolo's app")
            ours.append(time.perf_counter() - started)
            run([*lbsolo, "addons:destroy", name, "--confirm", name, "--detach", "--no-backup"], env=env)
        med_ours, med_raw = statistics.median(ours), statistics.median(raw)
        print(f"{rounds} rounds, medians (each round: a new Postgres 15 and the app answering a query through it)")
        print(f"raw  docker run + pg_isready + app re-run with DATABASE_URL  {med_raw:6.2f}s  {sorted(raw)}")
        print(f"lbsolo addons:create (zero-downtime release) until the app answers {med_ours:6.2f}s  {sorted(ours)}")
        print(f"ratio lbsolo/raw {med_ours / med_raw:.2f}x  (target <= 1.5)")
    finally:
        subprocess.run([*lbsolo, "destroy", "bench", "--yes"], env=env, capture_output=True)
        daemon.terminate()
        daemon.wait(30)
        subprocess.run(["docker", "network", "rm", network], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
