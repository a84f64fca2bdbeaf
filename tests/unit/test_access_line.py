"""access_lines (the batch form) and access_line against the original per-line formatter."""

from __future__ import annotations

import json
import time
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from lbsolo.proxy_metrics import access_line, access_lines


def reference_line(entry: tuple[Any, ...]) -> str:
    """access_line as it was before the batch path: the definition of the expected bytes."""
    at, app, release, method, path, status, bytes_in, bytes_out, duration, upstream, request_id, peer = entry
    second = int(at)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return (
        f'{{"ts":"{stamp}.{int(at % 1 * 1000):03d}Z","app":"{app}",'
        f'"release":{"null" if release is None else _json_str(release)},'
        f'"method":"{method.decode("latin-1")}","path":{_json_str(path.decode("latin-1"))},'
        f'"status":{status},"bytes_in":{bytes_in},"bytes_out":{bytes_out},'
        f'"duration_ms":{duration * 1000:.3f},'
        f'"upstream_ms":{"null" if upstream is None else format(upstream * 1000, ".3f")},'
        f'"request_id":{_json_str(request_id.decode("latin-1"))},"client":"{peer.decode("latin-1")}"}}'
    )


def reference(entries: list[tuple[Any, ...]], offset: float) -> str:
    return "".join(reference_line((e[0] + offset, *e[1:])) + "\n" for e in entries)


_NOW = 1_780_000_000.0
_seconds = st.floats(min_value=0, max_value=30, allow_nan=False)
_raw = st.binary(max_size=40)
_typical = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-._?=&%", max_size=30).map(str.encode)
_entry = st.tuples(
    st.one_of(st.floats(min_value=0, max_value=5, allow_nan=False), st.floats(min_value=-1e6, max_value=1e6)),
    st.sampled_from(["hello", "api", "(unrouted)", "caf\xe9", "x\u0101"]),
    st.one_of(st.none(), st.sampled_from(["v1", "v12"]), st.text(max_size=8)),
    st.sampled_from([b"GET", b"POST", b"X\xff"]),
    st.one_of(_typical, _raw),
    st.integers(min_value=0, max_value=999),
    st.integers(min_value=0, max_value=1 << 40),
    st.integers(min_value=0, max_value=1 << 40),
    _seconds,
    st.one_of(st.none(), _seconds, st.floats()),
    st.one_of(_typical, _raw),
    st.sampled_from([b"127.0.0.1", b"::1", b"10.0.0.7"]),
)


@settings(max_examples=400, deadline=None)
@given(entries=st.lists(_entry, max_size=20), offset=st.sampled_from([_NOW, 0.0, -_NOW, 0.5, 2.0**53]))
@example(entries=[], offset=_NOW)
def test_batch_equals_the_reference_line_by_line(entries: list[tuple[Any, ...]], offset: float) -> None:
    try:
        expected = reference(entries, offset)
    except (ValueError, OverflowError, OSError):  # times no strftime can render fail either way
        return
    assert access_lines(entries, offset) == expected
    assert access_lines(iter(entries), offset) == expected
    assert "".join(access_line((e[0] + offset, *e[1:])) + "\n" for e in entries) == expected


def _line(**fields: Any) -> tuple[Any, ...]:
    base = {
        "at": 10.25,
        "app": "hello",
        "release": "v1",
        "method": b"GET",
        "path": b"/p?q=1",
        "status": 200,
        "bytes_in": 5,
        "bytes_out": 7,
        "duration": 0.0015,
        "upstream": 0.001,
        "request_id": b"rid-1",
        "peer": b"127.0.0.1",
    } | fields
    return tuple(base.values())


def test_fields_needing_escaping_and_missing_values() -> None:
    entries = [
        _line(path=b'/a"b\\c\n\x00\x7f\xe9', request_id=b"r\xff\t"),
        _line(release=None, upstream=None),
        _line(release='we"ird\u2603', path=b"/%%s%d"),
        _line(),
    ]
    text = access_lines(entries, _NOW)
    assert text == reference(entries, _NOW)
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["path"] == '/a"b\\c\n\x00\x7f\xe9' and lines[0]["request_id"] == "r\xff\t"
    assert lines[1]["release"] is None and lines[1]["upstream_ms"] is None
    assert lines[2]["release"] == 'we"ird\u2603' and lines[2]["path"] == "/%%s%d"
    assert lines[3]["ts"].endswith(".250Z") and lines[3]["duration_ms"] == 1.5


def test_times_across_seconds_and_batches() -> None:
    entries = [_line(at=t) for t in (0.0, 0.9995, 0.99999999, 1.0, 1.001, 59.999, 3600.5, 0.5)]
    assert access_lines(entries, _NOW) == reference(entries, _NOW)
    assert access_lines(entries[:3], _NOW) + access_lines(entries[3:], _NOW) == reference(entries, _NOW)
    assert access_lines(entries, -_NOW - 7.5) == reference(entries, -_NOW - 7.5)  # negative: reference path
    assert access_lines([], _NOW) == ""
