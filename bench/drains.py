"""Log drain benchmark: lines/s a drain delivers to a loopback syslog receiver, and the daemon's
RSS while the drain's receiver is down. Target (issue 16): >= 20,000 lines/s from one app;
memory bounded when the receiver is down for 10 minutes.

1. In-process (`--inproc`, no Docker): one DrainWorker offered `--lines` messages at once, sent
   to an asyncio receiver that parses the octet counting: the drain's own ceiling.
2. With a daemon (default): an app whose `burst` process prints `--lines` lines as fast as it can;
   a syslog drain to a receiver in this process; lines/s from the first line received to the
   last (and how many arrived). Then the receiver goes away (connection refused) while the
   app's `steady` process prints `--rate` lines/s for `--down` seconds; the daemon's RSS is
   sampled every 5 s, with the drain's counters.

Usage: .venv/bin/python bench/drains.py [--inproc] [--lines 200000] [--down 120] [--rate 5000]
Needs a Docker engine and the seeded images (not with --inproc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = "bench-drain"

BURST = """import sys, time
n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    out.write(f"burst line {i} of {n} " + "x" * 40 + "\\n")
out.flush()
time.sleep(10**6)
"""
STEADY = """import sys, time
rate = int(sys.argv[1])
i = 0
while True:
    t = time.monotonic()
    for _ in range(rate // 10):
        i += 1
        print("steady line", i, "x" * 60)
    sys.stdout.flush()
    time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk(port: int, seconds: float) -> str:
    """wrk -t1 -c64 against the app through the daemon's proxy: its requests/s and latency line."""
    out = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{seconds:g}s", "--latency", "-H", f"Host: {APP}.lbsolo.localhost",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True,
    )  # fmt: skip
    rps = next((ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("Requests/sec")), "?")
    p99 = next((ln.split()[1] for ln in out.stdout.splitlines() if ln.strip().startswith("99%")), "?")
    errors = next((ln.strip() for ln in out.stdout.splitlines() if "Non-2xx" in ln or "Socket errors" in ln), "")
    return f"{rps} req/s, p99 {p99}{', ' + errors if errors else ''}"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Receiver:
    """A syslog receiver on loopback, in a thread: counts octet-counted frames containing `mark`."""

    def __init__(self, mark: bytes) -> None:
        self.mark = mark
        self.count = 0
        self.first = self.last = 0.0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(1 << 20):
                buf += data
                i = 0
                while (sp := buf.find(b" ", i)) >= 0:
                    end = sp + 1 + int(buf[i:sp])
                    if end > len(buf):
                        break
                    if self.mark in buf[sp + 1 : end]:
                        now = time.monotonic()
                        self.first = self.first or now
                        self.last = now
                        self.count += 1
                    i = end
                buf = buf[i:]

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread: nobody listens now
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # the drain's connection is reset: down, not slow


