"""Log drains on the real engine, to real receivers on loopback that parse what they get.

- examples/hello deployed with three drains (syslog over TCP, syslog over TLS, HTTPS logplex),
  the TLS receivers' certificates from a CA of the test's own that the daemon is told to trust:
  its build output and its request log lines arrive, framed (RFC 6587 octet counting), as
  RFC 5424 messages naming the app and the replica; the logplex POSTs carry their headers.
- Bad input: a bad scheme, an unknown app, a duplicate, a host that does not resolve: refused,
  nothing added. A receiver answering 503 shows the drain failing with the answer, then the
  lines arrive once it answers 200. Drains survive a daemon restart; listings show no secret.
- A receiver that accepts and then never reads while the app logs thousands of lines a second:
  the app's requests through the proxy stay fast, the drain's memory stays bounded (dropped
  lines counted), the daemon's RSS does not grow with the backlog.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from lbsolo.proxy_tls import LocalCA

from .conftest import EXAMPLES, running_daemon

pytestmark = pytest.mark.docker

# <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG (RFC 5424), parsed independently of lbsolo.
RFC5424 = re.compile(
    r"^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    r"(\S+) (\S+) (\S+) (\S+) (-|\[.*?\]) ?(.*)$",
    re.DOTALL,
)


def parse_frames(buf: bytearray) -> list[str]:
    """Take whole octet-counted frames (`LEN SP MSG`) off the front of `buf`."""
    out = []
    while True:
        sp = buf.find(b" ")
        if sp < 0:
            return out
        length = buf[:sp]
        assert length.isdigit() and not length.startswith(b"0"), f"not octet-counted: {bytes(buf[:40])!r}"
        end = sp + 1 + int(length)
        if len(buf) < end:
            return out
        out.append(buf[sp + 1 : end].decode())
        del buf[:end]


@dataclass
class Received:
    messages: list[tuple[str, ...]] = field(default_factory=list)  # RFC 5424 fields of each message
    posts: list[dict[str, str]] = field(default_factory=list)  # headers of each logplex POST
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, raw: list[str]) -> None:
        for msg in raw:
            m = RFC5424.match(msg)
            assert m is not None, f"not RFC 5424: {msg!r}"
            with self.lock:
                self.messages.append(m.groups())

    def lines(self, app: str, proc_prefix: str = "") -> list[str]:
        with self.lock:
            return [m[7] for m in self.messages if m[3] == app and m[4].startswith(proc_prefix)]


@contextlib.contextmanager
def syslog_receiver(tls: ssl.SSLContext | None = None, stall: bool = False) -> Iterator[tuple[int, Received]]:
    """A syslog receiver over TCP (TLS with `tls`): parses octet-counted frames; or, with
    `stall`, accepts and then never reads."""
    got = Received()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        buf = bytearray()
        with contextlib.suppress(OSError):
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
            held.append(conn)
            if stall:
                stop.wait()
                return
            conn.settimeout(0.5)
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                buf += data
                got.add(parse_frames(buf))

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if stall:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], got
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in held:
            with contextlib.suppress(OSError):
                conn.close()


@contextlib.contextmanager
def logplex_receiver(tls: ssl.SSLContext) -> Iterator[tuple[int, Received, dict[str, int]]]:
    """An HTTPS receiver of logplex POSTs; answers `answer["status"]` (204 unless changed)."""
    got = Received()
    answer = {"status": 204}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = bytearray(self.rfile.read(int(self.headers["Content-Length"])))
            status = answer["status"]
            if status < 300:
                msgs = parse_frames(body)
                assert not body, "a POST's body ends with a whole frame"
                assert int(self.headers["Logplex-Msg-Count"]) == len(msgs)
                with got.lock:
                    got.posts.append(dict(self.headers))
                got.add(msgs)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], got, answer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def receiver_tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate for 127.0.0.1 from a CA of the test's own, and that CA's file."""
    ca = LocalCA(tmp_path / "ca", "drains test CA").load_or_create()
    chain, key = ca.issue("127.0.0.1", "localhost")
    (tmp_path / "rx.pem").write_bytes(chain)
    (tmp_path / "rx-key.pem").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "rx.pem", tmp_path / "rx-key.pem")
    return ctx, ca.cert_path


def ok(out):
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {what} in {timeout:.0f}s")


def drains(daemon, app: str) -> list[dict]:
    r = daemon.api_get(f"/api/apps/{app}/drains")
    assert r.status_code == 200, r.text
    return r.json()


