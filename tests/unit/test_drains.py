"""Log drains: URLs, the RFC 5424 / 6587 bytes, logplex headers, backoff, the buffer's bounds,
the spill files; and a drain's worker against real receivers on loopback (port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time

import pytest

from lbsolo.config import Settings
from lbsolo.core_drains import DrainWorker
from lbsolo.drains import (
    MAX_DRAINS,
    Buffer,
    Drain,
    Kind,
    backoff,
    find,
    frame,
    frames,
    logplex_headers,
    mask_url,
    message,
    new_drain,
    parse_url,
    procid,
    unframe,
)
from lbsolo.drains_send import Spill
from lbsolo.errors import Conflict, InvalidInput

pytestmark = pytest.mark.timeout(60)

RFC5424 = re.compile(rb"^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) (\S+) (\S+) - - (.*)$", re.DOTALL)


# ---- URLs


@pytest.mark.parametrize(
    ("url", "kind", "host", "port"),
    [
        ("syslog+tls://logs.example.com:6514", Kind.SYSLOG_TLS, "logs.example.com", 6514),
        ("syslog://10.0.0.5:514", Kind.SYSLOG, "10.0.0.5", 514),
        ("https://user:pw@logs.example.com/drain?token=abc", Kind.HTTPS, "logs.example.com", 443),
        ("http://127.0.0.1:9000/logs", Kind.HTTP, "127.0.0.1", 9000),
        ("SYSLOG+TLS://[::1]:6514", Kind.SYSLOG_TLS, "::1", 6514),
    ],
)
def test_good_urls_are_parsed(url, kind, host, port):
    t = parse_url(url)
    assert (t.kind, t.host, t.port) == (kind, host, port)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "required"),
        ("ftp://logs.example.com:21", "unsupported drain scheme 'ftp'"),
        ("logs.example.com:6514", "unsupported drain scheme"),
        ("syslog+tls://logs.example.com", "needs a port"),
        ("syslog://logs.example.com:514/path", "only syslog://host:port"),
        ("syslog://:514", "no host"),
        ("https://logs.example.com:99999/", "invalid drain URL"),
        ("http://logs.example.com/logs", "clear text"),
        ("https://logs example.com/", "spaces"),
        ("https://logs.example.com/" + "a" * 3000, "longer than"),
        ("https://lo$gs.example.com/", "invalid host"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(url, why):
    with pytest.raises(InvalidInput, match=re.escape(why)):
        parse_url(url)


def test_http_to_another_host_only_with_the_setting():
    assert parse_url("http://logs.internal:8080/x", allow_http=True).kind == Kind.HTTP


def test_listings_never_show_a_urls_secrets_in_full():
    shown = mask_url(
        "https://user:supersecretpassword@logs.example.com/v1/drain/4f9a2c7e1b3d5a6f8e0c?token=t0ps3cret&x"
    )
    assert "supersecret" not in shown and "t0ps3cret" not in shown and "4f9a2c7e1b3d5a6f8e0c" not in shown
    assert shown.startswith("https://user:su…@logs.example.com/v1/drain/4f…?token=…")
    assert mask_url("syslog+tls://logs.example.com:6514") == "syslog+tls://logs.example.com:6514"
    d = Drain("shop", "ab12cd34", "https://logs.example.com/?key=abcdefgh", "d.0123456789abcdef")
    assert "abcdefgh" not in str(d.shown()) and "0123456789abcdef" not in str(d.shown())


def test_a_new_drain_gets_an_id_and_a_token_and_refuses_duplicates_and_too_many():
    d = new_drain("shop", " syslog://127.0.0.1:514 ", [], 5.0)
    assert d.url == "syslog://127.0.0.1:514" and re.fullmatch(r"[0-9a-f]{8}", d.id)
    assert re.fullmatch(r"d\.[0-9a-f-]{36}", d.token)
    with pytest.raises(Conflict, match="already drains to"):
        new_drain("shop", "syslog://127.0.0.1:514", [d], 6.0)
    many = [Drain("shop", f"{i:08x}", f"syslog://127.0.0.1:{1000 + i}", "t") for i in range(MAX_DRAINS)]
    with pytest.raises(InvalidInput, match=f"at most {MAX_DRAINS}"):
        new_drain("shop", "syslog://127.0.0.1:9", many, 6.0)
    assert find([d], "shop", d.id[:4]) is d
    with pytest.raises(InvalidInput, match="no drain"):
        find([d], "shop", "zzzz")


# ---- the bytes


def test_a_message_is_rfc5424_with_the_app_and_the_replica():
    msg = message(1765137016.25, "d.tok", "shop", procid("web", "lbsolo-shop-web-v3-a1b2c3"), "GET / 200\n")
    m = RFC5424.match(msg)
    assert m is not None
    assert m.groups() == (b"14", b"2025-12-07T19:50:16.250000Z", b"d.tok", b"shop", b"web.a1b2c3", b"GET / 200")
    assert procid("build", "") == "build"


def test_header_fields_are_printable_ascii_and_text_is_utf8_and_capped():
    msg = message(0, "d tok", "", "we b", "héllo\nworld" + "x" * 10_000)
    head, _, text = msg.partition(b" - - ")
    assert head.split(b" ")[2:] == [b"d_tok", b"-", b"we_b"]
    assert text.startswith("héllo world".encode()) and len(text) == 8192


def test_octet_counting_frames_round_trip_even_when_cut_anywhere():
    msgs = [message(1.0, "h", "a", "web.1", t) for t in ("one", "two with spaces", "ü" * 40, "")]
    data = frames(msgs)
    assert data.startswith(b"%d <14>1 " % len(msgs[0]))
    for cut in range(len(data) + 1):
        first, rest = unframe(data[:cut])
        second, tail = unframe(rest + data[cut:])
        assert first + second == msgs and tail == b""
    with pytest.raises(ValueError, match="octet count"):
        unframe(b"<14>1 not counted at all, no")
    assert frame(b"abc") == b"3 abc"


def test_logplex_headers():
    h = logplex_headers("d.tok", 3, "f1")
    assert h["Content-Type"] == "application/logplex-1"
    assert (h["Logplex-Msg-Count"], h["Logplex-Drain-Token"], h["Logplex-Frame-Id"]) == ("3", "d.tok", "f1")


# ---- delivery


def test_backoff_doubles_up_to_the_cap_with_jitter_below():
    rng = random.Random(1)
    assert backoff(0) == 0
    for n, full in [(1, 0.5), (2, 1.0), (3, 2.0), (8, 60.0), (100, 60.0)]:
        for _ in range(20):
            assert 0.75 * full <= backoff(n, 0.5, 60.0, rng) <= full


def test_the_buffer_drops_the_oldest_past_its_lines_or_bytes_and_counts_them():
    buf = Buffer(max_lines=100, max_bytes=1000)
    for i in range(250):
        buf.put(b"%04d" % i)
    assert len(buf) == 100 and buf.dropped == 150 and buf.bytes == 400
    assert buf.take(3, 10_000) == [b"0150", b"0151", b"0152"]
    big = Buffer(max_lines=1000, max_bytes=100)
    for _ in range(30):
        big.put(b"x" * 10)
    assert big.bytes <= 100 and len(big) == 10 and big.dropped == 20


def test_a_batch_taken_is_bounded_and_goes_back_in_front():
    buf = Buffer(max_lines=10, max_bytes=10_000)
    for i in range(8):
        buf.put(b"m%d" % i)
    batch = buf.take(5, 5)  # 2 bytes each: two fit in 5
    assert batch == [b"m0", b"m1"] and len(buf) == 6
    buf.put(b"n0")
    buf.put(b"n1")
    buf.put_back(batch)  # 10 now: nothing dropped yet
    assert buf.take(3, 100) == [b"m0", b"m1", b"m2"] and buf.dropped == 0
    buf.put_back([b"a", b"b", b"c", b"d", b"e"])  # past 10: the oldest (the put-back ones) go
    assert len(buf) == 10 and buf.dropped == 2 and buf.take(1, 100) == [b"c"]
    assert Buffer().take(5, 1) == []
    one = Buffer()
    one.put(b"x" * 50)
    assert one.take(5, 1) == [b"x" * 50]  # one message bigger than the batch's bytes still goes


def test_the_spill_keeps_segments_in_order_within_its_bytes(tmp_path):
    spill = Spill(tmp_path / "d1", max_bytes=200)
    for i in range(5):
        spill.write([b"seg%d-a" % i, b"seg%d-b" % i] * 4)  # 8 messages, 64 bytes each segment
    assert spill.bytes <= 200 and len(spill.segments) == 3 and spill.dropped == 16
    again = Spill(tmp_path / "d1", max_bytes=200).load()  # a restarted daemon finds them
    assert again.messages == 24
    number, msgs = again.read_oldest()
    assert msgs[0] == b"seg2-a"
    again.remove(number)
    assert again.read_oldest()[1][0] == b"seg3-a"
    (tmp_path / "d1" / "00000003.seg").write_bytes(b"garbage that is not framed at all")
    assert again.read_oldest()[1][0] == b"seg4-a" and again.dropped == 8
    again.clear()
    assert not (tmp_path / "d1").exists()


# ---- a worker against real receivers


class Receiver:
    """A syslog receiver on loopback: parses octet-counted frames, or stalls (never reads)."""

    def __init__(self, stall: bool = False) -> None:
        self.stall = stall
        self.msgs: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.conns: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns.append(writer)
        if self.stall:
            writer.transport.pause_reading()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
            return
        rest = b""
        while data := await reader.read(65536):
            got, rest = unframe(rest + data)
            self.msgs.extend(got)

    async def close(self) -> None:
        for w in self.conns:
            w.transport.abort()
        assert self.server is not None
        self.server.close()


def _worker(tmp_path, port: int, **settings) -> DrainWorker:
    s = Settings(home=tmp_path, drains_timeout=1.0, drains_backoff_base=0.05, drains_backoff_max=0.2, **settings)
    drain = Drain("shop", "ab12cd34", f"syslog://127.0.0.1:{port}", "d.tok")
    return DrainWorker(drain, s, lambda: None, Spill(tmp_path / "drains" / drain.id, s.drains_spill_bytes))


async def _until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.02)


def test_a_worker_delivers_to_a_syslog_receiver_and_counts(tmp_path):
    asyncio.run(_a_worker_delivers_to_a_syslog_receiver_and_counts(tmp_path))


async def _a_worker_delivers_to_a_syslog_receiver_and_counts(tmp_path):
    rx = Receiver()
    port = await rx.start()
    w = _worker(tmp_path, port)
    w.start()
    try:
        for i in range(5000):
            w.offer(1.0 + i, "web.a1", f"line {i}")
        await _until(lambda: len(rx.msgs) == 5000)
        assert RFC5424.match(rx.msgs[-1]).group(6) == b"line 4999"
        assert [RFC5424.match(m).group(6) for m in rx.msgs[:2]] == [b"line 0", b"line 1"]
        st = w.status()
        assert (st["delivered"], st["dropped"], st["failed_attempts"], st["state"]) == (5000, 0, 0, "ok")
    finally:
        await w.stop(keep=False)
        await rx.close()


def test_a_receiver_that_is_down_then_back_gets_what_was_buffered(tmp_path):
    asyncio.run(_a_receiver_that_is_down_then_back_gets_what_was_buffered(tmp_path))


async def _a_receiver_that_is_down_then_back_gets_what_was_buffered(tmp_path):
    rx = Receiver()
    port = await rx.start()
    rx.server.close()
    await rx.server.wait_closed()  # nobody listens on the port now
    w = _worker(tmp_path, port)
    w.start()
    try:
        for i in range(100):
            w.offer(1.0, "web.a1", f"line {i}")
        await _until(lambda: w.counters.failed_attempts >= 3)
        st = w.status()
        assert st["state"] == "failing" and "connection refused" in st["last_error"] and st["buffered"] == 100
        rx.server = await asyncio.start_server(rx.handle, "127.0.0.1", port)
        await _until(lambda: len(rx.msgs) == 100)
        assert w.status()["state"] == "ok"
    finally:
        await w.stop(keep=False)
        await rx.close()


def test_a_stalled_receiver_costs_bounded_memory_and_never_slows_the_offers(tmp_path):
    asyncio.run(_a_stalled_receiver_costs_bounded_memory_and_never_slows_the_offers(tmp_path))


async def _a_stalled_receiver_costs_bounded_memory_and_never_slows_the_offers(tmp_path):
    rx = Receiver(stall=True)
    port = await rx.start()
    w = _worker(tmp_path, port, drains_buffer_lines=2000, drains_buffer_bytes=200_000, drains_spill_bytes=300_000)
    w.start()
    try:
        t0 = time.perf_counter()
        slowest, spent, offered = 0.0, 0.0, 0
        # Until the kernel's socket buffers are full and a send times out: 1 s of no progress.
        while w.counters.failed_attempts < 1:
            assert time.perf_counter() - t0 < 30, "the stalled send never timed out"
            for _ in range(5000):
                t = time.perf_counter()
                w.offer(1.0, "web.a1", f"request {offered} " + "x" * 60)
                slowest = max(slowest, time.perf_counter() - t)
                spent += time.perf_counter() - t
                offered += 1
            assert w.buffer.bytes <= 200_000 and len(w.buffer) <= 2000
            assert w.spill.bytes <= 300_000
            await asyncio.sleep(0.01)  # the loop runs its other tasks (the spill, the sender)
        # No offer waits for the receiver (a send's timeout is 1 s); the average is microseconds.
        assert slowest < 0.5 and spent / offered < 100e-6
        st = w.status()
        assert "stalled" in st["last_error"] and st["dropped"] > 0 and st["state"] == "failing"
        assert w.spill.bytes <= 300_000
    finally:
        await w.stop(keep=False)
        await rx.close()


def test_what_is_buffered_at_stop_is_kept_for_the_next_daemon(tmp_path):
    asyncio.run(_what_is_buffered_at_stop_is_kept_for_the_next_daemon(tmp_path))


async def _what_is_buffered_at_stop_is_kept_for_the_next_daemon(tmp_path):
    rx = Receiver()
    port = await rx.start()
    rx.server.close()
    await rx.server.wait_closed()
    w = _worker(tmp_path, port)
    w.start()
    for i in range(50):
        w.offer(1.0, "web.a1", f"kept {i}")
    await _until(lambda: w.counters.failed_attempts >= 1)
    await w.stop(keep=True)
    rx.server = await asyncio.start_server(rx.handle, "127.0.0.1", port)
    again = _worker(tmp_path, port)
    again.start()
    try:
        await _until(lambda: len(rx.msgs) == 50)
        assert RFC5424.match(rx.msgs[0]).group(6) == b"kept 0"
    finally:
        await again.stop(keep=False)
        await rx.close()
    assert not (tmp_path / "drains" / "ab12cd34").exists()


# ---- the sources


def test_the_log_store_hands_every_line_to_its_taps_and_a_failing_tap_loses_nothing(tmp_path, caplog):
    from lbsolo.build import LogBuffer
    from lbsolo.run_logs import LogLine, LogStore

    store = LogStore(tmp_path)
    seen: list[LogLine] = []

    def broken(line: LogLine) -> None:
        raise RuntimeError("a bug in a tap")

    store.add_tap(broken)
    store.add_tap(seen.append)
    line = LogLine(1.0, "shop", "v1", "web", "lbsolo-shop-web-v1-a1b2c3", "GET / 200")
    store.append(line)
    store.tap(LogLine(2.0, "shop", "", "build", "", "-----> Building shop"))
    assert [x.line for x in seen] == ["GET / 200", "-----> Building shop"]
    assert [x.line for x in store.read("shop")] == ["GET / 200"]  # tapped-only lines are not stored
    assert "a log tap failed" in caplog.text

    out: list[str] = []
    buf = LogBuffer(max_lines=2, tail=1, on_line=out.append)
    for i in range(5):
        buf.append(f"step {i}")
    assert out == [f"step {i}" for i in range(5)]  # past max_lines too: the drain gets every line
