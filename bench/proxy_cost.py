"""The proxy's own CPU cost per request, without sockets: the protocol objects relay a keep-alive
GET and its response through hand-written transports, so nothing but lbsolo's code (and httptools)
runs. Prints microseconds per request; under callgrind, the instruction count per request is
the difference between two request counts, which is repeatable on a busy machine:

    .venv/bin/python bench/proxy_cost.py [--post | --post-split] [requests]
    bench/proxy_cost.py --callgrind [--post | --post-split]   (needs valgrind; instructions per request)

--post relays a POST with a small body arriving with its head (a form post); --post-split the
same POST with its body in a later read, so that the proxy holds it (request buffering) and
sends it on once whole.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lbsolo.proxy import ProxyServer, Route, Target

REQUEST = b"GET / HTTP/1.1\r\nHost: bench.lbsolo.localhost\r\n\r\n"
POST_HEAD = (
    b"POST /order HTTP/1.1\r\nHost: bench.lbsolo.localhost\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 16\r\n\r\n"
)
POST_BODY = b"item=42&amount=1"
MODES = {"get": (REQUEST,), "--post": (POST_HEAD + POST_BODY,), "--post-split": (POST_HEAD, POST_BODY)}
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 10:27:15 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n"
)


class Transport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def relay(requests: int, reads: tuple[bytes, ...] = (REQUEST,)) -> float:
    """Seconds for `requests` exchanges, access log and metrics on (as in the daemon)."""
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the run
    server = ProxyServer("127.0.0.1", 0, "lbsolo.localhost", access_log=sink.write)
    target = Target("127.0.0.1", 9)
    server.set_routes({"bench": Route("bench", "v1", (target,))})
    await server.start()
    client, to_client = server.downstream(), Transport()
    client.connection_made(to_client)  # type: ignore[arg-type]
    upstream, to_app = server.upstream(target), Transport()
    upstream.connection_made(to_app)  # type: ignore[arg-type]
    server.pool.put_idle(upstream)
    started = time.perf_counter()
    for _ in range(requests):
        for data in reads:
            client.data_received(data)
        upstream.data_received(RESPONSE)
    server.metrics()  # folds every finished exchange into the metrics and the access log
    took = time.perf_counter() - started
    assert to_client.writes == requests and to_app.writes >= requests, "a request was not relayed"
    await server.stop(0)
    return took


def callgrind(mode: str) -> None:
    def instructions(requests: int) -> int:
        argv = [sys.executable, __file__, *([mode] if mode != "get" else []), str(requests)]
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        return int(next(line for line in out.splitlines() if "Collected" in line).split()[-1])

    few, many = 500, 2500
    print(f"{mode}: {(instructions(many) - instructions(few)) // (many - few)} instructions per request")


if __name__ == "__main__":
    args = sys.argv[1:]
    mode = next((a for a in args if a in MODES), "get")
    if "--callgrind" in args:
        callgrind(mode)
    else:
        counts = [int(a) for a in args if a.isdigit()]
        n = counts[0] if counts else 100_000
        print(f"{mode}: {asyncio.run(relay(n, MODES[mode])) / n * 1e6:.2f} us per request ({n} requests)")
