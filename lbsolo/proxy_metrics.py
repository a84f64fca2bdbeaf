"""The proxy's per-app counters, latency histogram and access-log lines.

The proxy's hot path only calls `AppStats.observe` (a few integer additions and one bisect) and,
when an access log is configured, appends a tuple to a list; everything that formats text
(Prometheus exposition, JSON lines) happens here, off the hot path. No I/O, no lbsolo imports.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii as _json_str  # C-accelerated
from typing import Any

__all__ = ["LATENCY_BUCKETS", "AppStats", "access_line", "access_lines", "prometheus_text"]

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
    json's C string encoder. This is also the reference `access_lines` must equal, and its
    fallback for inputs the fast path does not take; a whole batch is much cheaper there.
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


# The batch path builds bytes, not str: bytes %-formatting copies literal runs with memchr/memcpy
# (str % walks the template a character at a time), inserts method, path, request id and client
# address without decoding each, and formats %d/%.3f without a __format__ lookup. A batch is
# formatted with one % over the concatenated line templates and decoded once, as latin-1, which
# gives back exactly the str the per-field decodes gave.
_LINE = (
    b'%s%s"method":"%s","path":"%s","status":%d,"bytes_in":%d,"bytes_out":%d,'
    b'"duration_ms":%.3f,"upstream_ms":%.3f,"request_id":"%s","client":"%s"}\n'
)
# Without an upstream time the line takes an empty placeholder instead, so every line takes the
# same number of arguments and the paths and request ids sit at fixed strides in the list.
_LINE_NULL = _LINE.replace(b'"upstream_ms":%.3f', b'"upstream_ms":null%s')
_ARGS, _PATH_AT, _ID_AT = 11, 3, 9
# Bytes that JSON's ASCII encoder passes through map to themselves, any other to another byte:
# `b.translate(_JSON_SAFE) is b` (translate hands back its argument when nothing changed) says that
# b, read as latin-1, needs no escaping, so the raw bytes between quotes are what the encoder gives.
_JSON_SAFE = bytes(c if 0x20 <= c < 0x7F and c not in b'"\\' else (c + 1) & 0xFF for c in range(256))
# '.mmmZ",' by millisecond; 1000 too, which `at % 1 * 1000` should not reach but costs nothing.
_MILLIS = tuple(b'.%03dZ",' % ms for ms in range(1001))
# Below 2**52 s, `at - int(at)` is exactly `at % 1`; other times (negative, huge, nan) take the
# reference path.
_FAST_LIMIT = 2.0**52
# The second access_lines last formatted, kept across batches: [lo, hi, stamp, stamps] where
# lo <= wall time < hi, stamp is '{"ts":"<second>' and stamps[ms] is stamp + _MILLIS[ms], made
# when first needed (only a few of the 1000 when the log is quiet).
_clock: list[Any] = [1.0, 0.0, b"", []]


class _NotLatin1(Exception):
    """An app name outside latin-1 cannot travel in a bytes batch (validated names never are)."""


class _NeedsEscaping(Exception):
    """A path or request id in the batch needs JSON escaping: redo it checking each line."""


def _head(app: str, release: str | None) -> bytes:
    try:
        return f'"app":"{app}","release":{"null" if release is None else _json_str(release)},'.encode("latin-1")
    except UnicodeEncodeError:
        raise _NotLatin1 from None


def _reference_line(entry: tuple[Any, ...]) -> bytes:
    try:
        return access_line(entry).encode("latin-1") + b"\n"
    except UnicodeEncodeError:
        raise _NotLatin1 from None


def _flush(out: list[bytes], templates: list[bytes], args: list[Any], check: bool) -> None:
    """Format the lines gathered so far into `out` and empty the lists."""
    if check:
        # One translate over all the paths and request ids instead of two per line.
        raw = b"".join(args[_PATH_AT::_ARGS]) + b"".join(args[_ID_AT::_ARGS])
        if raw.translate(_JSON_SAFE) is not raw:
            raise _NeedsEscaping
    out.append(b"".join(templates) % tuple(args))
    templates.clear()
    args.clear()


def access_lines(entries: Iterable[tuple[Any, ...]], offset: float) -> str:
    """The access-log lines of a batch of entries, each line ending with a newline.

    Each entry is the tuple `access_line` takes except that its first item is a monotonic time:
    the line's wall time is `entry[0] + offset`. Equal, for any entries, to
    `"".join(access_line((e[0] + offset, *e[1:])) + "\\n" for e in entries)` but several times
    cheaper (one strftime per second, the app/release part once per run of an app, no per-field
    decoding or escaping of paths and request ids that need none, one %-format and one decode per
    batch); raises what that expression would raise.
    """
    if not isinstance(entries, list | tuple):
        entries = list(entries)
    try:
        try:
            return _access_lines(entries, offset, False)
        except _NeedsEscaping:
            return _access_lines(entries, offset, True)
    except _NotLatin1:
        return "".join([access_line((e[0] + offset, *e[1:])) + "\n" for e in entries])


def _access_lines(entries: Sequence[tuple[Any, ...]], offset: float, each: bool) -> str:
    """The batch; checks each line's path and request id when `each`, else the batch's at once."""
    out: list[bytes] = []
    templates: list[bytes] = []
    args: list[Any] = []
    line, line_null, millis, safe = _LINE, _LINE_NULL, _MILLIS, _JSON_SAFE
    lo, hi, stamp, stamps = _clock
    heads: dict[tuple[str, str | None], bytes] = {}
    last_app: Any = heads  # matches no app
    last_release: Any = None
    head = b""
    for entry in entries:
        at, app, release, method, path, status, bytes_in, bytes_out, duration, upstream, request_id, peer = entry
        at += offset
        if not lo <= at < hi:
            if 0.0 <= at < _FAST_LIMIT:
                second = int(at)
                lo = float(second)
                hi = lo + 1.0
                stamp = b'{"ts":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
                stamps = [None] * 1001
                _clock[:] = lo, hi, stamp, stamps
            else:
                if templates:
                    _flush(out, templates, args, not each)
                out.append(_reference_line((at, *entry[1:])))
                continue
        if app is not last_app or release is not last_release:  # runs of one app's lines are common
            key = (app, release)
            head = heads.get(key) or heads.setdefault(key, _head(app, release))
            last_app, last_release = app, release
        if each and (path.translate(safe) is not path or request_id.translate(safe) is not request_id):
            if templates:
                _flush(out, templates, args, False)
            out.append(_reference_line((at, *entry[1:])))
            continue
        # `(at - lo) * 1000.0` is `at % 1 * 1000` here; __trunc__ is int() without the type call.
        ms = ((at - lo) * 1000.0).__trunc__()
        ts = stamps[ms]
        if ts is None:
            ts = stamps[ms] = stamp + millis[ms]
        if upstream is None:
            templates.append(line_null)
            upstream = b""  # the null template's placeholder
        else:
            templates.append(line)
            upstream *= 1000.0
        args += (ts, head, method, path, status, bytes_in, bytes_out, duration * 1000.0, upstream, request_id, peer)
    if templates:
        _flush(out, templates, args, not each)
    return b"".join(out).decode("latin-1")
