"""Scale benchmark: one daemon with N small apps, each deployed and serving (examples/static).

At N = 10, 50 and 200 (or the counts given) it reports:
- the dashboard's time to first byte (GET /ui/ with a session; target at 200 apps <= 0.3 s),
- a deploy's time (a new release of one more app; target at 200 apps <= 1.1x its time at 10),
- `lbsolo apps` wall time (target <= 0.3 s),
- the daemon's threads (target: independent of N), RSS and CPU while idle,
- whether every app answers 200 through the proxy.

Usage: .venv/bin/python bench/scale.py [N ...]   (default: 10 50 200; needs Docker and the seeded
images; every app is removed afterwards, with the daemon's home). TIMELINE=1 prints, at each N, the
fastest of the three timed deploys' output lines with the time each came.

       .venv/bin/python bench/scale.py --listing [N ...]   (default: 200) measures only what
`lbsolo apps` costs, in a minute instead of several: N apps created but not deployed, each with
one image carrying its labels (what /api/disk counts; a deployed app's listing differs only in its
status and replica count, read from memory), then `lbsolo apps` beside `lbsolo version` (the
CLI's bare start, the anchor) and the two API calls it makes, each timed on its own.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "examples" / "static"
PROBE = "probe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="lbsolo-bench-scale-"))
        self.api_port, self.proxy_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LBSOLO_")}
        self.env.update(
            LBSOLO_HOME=str(self.work / "home"),
            LBSOLO_API_PORT=str(self.api_port),
            LBSOLO_PROXY_PORT=str(self.proxy_port),
            LBSOLO_DNS_PORT=str(free_port()),
        )
        self.lbsolo = [sys.executable, "-m", "lbsolo"]
        self.daemon = subprocess.Popen(
            [*self.lbsolo, "up"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while not self._healthy():
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                raise SystemExit("the daemon did not start")
            time.sleep(0.05)
        self.token = (self.work / "home" / "token").read_text().strip()
        self.cookie = self._login()
        self.apps: list[str] = []

    def _healthy(self) -> bool:
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=1)
            c.request("GET", "/healthz")
            return c.getresponse().status == 200
        except OSError:
            return False

    def _login(self) -> str:
        c = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=10)
        body = urllib.parse.urlencode({"token": self.token, "next": "/ui/"})
        c.request("POST", "/ui/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        r.read()
        return r.getheader("set-cookie", "").split(";", 1)[0]

    def api(self, method: str, path: str, body: dict[str, object] | None = None) -> float:
        """One API call with the admin token, timed to its last byte; raises unless it succeeded."""
        c = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=60)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        t0 = time.monotonic()
        c.request(method, path, json.dumps(body) if body is not None else None, headers)
        r = c.getresponse()
        r.read()
        took = time.monotonic() - t0
        if r.status >= 300:
            raise SystemExit(f"{method} {path} answered {r.status}")
        return took

    def cli(self, *args: str) -> float:
        t0 = time.monotonic()
        out = subprocess.run([*self.lbsolo, *args], env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"lbsolo {' '.join(args)} failed: {out.stdout}{out.stderr}")
        return time.monotonic() - t0

    def deploy_timed(self, app: str) -> tuple[float, list[tuple[float, str]]]:
        """A deploy's wall time, and each line of its output with when it came (where the time goes)."""
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*self.lbsolo, "deploy", str(SOURCE), "--app", app], env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        lines = [(time.monotonic() - t0, line.rstrip()) for line in proc.stdout]
        if proc.wait() != 0:
            raise SystemExit(f"lbsolo deploy {app} failed: {lines}")
        return time.monotonic() - t0, lines

    def add_app(self, name: str) -> None:
        self.cli("apps:create", name)
        self.cli("deploy", str(SOURCE), "--app", name)

    def grow_to(self, n: int) -> None:
        names = [f"app{i:03d}" for i in range(len(self.apps), n)]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(self.add_app, names))
        self.apps.extend(names)

    def dashboard_ttfb(self) -> float:
        c = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=30)
        t0 = time.monotonic()
        c.request("GET", "/ui/", headers={"Cookie": self.cookie})
        r = c.getresponse()
        r.read(1)
        took = time.monotonic() - t0
        r.read()
        if r.status != 200:
            raise SystemExit(f"the dashboard answered {r.status}")
        return took

    def served(self) -> int:
        ok = 0
        for name in self.apps:
            c = http.client.HTTPConnection("127.0.0.1", self.proxy_port, timeout=5)
            c.request("GET", "/", headers={"Host": f"{name}.lbsolo.localhost"})
            r = c.getresponse()
            r.read()
            ok += r.status == 200
        return ok

    def measure(self, n: int) -> dict[str, Any]:
        self.grow_to(n)
        time.sleep(3)  # a reconcile pass or two
        pid = self.daemon.pid
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(5)
        idle_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
        status = proc_status(pid)
        dashboard = statistics.median(self.dashboard_ttfb() for _ in range(5))
        apps_cli = statistics.median(self.cli("apps") for _ in range(3))
        if PROBE not in self.apps:
            self.cli("apps:create", PROBE)
            self.apps.append(PROBE)
            self.cli("deploy", str(SOURCE), "--app", PROBE)
        timed = [self.deploy_timed(PROBE) for _ in range(3)]
        deploy = statistics.median(t for t, _ in timed)
        return {
            "timeline": min(timed)[1],
            "apps": n,
            "served": self.served(),
            "dashboard": dashboard,
            "deploy": deploy,
            "apps_cli": apps_cli,
            "threads": int(status["Threads"]),
            "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
            "idle_cpu": idle_cpu,
        }

    def listing(self, n: int) -> dict[str, float]:
        """`lbsolo apps` with n apps created (not deployed), each with one labelled image."""
        from lbsolo.config import Settings
        from lbsolo.daemon import instance_id

        instance = instance_id(Settings.load(home=self.work / "home"))
        names = [f"app{i:03d}" for i in range(len(self.apps), n)]

        def add(name: str) -> None:
            self.api("POST", "/api/apps", {"name": name})
            self.apps.append(name)
            labels = {"lbsolo.managed": "true", "lbsolo.instance": instance, "lbsolo.app": name}
            command = ["docker", "build", "-q", "-t", f"lbsolo/{name}:bench"]
            command += [f"--label={k}={v}" for k, v in labels.items()] + ["-"]
            subprocess.run(command, input=b"FROM busybox:latest\n", check=True, capture_output=True)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(add, names))
        return {
            "apps": n,
            "version_cli": statistics.median(self.cli("version") for _ in range(5)),
            "apps_cli": statistics.median(self.cli("apps") for _ in range(5)),
            "api_apps": statistics.median(self.api("GET", "/api/apps") for _ in range(5)),
            "api_disk": statistics.median(self.api("GET", "/api/disk") for _ in range(5)),
        }

    def close(self) -> None:
        def destroy(name: str) -> None:
            try:
                self.api("DELETE", f"/api/apps/{name}?images=true")
            except (OSError, SystemExit) as e:
                print(f"could not destroy {name}: {e}", file=sys.stderr)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(destroy, self.apps))
        self.daemon.terminate()
        self.daemon.wait(timeout=30)
        shutil.rmtree(self.work, ignore_errors=True)


