"""Wake benchmark: a sleeping app's first answer against a cold `docker run` of the same image.

lbsolo: examples/hello deployed, `apps:sleep --after 1`, waited until asleep, then one GET through
the proxy, timed to its 200 (the proxy holds it while a replica starts and passes its check).
Anchor: `docker run` of the same image with a port published on 127.0.0.1, polled with GET / every
10 ms until 200. Each measured ROUNDS times; the medians and their ratio (target <= 1.5x), and
whether any request was refused during a wake (target: none).

Usage: .venv/bin/python bench/wake.py [ROUNDS]   (default 5; needs Docker and the seeded images;
everything is removed afterwards)
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scale import Bench

ROOT = Path(__file__).resolve().parents[1]
APP = "wakebench"


def get(port: int, host: str | None = None, timeout: float = 60) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", "/", headers={"Host": host} if host else {})
    r = c.getresponse()
    r.read()
    return r.status


def cold_run(image: str) -> float:
    t0 = time.monotonic()
    cid = subprocess.run(
        ["docker", "run", "-d", "--rm", "-e", "PORT=5000", "-p", "127.0.0.1::5000", "--label", "lbsolo.bench=wake",
         image],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        port = int(subprocess.run(["docker", "port", cid, "5000"], capture_output=True, text=True,
                                  check=True).stdout.split(":")[-1])  # fmt: skip
        while True:
            try:
                if get(port, timeout=1) == 200:
                    return time.monotonic() - t0
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.01)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    bench = Bench()
    try:
        bench.cli("apps:create", APP)
        bench.apps.append(APP)
        bench.cli("deploy", str(ROOT / "examples" / "hello"), "--app", APP)
        bench.cli("apps:sleep", APP, "--after", "1")
        host = f"{APP}.lbsolo.localhost"
        wakes, refused = [], 0
        for _ in range(rounds):
            deadline = time.monotonic() + 60
            while (
                "asleep now"
                not in subprocess.run(
                    [*bench.lbsolo, "apps:sleep", APP], env=bench.env, capture_output=True, text=True
                ).stdout
            ):
                if time.monotonic() > deadline:
                    raise SystemExit("the app did not fall asleep")
                time.sleep(0.2)
            t0 = time.monotonic()
            status = get(bench.proxy_port, host)
            wakes.append(time.monotonic() - t0)
            refused += status != 200
        image = f"lbsolo/{APP}:v1"
        colds = [cold_run(image) for _ in range(rounds)]
    finally:
        bench.close()
    wake, cold = statistics.median(wakes), statistics.median(colds)
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores; {rounds} rounds each")
    print(f"wake from sleep to first 200 (through the proxy): median {wake:.2f} s  {[round(w, 2) for w in wakes]}")
    print(f"cold docker run to first 200 (anchor):           median {cold:.2f} s  {[round(c, 2) for c in colds]}")
    print(f"wake / cold run: {wake / cold:.2f}x (target <= 1.5x); requests refused during wakes: {refused} (target 0)")


if __name__ == "__main__":
    main()
