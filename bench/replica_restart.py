"""Replica restart benchmark: SIGKILL examples/hello's only web replica, 20 times, and time each
kill until the first 200 through the proxy. Target (issue 11): the worst of 20 <= 2 s.

Each kill waits until the replica has been serving for `--settle` seconds (longer than the
scheduler's HEALTHY_AFTER), so every kill is of a healthy replica: the case that must restart at
once. A crash-looping replica backs off instead; the integration test covers that.

Usage: .venv/bin/python bench/replica_restart.py [--kills 20] [--settle S]
       [--home DIR --api-port N --proxy-port N]   (reuse a running daemon; else one is started)
Needs a Docker engine and the seeded images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker

from lbsolo.config import Settings
from lbsolo.core_plan import HEALTHY_AFTER
from lbsolo.daemon import instance_id

ROOT = Path(__file__).resolve().parents[1]
APP = "bench-restart"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(url: str, host: str) -> int | None:
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return None


def web_replica(client: docker.DockerClient, instance: str) -> docker.models.containers.Container:
    labels = [f"lbsolo.instance={instance}", f"lbsolo.app={APP}", "lbsolo.process=web"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = client.containers.list(filters={"label": labels, "status": "running"})
        if len(found) == 1:
            return found[0]
        time.sleep(0.05)
    raise SystemExit(f"{APP} has no single running web replica")


def percentile(xs: list[float], p: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--settle", type=float, default=HEALTHY_AFTER + 1.0)
    ap.add_argument("--home", type=Path, help="a running daemon's LBSOLO_HOME (reuse it)")
    ap.add_argument("--api-port", type=int, default=7780)
    ap.add_argument("--proxy-port", type=int, default=8080)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lbsolo-bench-restart-"))
    own = args.home is None
    home = work / "home" if own else args.home
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBSOLO_")}
    env["LBSOLO_HOME"] = str(home)
    if own:  # the daemon's own defaults otherwise (reconcile interval included)
        env.update(
            LBSOLO_API_PORT=str(free_port()), LBSOLO_PROXY_PORT=str(free_port()), LBSOLO_DNS_PORT=str(free_port())
        )
    else:
        env.update(LBSOLO_API_PORT=str(args.api_port), LBSOLO_PROXY_PORT=str(args.proxy_port))
    proxy = f"http://127.0.0.1:{env['LBSOLO_PROXY_PORT']}/"
    host = f"{APP}.lbsolo.localhost"
    lbsolo = [sys.executable, "-m", "lbsolo"]
    daemon = None
    if own:
        daemon = subprocess.Popen([*lbsolo, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = docker.from_env()
    times: list[float] = []
    try:
        while status(f"http://127.0.0.1:{env['LBSOLO_API_PORT']}/healthz", "127.0.0.1") != 200:
            time.sleep(0.05)
        instance = instance_id(Settings.load(home=home))
        subprocess.run([*lbsolo, "apps:create", APP], env=env, capture_output=True)
        out = subprocess.run(
            [*lbsolo, "deploy", str(ROOT / "examples" / "hello"), "--app", APP], env=env, capture_output=True
        )
        if out.returncode != 0:
            raise SystemExit(out.stdout.decode() + out.stderr.decode())
        for i in range(args.kills):
            time.sleep(args.settle)
            replica = web_replica(client, instance)
            started = replica.attrs["State"]["StartedAt"]
            if status(proxy, host) != 200:
                raise SystemExit(f"kill {i + 1}: {APP} is not serving before the kill")
            t0 = time.monotonic()
            replica.kill()  # SIGKILL, as `docker kill` sends
            failed = 0
            while (code := status(proxy, host)) != 200:
                failed += 1
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"kill {i + 1}: no 200 within 60 s (last: {code})")
                time.sleep(0.005)
            took = time.monotonic() - t0
            replica.reload()
            if replica.attrs["State"]["StartedAt"] == started:
                raise SystemExit(f"kill {i + 1}: a 200 came from the replica before it was restarted")
            times.append(took)
            print(f"kill {i + 1:2d}: {took:.3f} s to the first 200 ({failed} failed requests before)", flush=True)
    finally:
        subprocess.run([*lbsolo, "destroy", APP, "--images", "--yes"], env=env, capture_output=True)
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=30)
        client.close()
        shutil.rmtree(work, ignore_errors=True)
    worst, median, p90 = max(times), statistics.median(times), percentile(times, 0.9)
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores; {len(times)} kills of a healthy replica")
    print(f"kill -> first 200 through the proxy: worst {worst:.2f} s, median {median:.2f} s, p90 {p90:.2f} s")
    print(f"worst <= 2 s: {'yes' if worst <= 2.0 else 'NO'}")


if __name__ == "__main__":
    main()
