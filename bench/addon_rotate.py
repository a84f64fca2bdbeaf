"""Credential rotation under load: an app that queries its Postgres, Redis and MariaDB add-ons
on every request (tests/integration/dbprobe: a new connection and one query each) is sent a
paced 100 requests/s through lbsolo's proxy while `addons:credentials:rotate` runs on each
add-on in turn, N times; every request that is not a 200 with the query's answer counts as
failed. The anchor is the same load with no rotation, measured in the same run. Target
(issue 13): 0 failed requests.

Usage: .venv/bin/python bench/addon_rotate.py [rotations] [rate]   (default 3 rounds, 100 req/s;
needs a Docker engine and the seeded postgres:15, redis:7, mariadb:10.11, python:3.12-slim images)
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "integration" / "dbprobe"
VARS = ("DATABASE_URL", "REDIS_URL", "MYSQL_URL")
ADDONS = (("postgres", "15", "bench-pg", "DATABASE_URL"), ("redis", "7", "bench-cache", "REDIS_URL"),
          ("mariadb", "10.11", "bench-maria", "MYSQL_URL"))  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str], **kw: object) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
    return str(out.stdout)


class Paced:
    """`rate` requests a second spread over `workers` threads, each on its own schedule."""

    def __init__(self, port: int, rate: int, workers: int = 8) -> None:
        self.port, self.interval, self.workers = port, workers / rate, workers
        self.sent, self.failed, self.late = 0, [], 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def worker(self, offset: int) -> None:
        due = time.monotonic() + offset * self.interval / self.workers
        i = offset
        while not self.stop.is_set():
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            elif pause < -self.interval:
                with self.lock:
                    self.late += 1
            due += self.interval
            var = VARS[i % len(VARS)]
            i += 1
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", f"/q?var={var}", headers={"Host": "bench.lbsolo.localhost"})
                r = conn.getresponse()
                body = r.read()
                conn.close()
                ok = r.status == 200 and body.startswith(b"ok")
                failure = None if ok else (var, r.status, body[:120])
            except OSError as e:
                failure = (var, "error", repr(e))
            with self.lock:
                self.sent += 1
                if failure:
                    self.failed.append(failure)

    def __enter__(self) -> Paced:
        self.threads = [threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(self.workers)]
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)
        self.seconds = time.monotonic() - self.started


def main() -> None:
    rotations = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 100
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
    try:
        deadline = time.monotonic() + 30
        while not (work / "home" / "daemon.json").exists():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("the daemon did not start")
            time.sleep(0.1)
        run([*lbsolo, "apps:create", "bench"], env=env)
        run([*lbsolo, "deploy", str(PROBE), "--app", "bench"], env=env)
        for kind, version, name, var in ADDONS:
            run([*lbsolo, "addons:create", kind, "--app", "bench", "--name", name, "--version", version,
                 "--as", var], env=env)  # fmt: skip
        with Paced(proxy_port, rate) as quiet:
            time.sleep(20)
        with Paced(proxy_port, rate) as load:
            started = time.monotonic()
            for _ in range(rotations):
                for _kind, _version, name, _var in ADDONS:
                    run([*lbsolo, "addons:credentials:rotate", name], env=env)
            rotating = time.monotonic() - started
        print(f"paced {rate} req/s, each request a new connection and one query to one of 3 databases")
        print(f"no rotation (anchor)  {quiet.sent} requests in {quiet.seconds:.0f}s "
              f"({quiet.sent / quiet.seconds:.0f}/s), {len(quiet.failed)} failed")  # fmt: skip
        print(f"{rotations * len(ADDONS)} rotations       {load.sent} requests in {load.seconds:.0f}s "
              f"({load.sent / load.seconds:.0f}/s), {len(load.failed)} failed")  # fmt: skip
        print(f"the rotations took {rotating:.0f}s; requests sent late (pacing fell behind): {load.late}")
        for failure in load.failed[:5]:
            print("  failed:", failure)
    finally:
        for _kind, _version, name, _var in ADDONS:
            subprocess.run([*lbsolo, "addons:destroy", name, "--confirm", name, "--detach", "--no-backup"], env=env,
                           capture_output=True)  # fmt: skip
        subprocess.run([*lbsolo, "destroy", "bench", "--yes"], env=env, capture_output=True)
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