async def inproc(lines: int) -> None:
    from lbsolo.config import Settings
    from lbsolo.core_drains import DrainWorker
    from lbsolo.drains import Drain
    from lbsolo.drains_send import Spill

    got = 0
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal got
        buf = b""
        while data := await reader.read(1 << 20):
            buf += data
            i = 0
            while (sp := buf.find(b" ", i)) >= 0:
                end = sp + 1 + int(buf[i:sp])
                if end > len(buf):
                    break
                got += 1
                i = end
            buf = buf[i:]
            if got >= lines:
                done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory() as home:
        s = Settings(home=Path(home), drains_buffer_lines=lines + 1, drains_buffer_bytes=1 << 30)
        drain = Drain("bench", "b1", f"syslog://127.0.0.1:{port}", "d.bench")
        w = DrainWorker(drain, s, lambda: None, Spill(Path(home) / "spill", 0))
        w.start()
        t0 = time.perf_counter()
        for i in range(lines):
            w.offer(time.time(), "web.a1b2c3", f"GET /item/{i} HTTP/1.1 200 - 0.001 s")
            if i % 1000 == 0:
                await asyncio.sleep(0)
        offered = time.perf_counter() - t0
        await asyncio.wait_for(done.wait(), 120)
        took = time.perf_counter() - t0
        await w.stop(keep=False)
    server.close()
    print(f"in-process: {lines} lines offered in {offered:.2f} s ({offered / lines * 1e6:.1f} us each)")
    print(f"in-process: {lines} lines delivered in {took:.2f} s: {lines / took:,.0f} lines/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inproc", action="store_true", help="only the drain, in this process (no Docker)")
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--down", type=float, default=120.0, help="seconds the receiver is down")
    ap.add_argument("--rate", type=int, default=5000, help="lines/s the app prints while the receiver is down")
    ap.add_argument(
        "--wrk", type=float, default=0.0, help="seconds of wrk -c64 through the proxy, idle and in the burst"
    )
    ap.add_argument(
        "--no-drain", action="store_true", help="the burst without a drain: the daemon's RSS, for comparison"
    )
    args = ap.parse_args()
    if args.inproc:
        asyncio.run(inproc(args.lines))
        return

    work = Path(tempfile.mkdtemp(prefix="lbsolo-bench-drains-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBSOLO_")}
    env.update(
        LBSOLO_HOME=str(work / "home"), LBSOLO_API_PORT=str(free_port()), LBSOLO_PROXY_PORT=str(free_port()),
        LBSOLO_DNS_PORT=str(free_port()), LBSOLO_DRAINS_BACKOFF_MAX="5",
    )  # fmt: skip
    api = f"http://127.0.0.1:{env['LBSOLO_API_PORT']}"
    lbsolo = [sys.executable, "-m", "lbsolo"]
    src = work / "src"
    shutil.copytree(ROOT / "examples" / "hello", src)
    (src / "burst.py").write_text(BURST)
    (src / "steady.py").write_text(STEADY)
    (src / "Procfile").write_text(
        f"web: python app.py\nburst: python burst.py {args.lines}\nsteady: python -u steady.py {args.rate}\n"
    )
    docker_file = (src / "Dockerfile").read_text().replace("COPY app.py .", "COPY app.py burst.py steady.py ./")
    (src / "Dockerfile").write_text(docker_file)
    daemon = subprocess.Popen([*lbsolo, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rx = Receiver(b"burst line")

    def cli(*a: str) -> str:
        out = subprocess.run([*lbsolo, *a], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"lbsolo {' '.join(a)}: {out.stdout}{out.stderr}")
        return out.stdout

    def drain() -> dict:
        token = (work / "home" / "token").read_text().strip()
        req = urllib.request.Request(f"{api}/api/apps/{APP}/drains", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())[0]

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{api}/healthz", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the daemon did not start") from None
                time.sleep(0.1)
        cli("apps:create", APP)
        if not args.no_drain:
            cli("drains:add", APP, f"syslog://127.0.0.1:{rx.port}")
        cli("deploy", str(src), "--app", APP)
        idle = rss_mib(daemon.pid)
        if args.wrk:
            print(f"proxy before the burst: {wrk(int(env['LBSOLO_PROXY_PORT']), args.wrk)}", flush=True)
        cli("scale", APP, "burst=1")
        if args.wrk:
            print(f"proxy during the burst: {wrk(int(env['LBSOLO_PROXY_PORT']), args.wrk)}", flush=True)
        if args.no_drain:
            time.sleep(20)
            print(
                f"no drain: daemon RSS {idle:.1f} MiB before the burst of {args.lines} lines, "
                f"{rss_mib(daemon.pid):.1f} after"
            )
            return
        deadline = time.monotonic() + 300
        seen, still = -1, time.monotonic()
        while rx.count < args.lines and time.monotonic() < deadline:
            if rx.count != seen:
                seen, still = rx.count, time.monotonic()
            elif time.monotonic() - still > 15:
                break  # nothing more for 15 s: some were lost
            time.sleep(0.2)
        took = max(rx.last - rx.first, 1e-9)
        d = drain()
        print(f"machine: {os.uname().machine}, {os.cpu_count()} cores; daemon idle RSS {idle:.1f} MiB")
        if args.wrk:
            print(f"proxy after the burst: {wrk(int(env['LBSOLO_PROXY_PORT']), args.wrk)}", flush=True)
        print(
            f"burst: {rx.count} of {args.lines} lines received in {took:.2f} s: {rx.count / took:,.0f} lines/s "
            f"(drain: delivered {d['delivered']}, dropped {d['dropped']}); daemon RSS {rss_mib(daemon.pid):.1f} MiB"
        )
        cli("scale", APP, "burst=0")

        rx.close()  # the receiver is down: connection refused from now on
        cli("scale", APP, "steady=1")
        print(cli("ps", APP))
        t0 = time.monotonic()
        samples = []
        while time.monotonic() - t0 < args.down:
            time.sleep(5)
            samples.append(rss_mib(daemon.pid))
            d = drain()
            print(
                f"down {time.monotonic() - t0:5.0f} s: RSS {samples[-1]:.1f} MiB; buffered {d['buffered']}, "
                f"spilled {d['spilled']}, dropped {d['dropped']}, failed attempts {d['failed_attempts']}, "
                f"delivered {d['delivered']}",
                flush=True,
            )
        print(
            f"receiver down {args.down:.0f} s at {args.rate} lines/s: RSS min {min(samples):.1f}, "
            f"max {max(samples):.1f}, last {samples[-1]:.1f} MiB (idle {idle:.1f})"
        )
    finally:
        subprocess.run([*lbsolo, "destroy", APP, "--images", "--yes"], env=env, capture_output=True)
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