def main_listing(counts: list[int]) -> None:
    bench = Bench()
    try:
        for n in counts:
            row = bench.listing(n)
            print(
                f"N={n:4d}: `lbsolo apps` {row['apps_cli']:.3f} s  (`lbsolo version` {row['version_cli']:.3f} s; "
                f"GET /api/apps {row['api_apps'] * 1000:.1f} ms, GET /api/disk {row['api_disk'] * 1000:.1f} ms)",
                flush=True,
            )
            if os.environ.get("TIMELINE"):  # the fastest deploy's output, each line with its time
                for at, line in row["timeline"]:
                    print(f"    {at:6.2f} s  {line[:100]}")
    finally:
        bench.close()
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores")


def main() -> None:
    if sys.argv[1:2] == ["--listing"]:
        return main_listing([int(a) for a in sys.argv[2:]] or [200])
    counts = [int(a) for a in sys.argv[1:]] or [10, 50, 200]
    bench = Bench()
    rows = []
    try:
        for n in counts:
            row = bench.measure(n)
            rows.append(row)
            print(
                f"N={n:4d}: served {row['served']}/{len(bench.apps)}  dashboard TTFB {row['dashboard']:.3f} s  "
                f"deploy {row['deploy']:.2f} s  `lbsolo apps` {row['apps_cli']:.2f} s  threads {row['threads']}  "
                f"RSS {row['rss_mb']:.0f} MB  idle CPU {row['idle_cpu']:.1f}%",
                flush=True,
            )
            if os.environ.get("TIMELINE"):  # the fastest deploy's output, each line with its time
                for at, line in row["timeline"]:
                    print(f"    {at:6.2f} s  {line[:100]}")
    finally:
        bench.close()
    first, last = rows[0], rows[-1]
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores")
    print(f"dashboard at N={last['apps']}: {last['dashboard']:.3f} s (target <= 0.3 s)")
    ratio = last["deploy"] / first["deploy"]
    print(f"deploy at N={last['apps']} / at N={first['apps']}: {ratio:.2f}x (target <= 1.1x)")
    print(f"`lbsolo apps` at N={last['apps']}: {last['apps_cli']:.2f} s (target <= 0.3 s)")
    print(f"threads: {first['threads']} at N={first['apps']}, {last['threads']} at N={last['apps']} (target: the same)")


if __name__ == "__main__":
    main()
