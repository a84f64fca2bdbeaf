"""Footprint benchmark: how fast `lbsolo up` is ready and how much memory the idle daemon holds.

Targets (PRODUCT.md): ready <= 2 s after start, idle RSS <= 80 MB. Needs a Docker engine.
Usage: .venv/bin/python bench/footprint.py [runs]
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_run() -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as home:
        api = free_port()
        env = {
            **os.environ,
            "LBSOLO_HOME": home,
            "LBSOLO_API_PORT": str(api),
            "LBSOLO_PROXY_PORT": str(free_port()),
            "LBSOLO_DNS_PORT": str(free_port()),
        }
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "lbsolo", "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{api}/healthz", timeout=1).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() - start > 30:
                        raise SystemExit("daemon did not start") from None
                    time.sleep(0.02)
            ready = time.monotonic() - start
            time.sleep(5)  # a few reconcile passes
            return ready, rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    results = [one_run() for _ in range(runs)]
    ready = sorted(r for r, _ in results)[len(results) // 2]
    rss = max(m for _, m in results)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"ready after start (median of {runs}): {ready:.2f} s   target <= 2 s   ratio {ready / 2:.2f}")
    print(f"idle RSS (max of {runs}):          {rss:.1f} MB  target <= 80 MB  ratio {rss / 80:.2f}")


if __name__ == "__main__":
    main()
