"""Restarts under load: `lbsolo restart` N times while a paced load goes through the proxy to an
app (each request a new connection, plus keep-alive clients) and DNS queries go to the daemon's
DNS over UDP; every request that is not a 200 and every query without an answer counts as
failed. The anchor is the same load for the same time with no restart, in the same run. Target
(issue 15): 0 failed of >= 10,000 requests at 100+ req/s across 10 restarts, DNS answered.

Usage: .venv/bin/python bench/restart.py [restarts] [rate]   (default 10 restarts, 150 req/s;
needs a Docker engine and the seeded python:3.12-slim image)
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str], **kw: object) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
    return str(out.stdout)


def dns_query(name: str, qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)


class Load:
    def __init__(self, proxy: int, dns: int, rate: int, workers: int = 12) -> None:
        self.proxy, self.dns, self.workers = proxy, dns, workers
        self.interval = workers / rate
        self.sent = self.queries = 0
        self.failed: list[object] = []
        self.dns_failed: list[object] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def http(self, offset: int) -> None:
        keep = offset % 4 == 0  # a quarter of the workers keep their connection
        conn: http.client.HTTPConnection | None = None
        due = time.monotonic() + offset * self.interval / self.workers
        while not self.stop.is_set():
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            due += self.interval
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.proxy, timeout=10)
                conn.request("GET", "/", headers={"Host": "bench.lbsolo.localhost"})
                r = conn.getresponse()
                body = r.read()
                failure = None if r.status == 200 and b"Hello" in body else (r.status, body[:80])
                if not keep or r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except OSError as e:
                failure = ("error", repr(e))
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.sent += 1
                if failure:
                    self.failed.append(failure)

    def resolve(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            qid = 0
            while not self.stop.is_set():
                qid = (qid + 1) % 65536
                try:
                    s.sendto(dns_query("bench.lbsolo.localhost", qid), ("127.0.0.1", self.dns))
                    while True:
                        answer, _ = s.recvfrom(512)
                        if struct.unpack("!H", answer[:2])[0] == qid:
                            break
                    ok = struct.unpack("!H", answer[6:8])[0] >= 1
                    failure = None if ok else ("no answer", answer[:12])
                except OSError as e:
                    failure = ("error", repr(e))
                with self.lock:
                    self.queries += 1
                    if failure:
                        self.dns_failed.append(failure)
                time.sleep(0.02)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.http, args=(i,), daemon=True) for i in range(self.workers)]
        self.threads.append(threading.Thread(target=self.resolve, daemon=True))
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
    restarts = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    work = Path(tempfile.mkdtemp(prefix="lbsolo-bench-"))
    proxy_port, dns_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LBSOLO_")},
        "LBSOLO_HOME": str(work / "home"),
        "LBSOLO_API_PORT": str(free_port()),
        "LBSOLO_PROXY_PORT": str(proxy_port),
        "LBSOLO_DNS_PORT": str(dns_port),
    }
    lbsolo = [sys.executable, "-m", "lbsolo"]
    first = subprocess.Popen([*lbsolo, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (work / "home" / "daemon.json").exists():
            if time.monotonic() > deadline or first.poll() is not None:
                raise SystemExit("the daemon did not start")
            time.sleep(0.1)
        run([*lbsolo, "apps:create", "bench"], env=env)
        run([*lbsolo, "deploy", str(ROOT / "examples" / "hello"), "--app", "bench"], env=env)
        with Load(proxy_port, dns_port, rate) as quiet:
            time.sleep(max(20.0, restarts * 3.0))
        times = []
        with Load(proxy_port, dns_port, rate) as load:
            time.sleep(1)
            for _ in range(restarts):
                t0 = time.monotonic()
                run([*lbsolo, "restart"], env=env)
                times.append(time.monotonic() - t0)
                time.sleep(max(0.0, 10_000 / rate / restarts - times[-1]))
            time.sleep(1)
        print(f"paced {rate} req/s (12 workers, a quarter on keep-alive connections) + DNS over UDP every 20 ms")
        for name, r in (("no restart (anchor)", quiet), (f"{restarts} restarts", load)):
            print(f"{name:20s} {r.sent:6d} requests in {r.seconds:5.0f}s ({r.sent / r.seconds:4.0f}/s), "
                  f"{len(r.failed)} failed; {r.queries} DNS queries, {len(r.dns_failed)} unanswered")  # fmt: skip
        print(f"each `lbsolo restart` took {min(times):.1f}-{max(times):.1f}s (until the old daemon was gone)")
        for failure in (load.failed + load.dns_failed)[:5]:
            print("  failed:", failure)
    finally:
        subprocess.run([*lbsolo, "destroy", "bench", "--yes"], env=env, capture_output=True)
        try:
            pid = int(json.loads((work / "home" / "daemon.json").read_text())["pid"])
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass
        first.wait(30)
        time.sleep(3)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
