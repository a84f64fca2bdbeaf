"""A 1 GB upload streams through the proxy with bounded memory (issue #5: "a 1 GB upload passes").

The proxy runs alone in a subprocess, so its resident memory can be read from /proc; the
upstream (a thread counting body bytes) and the client (sending one reused block) live in the
test process. Real sockets on loopback; no Docker. It moves 1.5 GB (1 GB with Content-Length,
512 MB chunked), so it lives in the integration suite, out of the fast unit loop.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GB = 1 << 30
BLOCK = 1 << 20
MAX_GROWTH = 64 << 20  # bytes of resident memory the proxy may gain while streaming

PROXY = """
import asyncio, sys
from lbsolo.proxy import ProxyServer, Route, Target

async def main(upstream):
    proxy = ProxyServer(port=0, domain="lbsolo.localhost")
    proxy.set_routes({"sink": Route(app="sink", targets=(Target("127.0.0.1", upstream),))})
    await proxy.start()
    print(proxy.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes stdin
    await proxy.stop(1)

try:
    import uvloop  # what the daemon runs on
    run = uvloop.run
except ImportError:
    run = asyncio.run
run(main(int(sys.argv[1])))
"""

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")


class CountingUpstream:
    """An HTTP/1.1 server that reads each request body (Content-Length or chunked) and answers its size."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, name="counting-upstream", daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = bytearray(BLOCK)
        with conn, conn.makefile("rb", buffering=BLOCK) as f:
            while True:
                headers = {}
                if not (line := f.readline()):
                    return
                while (line := f.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip().lower()
                count = 0
                if headers.get("transfer-encoding") == "chunked":
                    while size := int(f.readline().split(b";")[0], 16):
                        count += self._skip(f, buf, size)
                        f.readline()
                    while f.readline() not in (b"\r\n", b""):
                        pass  # trailers
                else:
                    count = self._skip(f, buf, int(headers.get("content-length", "0")))
                body = str(count).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    @staticmethod
    def _skip(f, buf: bytearray, size: int) -> int:
        view, left = memoryview(buf), size
        while left:
            n = f.readinto(view[: min(left, BLOCK)])
            if not n:
                raise ConnectionError("upstream: body cut short")
            left -= n
        return size


@contextlib.contextmanager
def proxy_process(upstream: int) -> Iterator[tuple[int, int]]:
    """(pid, port) of a ProxyServer routing sink.lbsolo.localhost to `upstream`, alone in a process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PROXY, str(upstream)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield proc.pid, port
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def upload(port: int, size: int, chunked: bool) -> bytes:
    """Send `size` body bytes (one block, sent again and again) and return the response body."""
    block = b"x" * BLOCK
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: sink.lbsolo.localhost\r\n{framing}\r\n\r\n".encode())
        left = size
        while left:
            n = min(left, BLOCK)
            piece = block if n == BLOCK else block[:n]
            s.sendall(b"%x\r\n%b\r\n" % (n, piece) if chunked else piece)
            left -= n
        if chunked:
            s.sendall(b"0\r\n\r\n")
        with s.makefile("rb") as f:
            status = f.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            return f.read(length)


def test_a_1gb_upload_streams_through_the_proxy_with_bounded_memory():
    upstream = CountingUpstream()
    try:
        with proxy_process(upstream.port) as (pid, port):
            assert upload(port, 1000, chunked=False) == b"1000"  # warm up both framings and the pool
            assert upload(port, 1000, chunked=True) == b"1000"
            before = memory(pid)["VmRSS"]

            assert upload(port, GB, chunked=False) == str(GB).encode()
            after_length = memory(pid)
            assert upload(port, GB // 2, chunked=True) == str(GB // 2).encode()
            after_chunked = memory(pid)
    finally:
        upstream.close()
    growth = after_length["VmHWM"] - before
    print(f"proxy RSS {before >> 20} MB before; peak +{growth >> 20} MB (1 GB, Content-Length)", end="")
    assert growth < MAX_GROWTH, f"the proxy's peak RSS grew by {growth >> 20} MB streaming 1 GB (Content-Length)"
    growth = after_chunked["VmHWM"] - before
    print(f", +{growth >> 20} MB (512 MB chunked)")
    assert growth < MAX_GROWTH, f"the proxy's peak RSS grew by {growth >> 20} MB streaming 512 MB chunked"