def test_drains_deliver_an_apps_logs_to_syslog_tls_and_https_receivers(docker_client, tmp_path):
    tls, ca_file = receiver_tls(tmp_path)
    env = {"LBSOLO_DRAINS_CA_BUNDLE": str(ca_file), "LBSOLO_DRAINS_BACKOFF_MAX": "1", "LBSOLO_DRAINS_LINGER": "0.1"}
    with (
        running_daemon(docker_client, tmp_path / "home", env) as daemon,
        syslog_receiver() as (plain_port, plain),
        syslog_receiver(tls) as (tls_port, secure),
        logplex_receiver(tls) as (https_port, https, _),
        logplex_receiver(tls) as (flaky_port, flaky, flaky_answer),
    ):
        ok(daemon.cli("apps:create", "dr"))
        secret_url = f"https://127.0.0.1:{https_port}/logs?token=sekrit-value"
        for url in (f"syslog://127.0.0.1:{plain_port}", f"syslog+tls://127.0.0.1:{tls_port}", secret_url):
            assert "Added drain" in ok(daemon.cli("drains:add", "dr", url)).stdout

        # Bad input: refused with a reason, nothing added.
        for args, message in [
            (("dr", "ftp://127.0.0.1:21"), "unsupported drain scheme 'ftp'"),
            (("dr", "syslog+tls://127.0.0.1"), "needs a port"),
            (("nosuchapp", f"syslog://127.0.0.1:{plain_port}"), "unknown app 'nosuchapp'"),
            (("dr", f"syslog://127.0.0.1:{plain_port}"), "already drains to"),
            (("dr", "syslog+tls://logs.nonexistent.invalid:6514"), "does not resolve"),
            (("dr", "http://logs.example.com/in"), "clear text"),
        ]:
            out = daemon.cli("drains:add", *args)
            assert out.returncode != 0 and message in out.stdout + out.stderr, (args, out.stdout + out.stderr)
        assert len(drains(daemon, "dr")) == 3

        ok(daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", "dr"))
        for i in range(5):
            assert daemon.get("dr", "/").status_code == 200
            assert daemon.get("dr", f"/drained-{i}").status_code == 404

        # Each receiver gets the build output and each request's log line, from the web replica.
        for got in (plain, secure, https):
            wait_for(lambda g=got: sum("/drained-" in x for x in g.lines("dr", "web.")) == 5, 30, "request lines")
            wait_for(lambda g=got: any("Building dr" in x for x in g.lines("dr", "build")), 10, "build lines")
            with got.lock:
                sample = next(m for m in got.messages if "/drained-0" in m[7])
            assert sample[0] == "14" and re.fullmatch(r"web\.[0-9a-f]{6}", sample[4])
            assert re.fullmatch(r"d\.[0-9a-f-]{36}", sample[2])  # the drain's token as HOSTNAME
        with https.lock:
            headers = https.posts[0]
        assert headers["Content-Type"] == "application/logplex-1"
        assert re.fullmatch(r"d\.[0-9a-f-]{36}", headers["Logplex-Drain-Token"])
        assert headers["Logplex-Drain-Token"] == next(m[2] for m in https.messages)

        listed = drains(daemon, "dr")
        assert all(d["state"] == "ok" and d["delivered"] >= 6 and d["dropped"] == 0 for d in listed)
        assert {d["kind"] for d in listed} == {"syslog", "syslog+tls", "https"}
        table = ok(daemon.cli("drains", "dr")).stdout
        assert "sekrit" not in table and "sekrit" not in str(listed) and "token=…" in table

        # A receiver that answers 503: shown failing with its answer, delivered once it answers 204.
        flaky_answer["status"] = 503
        ok(daemon.cli("drains:add", "dr", f"https://127.0.0.1:{flaky_port}/in"))
        daemon.get("dr", "/while-503")
        failing = wait_for(lambda: [d for d in drains(daemon, "dr") if d["state"] == "failing"], 20, "a failing drain")
        assert "answered 503" in failing[0]["last_error"] and failing[0]["failed_attempts"] >= 1
        assert "answered 503" in ok(daemon.cli("drains", "dr")).stdout
        flaky_answer["status"] = 204
        wait_for(lambda: any("/while-503" in x for x in flaky.lines("dr", "web.")), 20, "lines after the 503s")

        # The drains survive a restart, and deliver again.
        daemon.stop()
        daemon.start()
        assert len(drains(daemon, "dr")) == 4
        daemon.get("dr", "/after-restart")
        for got in (plain, secure, https, flaky):
            wait_for(lambda g=got: any("/after-restart" in x for x in g.lines("dr", "web.")), 30, "lines after restart")

        first = drains(daemon, "dr")[0]["id"]
        assert f"Removed drain {first}" in ok(daemon.cli("drains:remove", "dr", first)).stdout
        assert first not in [d["id"] for d in drains(daemon, "dr")]
        out = daemon.cli("drains:remove", "dr", "ffffffff")
        assert out.returncode != 0 and "has no drain" in out.stdout + out.stderr


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


SPAM = """import time

n = 0
while True:  # about 5,000 lines (0.5 MB) a second
    for _ in range(100):
        n += 1
        print("spam line", n, "x" * 80)
    time.sleep(0.02)
"""


def test_a_stalled_receiver_neither_slows_the_app_nor_grows_the_daemon(docker_client, tmp_path):
    env = {
        "LBSOLO_DRAINS_BUFFER_BYTES": str(1 << 20),
        "LBSOLO_DRAINS_SPILL_BYTES": str(2 << 20),
        "LBSOLO_DRAINS_TIMEOUT": "2",
        "LBSOLO_DRAINS_BACKOFF_MAX": "2",
    }
    src = tmp_path / "src"
    shutil.copytree(EXAMPLES / "hello", src)
    # A second process that logs ~5,000 lines (0.5 MB) a second.
    (src / "spam.py").write_text(SPAM)
    (src / "Procfile").write_text("web: python app.py\nspam: python -u spam.py\n")
    dockerfile = (src / "Dockerfile").read_text()
    (src / "Dockerfile").write_text(dockerfile.replace("COPY app.py .", "COPY app.py spam.py ./"))
    with running_daemon(docker_client, tmp_path / "home", env) as daemon, syslog_receiver(stall=True) as (port, _):
        ok(daemon.cli("apps:create", "st"))
        ok(daemon.cli("deploy", str(src), "--app", "st"))
        ok(daemon.cli("scale", "st", "spam=1"))

        def timed(n: int) -> list[float]:
            out = []
            host = {"Host": f"st.lbsolo.localhost:{daemon.proxy_port}"}
            with httpx.Client(timeout=10) as client:
                for _ in range(n):
                    t = time.perf_counter()
                    r = client.get(f"http://127.0.0.1:{daemon.proxy_port}/", headers=host)
                    out.append(time.perf_counter() - t)
                    assert r.status_code == 200
            return sorted(out)

        before = timed(200)
        ok(daemon.cli("drains:add", "st", f"syslog://127.0.0.1:{port}"))
        assert daemon.proc is not None
        wait_for(lambda: any(d["state"] == "failing" for d in drains(daemon, "st")), 60, "the stall seen")
        rss_start = rss_mib(daemon.proc.pid)
        during = []
        for _ in range(6):  # 30 s of the app logging into a stalled drain
            during += timed(100)
            time.sleep(4)
        rss_end = rss_mib(daemon.proc.pid)
        (d,) = drains(daemon, "st")
        # Each new connection's socket buffers take a few MB before it stalls again: the drain
        # alternates between sending into them and timing out, its buffer within its bounds.
        assert d["failed_attempts"] >= 1 and "stalled" in d["last_error"], d
        assert d["buffered"] <= 20_000, d
        during.sort()
        p99_before, p99_during = before[int(len(before) * 0.99)], during[int(len(during) * 0.99)]
        print(
            f"p50 {before[len(before) // 2] * 1000:.1f} -> {during[len(during) // 2] * 1000:.1f} ms, "
            f"p99 {p99_before * 1000:.1f} -> {p99_during * 1000:.1f} ms, "
            f"RSS {rss_start:.1f} -> {rss_end:.1f} MiB, drain {d}"
        )
        assert during[-1] < 1.0 and p99_during < max(0.1, 5 * p99_before)
        assert rss_end - rss_start < 25


def test_an_add_ons_output_goes_to_the_drains_of_its_apps(docker_client, tmp_path):
    """A Redis add-on attached to an app with a syslog drain: its container's lines (a backup's
    BGSAVE) arrive as `addon.<name>.<container>` lines of that app, and stop once the drain goes."""
    env = {"LBSOLO_DRAINS_ADDON_POLL": "0.5", "LBSOLO_DRAINS_LINGER": "0.1"}
    with running_daemon(docker_client, tmp_path / "home", env) as daemon, syslog_receiver() as (port, got):
        ok(daemon.cli("apps:create", "dra"))
        ok(daemon.cli("addons:create", "redis", "--app", "dra", "--name", "dra-cache", "--version", "7"))
        ok(daemon.cli("drains:add", "dra", f"syslog://127.0.0.1:{port}"))
        time.sleep(1.5)  # the feed's next look follows the add-on
        ok(daemon.cli("addons:backup", "dra-cache"))
        wait_for(lambda: any("DB saved on disk" in x for x in got.lines("dra", "addon.dra-cache.")), 30, "add-on lines")
        with got.lock:
            procs = {m[4] for m in got.messages if m[4].startswith("addon.")}
        assert all(re.fullmatch(r"addon\.dra-cache\.[0-9a-f]{12}", p) for p in procs), procs
        drain = drains(daemon, "dra")[0]["id"]
        ok(daemon.cli("drains:remove", "dra", drain))
        time.sleep(1.5)
        before = len(got.lines("dra", "addon."))
        ok(daemon.cli("addons:backup", "dra-cache"))
        time.sleep(2)
        assert len(got.lines("dra", "addon.")) == before
        ok(daemon.cli("addons:destroy", "dra-cache", "--confirm", "dra-cache", "--detach"))
