"""The proxy's per-app counters, latency histogram and access-log lines.

The proxy's hot path only calls `AppStats.observe` (a few integer additions and one bisect) and,
when an access log is configured, appends a tuple to a list; everything that formats text
(Prometheus exposition, JSON lines) happens here, off the hot path. No I/O, no lbsolo imports.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from json.encoder import encode_basestring_ascii as _json_str  # C-accelerated
from typing import Any

__all__ = ["LATENCY_BUCKETS", "AppStats", "access_line", "prometheus_text"]

# Upper bounds (seconds) of the latency histogram buckets; a last, implicit one is +Inf.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class AppStats:
    """Counters for one app since the proxy started."""

    __slots__ = ("buckets", "by_class", "bytes_in", "bytes_out", "latency_sum")

    def __init__(self) -> None:
        self.by_class = [0, 0, 0, 0, 0, 0]  # index status // 100; 0 counts anything out of range
        self.bytes_in = 0
        self.bytes_out = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # not cumulative; the last one is +Inf
        self.latency_sum = 0.0

    def observe(self, status: int, bytes_in: int, bytes_out: int, seconds: float) -> None:
        cls = status // 100
        self.by_class[cls if 0 < cls < 6 else 0] += 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    @property
    def requests(self) -> int:
        return sum(self.by_class)

    def to_dict(self) -> dict[str, Any]:
        cumulative = []
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), self.buckets, strict=True):
            total += count
            cumulative.append([bound, total])
        return {
            "requests": self.requests,
            "responses": {name: self.by_class[i + 1] for i, name in enumerate(_CLASSES)},
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "latency_seconds": {"sum": round(self.latency_sum, 6), "count": total, "buckets": cumulative},
        }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(stats: dict[str, AppStats]) -> str:
    """Prometheus text exposition (format 0.0.4) of every app's counters."""
    out = [
        "# HELP lbsolo_proxy_requests_total Requests answered by the proxy, by app and status class.",
        "# TYPE lbsolo_proxy_requests_total counter",
    ]
    apps = sorted(stats)
    for app in apps:
        s = stats[app]
        for i, name in enumerate(_CLASSES):
            out.append(f'lbsolo_proxy_requests_total{{app="{_label(app)}",code="{name}"}} {s.by_class[i + 1]}')
    for metric, attr, text in (
        ("lbsolo_proxy_received_bytes_total", "bytes_in", "Bytes received from clients."),
        ("lbsolo_proxy_sent_bytes_total", "bytes_out", "Bytes sent to clients."),
    ):
        out.append(f"# HELP {metric} {text}")
        out.append(f"# TYPE {metric} counter")
        for app in apps:
            out.append(f'{metric}{{app="{_label(app)}"}} {getattr(stats[app], attr)}')
    out.append(
        "# HELP lbsolo_proxy_request_duration_seconds Time from the request's first byte to its response's last."
    )
    out.append("# TYPE lbsolo_proxy_request_duration_seconds histogram")
    for app in apps:
        s = stats[app]
        label = _label(app)
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS, None), s.buckets, strict=True):
            total += count
            le = "+Inf" if bound is None else repr(bound)
            out.append(f'lbsolo_proxy_request_duration_seconds_bucket{{app="{label}",le="{le}"}} {total}')
        out.append(f'lbsolo_proxy_request_duration_seconds_sum{{app="{label}"}} {s.latency_sum:.6f}')
        out.append(f'lbsolo_proxy_request_duration_seconds_count{{app="{label}"}} {total}')
    return "\n".join(out) + "\n"


_second: list[Any] = [-1, ""]  # the last formatted second: lines come in bursts within one


def access_line(entry: tuple[Any, ...]) -> str:
    """One JSON access-log line from the tuple the proxy buffered.

    The tuple is (wall time, app, release, method, path, status, bytes in, bytes out,
    duration s, upstream s or None, request id, client address). Formatted by hand with
    json's C string encoder: tens of thousands of lines a second must stay cheap.
    """
    at, app, release, method, path, status, bytes_in, bytes_out, duration, upstream, request_id, peer = entry
    second = int(at)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    # app, method and client address need no escaping (a validated name, a token, an address).
    return (
        f'{{"ts":"{_second[1]}.{int(at % 1 * 1000):03d}Z","app":"{app}",'
        f'"release":{"null" if release is None else _json_str(release)},'
        f'"method":"{method.decode("latin-1")}","path":{_json_str(path.decode("latin-1"))},'
        f'"status":{status},"bytes_in":{bytes_in},"bytes_out":{bytes_out},'
        f'"duration_ms":{duration * 1000:.3f},'
        f'"upstream_ms":{"null" if upstream is None else format(upstream * 1000, ".3f")},'
        f'"request_id":{_json_str(request_id.decode("latin-1"))},"client":"{peer.decode("latin-1")}"}}'
    )
