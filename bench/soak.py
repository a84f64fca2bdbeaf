"""Rollout soak: redeploys and rollbacks of examples/hello under continuous load through the proxy.

Several client threads keep requests flowing on loopback while the app is redeployed N times and
rolled back every few deploys; prints failed/total and the releases that answered. The promise
under test: traffic moves only to healthy replicas and old ones drain, so nothing fails.

Usage: .venv/bin/python bench/soak.py [redeploys] [clients]   (needs a Docker engine)
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
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client(port: int, stop: threading.Event, ok: Counter[str], failed: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        try:
            conn.request("GET", "/", headers={"Host": "soak.lbsolo.localhost"})
            r = conn.getresponse()
            body = r.read().decode()
            if r.status == 200:
                ok[body.split("release=")[1].split()[0]] += 1
            else:
                failed.append(f"{r.status}")
        except (OSError, http.client.HTTPException) as e:
            failed.append(repr(e))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()


def main() -> None:
    deploys = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    work = Path(tempfile.mkdtemp(prefix="lbsolo-soak-"))
    proxy = free_port()
    env = {
        **os.environ,
        "LBSOLO_HOME": str(work / "home"),
        "LBSOLO_API_PORT": str(api := free_port()),
        "LBSOLO_PROXY_PORT": str(proxy),
        "LBSOLO_DNS_PORT": str(free_port()),
    }
    lbsolo = [sys.executable, "-m", "lbsolo"]
    daemon = subprocess.Popen([*lbsolo, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok: Counter[str] = Counter()
    failed: list[str] = []
    stop = threading.Event()
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{api}/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        src = ROOT / "examples" / "hello"
        subprocess.run([*lbsolo, "apps:create", "soak"], env=env, check=True, capture_output=True)
        subprocess.run([*lbsolo, "deploy", str(src), "--app", "soak"], env=env, check=True, capture_output=True)
        threads = [threading.Thread(target=client, args=(proxy, stop, ok, failed)) for _ in range(clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for i in range(deploys):
            verb = ["rollback", "soak"] if i % 5 == 4 else ["deploy", str(src), "--app", "soak"]
            subprocess.run([*lbsolo, *verb], env=env, check=True, capture_output=True)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        subprocess.run([*lbsolo, "destroy", "soak", "--images", "--yes"], env=env, capture_output=True)
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    total = sum(ok.values()) + len(failed)
    print(
        f"machine: {os.uname().machine}, {os.cpu_count()} cores; {deploys} rollouts, {clients} clients, {elapsed:.0f} s"
    )
    print(f"failed/total = {len(failed)}/{total}  ({total / elapsed:.0f} req/s); releases answering: {len(ok)}")
    if failed:
        print("first failures:", failed[:5])


if __name__ == "__main__":
    main()
