"""One-file lbsolo benchmark: how long a CLI verb takes to start and `lbsolo up` to be ready.

For each command given (an executable and its leading words, e.g. `dist/lbsolo` or
`.venv/bin/lbsolo`): the median of N runs of `version` and of `apps --help`, the first run
after its cache is emptied when it has one (shiv's ~/.shiv: SHIV_ROOT is pointed at a fresh
directory), and the time from starting `up` (own LBSOLO_HOME, free ports) until /healthz
answers 200 and $LBSOLO_HOME/daemon.json exists. Targets (issue 15): a verb <= 0.3 s, ready <= 2 s.

Usage: .venv/bin/python bench/binary_start.py [-n 10] CMD [CMD ...]
(`up` needs a Docker engine; the daemon is stopped with SIGTERM and creates nothing in Docker.)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def ready_time(argv: list[str], env: dict[str, str], timeout: float = 60.0) -> float:
    with tempfile.TemporaryDirectory(prefix="lbsolo-bench-") as tmp:
        home = Path(tmp) / "home"
        api_port = free_port()
        env = {k: v for k, v in env.items() if not k.startswith("LBSOLO_")} | {
            "LBSOLO_HOME": str(home),
            "LBSOLO_API_PORT": str(api_port),
            "LBSOLO_PROXY_PORT": str(free_port()),
            "LBSOLO_DNS_PORT": str(free_port()),
        }
        start = time.perf_counter()
        proc = subprocess.Popen([*argv, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.perf_counter() - start < timeout:
                if proc.poll() is not None:
                    raise RuntimeError(f"{shlex.join(argv)} up exited with {proc.returncode}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=1) as r:
                        if r.status == 200 and (home / "daemon.json").exists():
                            return time.perf_counter() - start
                except OSError:
                    pass
                time.sleep(0.02)
            raise RuntimeError(f"{shlex.join(argv)} up not ready in {timeout} s")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def measure(command: str, n: int) -> dict[str, object]:
    argv = shlex.split(command)
    with tempfile.TemporaryDirectory(prefix="lbsolo-bench-cache-") as cache:
        env = dict(os.environ, SHIV_ROOT=cache)  # an empty cache: the first run extracts
        first = timed([*argv, "version"], env)
        version = [timed([*argv, "version"], env) for _ in range(n)]
        help_ = [timed([*argv, "apps", "--help"], env) for _ in range(n)]
        ready = [ready_time(argv, env) for _ in range(3)]
    path = Path(argv[-1] if len(argv) > 1 and argv[0].endswith("python3") else argv[0])
    return {
        "command": command,
        "size_mb": round(path.stat().st_size / 1e6, 1) if path.is_file() else None,
        "first_run_s": round(first, 3),
        "version_s": round(statistics.median(version), 3),
        "apps_help_s": round(statistics.median(help_), 3),
        "ready_s": round(statistics.median(ready), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="runs of each verb (the median is shown)")
    parser.add_argument("commands", nargs="+")
    args = parser.parse_args()
    for command in args.commands:
        print(json.dumps(measure(command, args.n)), flush=True)


if __name__ == "__main__":
    main()
