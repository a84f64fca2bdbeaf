"""Cron benchmark: 50 jobs due every minute on one daemon (issue 16's target).

examples/hello deployed as one app with 50 jobs `* * * * *` (the per-app cap) whose command prints
the time it started running. After MINUTES due minutes, for each run of those minutes: when its
one-off container was asked for (the run's `started`, minus its `due` time; target <= 1 s) and
when its command was running (the printed time minus `due`; target <= 5 s). Anchor: the machine
itself: a cold `docker run` of the same image to its first output line, and fifty started
together (the engine's own pace on this machine), timed the same way.

Usage: .venv/bin/python bench/cron.py [MINUTES]   (default 1; needs Docker and the seeded images;
everything is removed afterwards)
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scale import Bench

ROOT = Path(__file__).resolve().parents[1]
APP = "cronbench"
JOBS = 50
PRINT_TIME = "python3 -c 'import time; print(repr(time.time()))'"


def api_json(bench: Bench, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    c = http.client.HTTPConnection("127.0.0.1", bench.api_port, timeout=60)
    headers = {"Authorization": f"Bearer {bench.token}", "Content-Type": "application/json"}
    c.request(method, path, json.dumps(body) if body is not None else None, headers)
    r = c.getresponse()
    data = r.read()
    if r.status >= 300:
        raise SystemExit(f"{method} {path} answered {r.status}: {data[:300]!r}")
    return json.loads(data) if data else None


def cold_run(image: str) -> float:
    t0 = time.time()
    out = subprocess.run(["docker", "run", "--rm", image, "/bin/sh", "-c", PRINT_TIME],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return float(out.split()[-1]) - t0


def cold_runs_at_once(image: str, n: int) -> list[float]:
    """n cold `docker run`s started together: how long after the start each command ran."""
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        outs = list(pool.map(lambda _: subprocess.run(
            ["docker", "run", "--rm", image, "/bin/sh", "-c", PRINT_TIME], capture_output=True, text=True, check=True,
        ).stdout, range(n)))  # fmt: skip
    return [float(out.split()[-1]) - t0 for out in outs]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    minutes = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    bench = Bench()
    try:
        bench.cli("apps:create", APP)
        bench.apps.append(APP)
        bench.cli("deploy", str(ROOT / "examples" / "hello"), "--app", APP)
        for i in range(JOBS):
            api_json(bench, "POST", f"/api/apps/{APP}/cron", {"schedule": "* * * * *", "command": PRINT_TIME,
                                                              "name": f"job{i:02d}"})  # fmt: skip
        first = (int(time.time()) // 60 + 1) * 60  # the first due minute all jobs are in
        last = first + 60 * (minutes - 1)
        time.sleep(max(0.0, last + 45 - time.time()))  # the last minute's runs have started and ended
        runs = [r for r in api_json(bench, "GET", f"/api/apps/{APP}/cron-runs")
                if r["due"] is not None and first <= r["due"] <= last]  # fmt: skip
        asked, running, failed = [], [], 0
        for r in runs:
            asked.append(r["started"] - r["due"])
            lines = api_json(bench, "GET", f"/api/apps/{APP}/cron-runs/{r['id']}/logs")
            printed = [float(x) for x in (str(line).split()[-1] for line in lines) if x.replace(".", "").isdigit()]
            if r["status"] != "succeeded" or not printed:
                failed += 1
                continue
            running.append(printed[0] - r["due"])
        colds = [cold_run(f"lbsolo/{APP}:v1") for _ in range(3)]
        together = cold_runs_at_once(f"lbsolo/{APP}:v1", JOBS)
    finally:
        bench.close()
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores; {JOBS} jobs every minute, {minutes} minute(s)")
    print(f"runs: {len(runs)} of {JOBS * minutes} expected, {failed} failed or without output")
    if asked:
        print(f"container asked for after its time: p50 {statistics.median(asked):.2f} s, max {max(asked):.2f} s "
              f"(target <= 1 s)")  # fmt: skip
    if running:
        print(f"command running after its time:     p50 {statistics.median(running):.2f} s, "
              f"p95 {pct(running, 0.95):.2f} s, max {max(running):.2f} s (target <= 5 s)")  # fmt: skip
    print(f"anchor, one cold docker run to its command running: median {statistics.median(colds):.2f} s")
    print(f"anchor, {JOBS} cold docker runs started together: p50 {statistics.median(together):.2f} s, "
          f"p95 {pct(together, 0.95):.2f} s, max {max(together):.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
