"""Slow-client benchmark: a normal client's latency while 1,000 connections trickle request bodies.

One run, on this machine, side by side:
- the app: an HTTP/1.1 server with 4 worker threads (one connection each at a time, as gunicorn's
  gthread with 4 threads), in its own process;
- lbsolo's proxy (uvloop, as the daemon runs it) and, when Debian's nginx is installed, nginx
  (request buffering on, its default), both proxying that app;
- per proxy: 1,000 connections from 127.0.0.2-5 each sending a 1 MB body's head and two bytes a
  second (a separate process), and meanwhile a normal client's sequential small POSTs.
Prints the normal client's p50/p99 (target, issue 11: p99 < 100 ms), errors, the proxy's RSS
before and during, and lbsolo/nginx ratios. Also the same with buffering off, to show what it
protects against (expect every normal request to time out there).

Usage: .venv/bin/python bench/slow_clients.py [seconds per run, default 10]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SLOW = 1000
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
HOST = "shop.lbsolo.localhost"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the app (run as `slow_clients.py --app PORT`) ---------------------------------------------


def serve_app(port: int, workers: int = 4) -> None:
    sock = socket.create_server(("127.0.0.1", port), backlog=4096)

    def serve(conn: socket.socket) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(data) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            data = data[length:]
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def work() -> None:
        while True:
            conn, _ = sock.accept()
            with conn, contextlib.suppress(OSError):
                conn.settimeout(300)
                serve(conn)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    threading.Event().wait()


# -- the slow clients (run as `slow_clients.py --slow PORT`) ------------------------------------


async def slow_clients(port: int) -> None:
    writers = []
    for i in range(SLOW):
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(SOURCES[i % len(SOURCES)], 0))
            w.write(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000000\r\n\r\nstart".encode())
            writers.append(w)
    print(len(writers), flush=True)
    while True:
        for w in writers:
            if not w.is_closing():
                w.write(b"..")
        await asyncio.sleep(1.0)


# -- the proxies -------------------------------------------------------------------------------

LBSOLO_PROXY = textwrap.dedent(
    """
    import asyncio, os, sys
    import uvloop
    from lbsolo.proxy import ProxyServer, Route, Target

    async def main() -> None:
        port, app, buffering = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "on"
        sink = open(os.devnull, "w")
        proxy = ProxyServer("127.0.0.1", port, "lbsolo.localhost", access_log=sink.write)
        route = Route("shop", "v1", (Target("127.0.0.1", app),), request_buffering=buffering)
        proxy.set_routes({"shop": route})
        await proxy.start()
        await asyncio.Event().wait()

    uvloop.run(main())
    """
)


def nginx_conf(tmp: Path, port: int, app: int, buffering: bool) -> Path:
    conf = tmp / f"nginx-{port}.conf"
    conf.write_text(
        f"worker_processes 1; daemon off; pid {tmp}/nginx-{port}.pid; error_log {tmp}/nginx-{port}.err;\n"
        "events { worker_connections 8192; }\n"
        # keepalive_requests: nginx closes a keep-alive connection after 1,000 requests by default,
        # which the normal client would count as errors.
        f"http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {tmp}/body-{port};\n"
        f"  upstream app {{ server 127.0.0.1:{app}; }}\n"
        f"  server {{ listen 127.0.0.1:{port}; client_max_body_size 10m;\n"
        f"    proxy_request_buffering {'on' if buffering else 'off'};\n"
        '    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }\n'
    )
    return conf


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def normal_client(port: int, seconds: float) -> tuple[list[float], int]:
    """Sequential small POSTs on one keep-alive connection for `seconds`; latencies and errors."""
    took: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    reader = writer = None
    while time.monotonic() < end:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            writer.write(f"POST /order HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nq=1".encode())
            async with asyncio.timeout(2.0):
                head = await reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
                await reader.readexactly(2)  # type: ignore[union-attr]
            if not head.startswith(b"HTTP/1.1 200"):
                raise OSError(head[:40])
            took.append(time.monotonic() - started)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            errors += 1
            if writer is not None:
                writer.transport.abort()
            reader = writer = None
    if writer is not None:
        writer.close()
    return took, errors


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


async def measure(name: str, port: int, pid: int, seconds: float) -> dict[str, float]:
    await wait_port(port)
    base, _ = await normal_client(port, 2.0)
    before = rss_mb(pid)
    slow = subprocess.Popen([PY, __file__, "--slow", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        opened = int(slow.stdout.readline() or 0)  # type: ignore[union-attr]
        await asyncio.sleep(1.0)
        took, errors = await normal_client(port, seconds)
        during = rss_mb(pid)
    finally:
        slow.send_signal(signal.SIGKILL)
        slow.wait()
    row = {
        "alone_p99": pct(base, 0.99),
        "p50": pct(took, 0.50),
        "p99": pct(took, 0.99),
        "requests": len(took),
        "errors": errors,
        "slow": opened,
        "rss_before": before,
        "rss_during": during,
    }
    print(
        f"  {name:<22} slow={opened:<5} normal: n={len(took):<6} errors={errors:<4} "
        f"p50={row['p50']:.2f} ms p99={row['p99']:.2f} ms (alone p99 {row['alone_p99']:.2f} ms)  "
        f"RSS {before:.1f} -> {during:.1f} MB",
        flush=True,
    )
    return row


async def main(seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="lbsolo-slow-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        app = free_port()
        procs.append(subprocess.Popen([PY, __file__, "--app", str(app)]))
        await wait_port(app)
        cpus = os.cpu_count()
        print(f"slow-client benchmark: {SLOW} slow bodies vs a 4-worker app, {seconds:.0f} s per run, {cpus} CPUs")
        results: dict[str, dict[str, float]] = {}
        nginx = shutil.which("nginx")
        for buffering in (True, False):
            mode = "on" if buffering else "off"
            port = free_port()
            lb = subprocess.Popen([PY, "-c", LBSOLO_PROXY, str(port), str(app), mode], cwd=ROOT)
            procs.append(lb)
            results[f"lbsolo-{mode}"] = await measure(f"lbsolo buffering {mode}", port, lb.pid, seconds)
            lb.kill()
            if nginx:
                port = free_port()
                ng = subprocess.Popen([nginx, "-c", str(nginx_conf(tmp, port, app, buffering)), "-e", "/dev/null"])
                procs.append(ng)
                results[f"nginx-{mode}"] = await measure(f"nginx buffering {mode}", port, ng.pid, seconds)
                ng.kill()
            if not buffering:
                break
        lb_on = results["lbsolo-on"]
        verdict = "PASS" if lb_on["p99"] < 100 and lb_on["errors"] == 0 else "FAIL"
        print(f"lbsolo buffered p99 {lb_on['p99']:.2f} ms (target < 100 ms, no errors): {verdict}")
        if "nginx-on" in results:
            ng_on = results["nginx-on"]
            print(
                f"lbsolo/nginx buffered: p99 {lb_on['p99'] / ng_on['p99']:.2f}x, "
                f"requests {lb_on['requests'] / max(1, ng_on['requests']):.2f}x"
            )
        else:
            print("nginx not installed (apt-get install nginx-light): no anchor in this run")
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--app"]:
        serve_app(int(sys.argv[2]))
    elif sys.argv[1:2] == ["--slow"]:
        asyncio.run(slow_clients(int(sys.argv[2])))
    else:
        asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0))
