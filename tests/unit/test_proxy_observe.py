"""Request ids, per-app metrics, Prometheus text and the access log, over real sockets."""

from __future__ import annotations

import asyncio
import json

from lbsolo.proxy import ProxyServer
from lbsolo.proxy_metrics import LATENCY_BUCKETS, AppStats, prometheus_text
from tests.unit.proxy_harness import Conn, stack


def test_a_valid_request_id_is_kept_and_an_invalid_or_missing_one_replaced(run):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            r = await c.request(path="/a", headers={"X-Request-Id": "abc-123 trace=1"})
            assert r.header("X-Request-Id") == "abc-123 trace=1"
            assert app.seen[-1].header("X-Request-Id") == "abc-123 trace=1"

            r = await c.request(path="/b", headers={"X-Request-Id": "x" * 201})
            generated = r.header("X-Request-Id")
            assert generated and generated != "x" * 201
            assert app.seen[-1].header("X-Request-Id") == generated  # one header, the proxy's

            r1 = await c.request(path="/c")
            r2 = await c.request(path="/d")
            ids = {r1.header("X-Request-Id"), r2.header("X-Request-Id"), generated}
            assert len(ids) == 3 and all(ids)
            assert app.seen[-1].header("X-Request-Id") == r2.header("X-Request-Id")

            r = await c.request(host="nope.lbsolo.localhost", headers={"X-Request-Id": "from-client"})
            assert r.status == 404 and r.header("X-Request-Id") == "from-client"
            await c.close()

    run(scenario)


def test_metrics_count_requests_bytes_and_latency_per_app(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            for _ in range(3):
                assert (await c.request(path="/x", body=b"0123456789")).status == 200
            assert (await c.request(host="nope.lbsolo.localhost")).status == 404
            await c.close()
            m = proxy.metrics()
            hello = m["hello"]
            assert hello["requests"] == 3
            assert hello["responses"] == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 0, "5xx": 0}
            assert hello["bytes_in"] > 30 and hello["bytes_out"] > 3 * 100
            hist = hello["latency_seconds"]
            assert hist["count"] == 3 and hist["buckets"][-1] == ["+Inf", 3]
            assert hist["sum"] > 0
            assert m["(unrouted)"]["responses"]["4xx"] == 1
            json.dumps(m)  # JSON-able

            text = proxy.prometheus()
            assert 'lbsolo_proxy_requests_total{app="hello",code="2xx"} 3\n' in text
            assert 'lbsolo_proxy_request_duration_seconds_bucket{app="hello",le="+Inf"} 3\n' in text
            assert 'lbsolo_proxy_request_duration_seconds_count{app="hello"} 3\n' in text
            assert "# TYPE lbsolo_proxy_request_duration_seconds histogram" in text

    run(scenario)


def test_prometheus_text_is_cumulative_and_escapes_labels():
    stats = AppStats()
    stats.observe(200, 10, 20, 0.0005)
    stats.observe(503, 10, 20, 0.3)
    stats.observe(200, 1, 2, 99.0)
    text = prometheus_text({'we"ird': stats})
    assert 'lbsolo_proxy_requests_total{app="we\\"ird",code="5xx"} 1' in text
    assert 'le="0.001"} 1\n' in text and 'le="0.5"} 2\n' in text and 'le="+Inf"} 3\n' in text
    assert 'lbsolo_proxy_received_bytes_total{app="we\\"ird"} 21' in text
    assert len(stats.buckets) == len(LATENCY_BUCKETS) + 1


def test_access_log_lines_are_written_off_the_hot_path(run):
    async def scenario():
        lines: list[str] = []
        async with stack(access_log=lambda batch: lines.extend(batch.splitlines())) as (proxy, _app):
            c = await Conn.open(proxy.port)
            r = await c.request("POST", path="/p?q=1", body=b"hello", headers={"X-Request-Id": "rid-1"})
            assert r.status == 200
            assert lines == []  # buffered, not written by the request
            for _ in range(100):
                if lines:
                    break
                await asyncio.sleep(0.02)
            [line] = lines
            entry = json.loads(line)
            assert entry["app"] == "hello" and entry["release"] == "v1"
            assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/p?q=1", 200)
            assert entry["request_id"] == "rid-1" and entry["client"] == "127.0.0.1"
            assert entry["bytes_in"] > 5 and entry["bytes_out"] > 5
            assert entry["duration_ms"] >= entry["upstream_ms"] >= 0
            assert entry["ts"].endswith("Z")
            await c.request(path="/last")
            await c.close()
        assert json.loads(lines[-1])["path"] == "/last"  # flushed on stop

    run(scenario)


def test_a_failing_access_log_writer_does_not_break_serving(run, caplog):
    def broken(_line: str) -> None:
        raise OSError("disk full")

    async def scenario():
        proxy = ProxyServer(port=0, access_log=broken)
        await proxy.start()
        try:
            c = await Conn.open(proxy.port)
            assert (await c.request(host="x.lbsolo.localhost")).status == 404
            proxy._fold()
            assert (await c.request(host="x.lbsolo.localhost")).status == 404
            await c.close()
        finally:
            await proxy.stop(1)
        caplog.clear()  # the failure was logged at ERROR, as intended

    run(scenario)
