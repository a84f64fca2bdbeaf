"""Log drains, the pure part: what a drain is, its URL's checks, the bytes it sends, its buffer.

A drain sends an app's log lines to a log service: `syslog://host:port` and
`syslog+tls://host:port` (RFC 5424 messages over TCP, octet-counted as in RFC 6587) or
`https://...` (batches POSTed in Heroku's logplex framing: application/logplex-1, the same
octet-counted messages, Logplex-Msg-Count and Logplex-Drain-Token headers). Each message names
the app as its APP-NAME and the process and replica (`web.a1b2c3`, `build`, `cron.<job>`) as its
PROCID, with the drain's token as HOSTNAME (as Heroku's drains do, so that a receiver shared by
several drains can tell them apart).

The buffer holds a drain's messages until they are sent: bounded in lines and in bytes, the
oldest dropped (and counted) when full, so a receiver that is down or stalls costs a fixed
amount of memory. No I/O here: sockets and files are core_drains' and drains_send's.
"""

from __future__ import annotations

import collections
import ipaddress
import random
import re
import secrets
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from lbsolo.errors import Conflict, InvalidInput

MAX_DRAINS = 10  # per app
MAX_URL = 2048
MAX_MESSAGE = 8192  # bytes of one message's text; longer lines are cut
SEVERITY_INFO = 6
FACILITY_USER = 1
PRIORITY = FACILITY_USER * 8 + SEVERITY_INFO  # <14>: user.info, for every line
LOGPLEX_TYPE = "application/logplex-1"


class Kind(StrEnum):
    SYSLOG = "syslog"  # plain TCP
    SYSLOG_TLS = "syslog+tls"
    HTTPS = "https"
    HTTP = "http"  # loopback, or with LBSOLO_DRAINS_ALLOW_HTTP (tests, a receiver on a private network)


@dataclass(frozen=True)
class Target:
    """Where a drain's URL says to send: checked, with the port filled in."""

    kind: Kind
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.kind in (Kind.SYSLOG_TLS, Kind.HTTPS)

    @property
    def syslog(self) -> bool:
        return self.kind in (Kind.SYSLOG, Kind.SYSLOG_TLS)


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_url(url: str, allow_http: bool = False) -> Target:
    """The drain URL's target, or InvalidInput saying what is wrong with it."""
    url = url.strip()
    if not url:
        raise InvalidInput("a drain URL is required, e.g. syslog+tls://logs.example.com:6514 or https://...")
    if len(url) > MAX_URL:
        raise InvalidInput(f"the drain URL is longer than {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInput("the drain URL may not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InvalidInput(f"invalid drain URL: {e}") from e
    schemes = ", ".join(f"{k}://" for k in (Kind.SYSLOG_TLS, Kind.SYSLOG, Kind.HTTPS))
    try:
        kind = Kind(parts.scheme.lower())
    except ValueError:
        raise InvalidInput(f"unsupported drain scheme {parts.scheme or '(none)'!r}: use {schemes}") from None
    host = parts.hostname or ""
    if not host:
        raise InvalidInput(f"the drain URL {mask_url(url)!r} has no host")
    if not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
        raise InvalidInput(f"invalid host {host!r} in the drain URL")
    if kind == Kind.HTTP and not (allow_http or is_loopback(host)):
        raise InvalidInput(
            "http:// drains would send the logs and the drain token in clear text: use https:// "
            "(http:// is accepted for loopback receivers, or with LBSOLO_DRAINS_ALLOW_HTTP=1)"
        )
    if kind in (Kind.SYSLOG, Kind.SYSLOG_TLS):
        if port is None:
            raise InvalidInput(f"a {kind}:// drain needs a port, e.g. {kind}://{host}:6514")
        if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
            raise InvalidInput(f"a {kind}:// drain URL is only {kind}://host:port")
    if port == 0:
        raise InvalidInput("the drain URL's port must be between 1 and 65535")
    default = {Kind.HTTPS: 443, Kind.HTTP: 80}.get(kind, 0)
    return Target(kind, host, port or default)


def _mask(secret: str) -> str:
    return secret[:2] + "…" if len(secret) > 6 else "…"


def mask_url(url: str) -> str:
    """The URL with its secret parts cut: a password, query values, token-like path segments."""
    try:
        p: SplitResult = urlsplit(url)
        netloc = p.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if p.port is not None:
            netloc += f":{p.port}"
    except ValueError:
        return url[:12] + "…"
    if p.username:
        netloc = f"{p.username}{':' + _mask(p.password) if p.password else ''}@{netloc}"
    path = "/".join(
        _mask(s) if len(s) >= 16 and re.fullmatch(r"[A-Za-z0-9_.~=+-]+", s) else s for s in p.path.split("/")
    )
    query = "&".join(f"{k.split('=', 1)[0]}=…" if "=" in k else _mask(k) for k in p.query.split("&")) if p.query else ""
    return urlunsplit((p.scheme, netloc, path, query, ""))


@dataclass(frozen=True)
class Drain:
    """A drain as the state keeps it. `token` identifies this drain to its receiver."""

    app: str
    id: str
    url: str
    token: str
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Drain:
        return cls(app=d["app"], id=d["id"], url=d["url"], token=d["token"], created_at=float(d.get("created_at") or 0))

    def shown(self) -> dict[str, Any]:
        """What listings show: the URL masked, the token shortened."""
        return {"app": self.app, "id": self.id, "url": mask_url(self.url), "token": self.token[:10] + "…",
                "created_at": self.created_at}  # fmt: skip


def new_drain(app: str, url: str, taken: list[Drain], now: float, allow_http: bool = False) -> Drain:
    """A new drain for `app`, or InvalidInput (bad URL, one too many) / a duplicate's message."""
    parse_url(url, allow_http)
    url = url.strip()
    if any(d.url == url for d in taken):
        raise Conflict(f"{app} already drains to {mask_url(url)} (drain {next(d.id for d in taken if d.url == url)})")
    if len(taken) >= MAX_DRAINS:
        raise InvalidInput(f"{app} has {len(taken)} drains already; at most {MAX_DRAINS} per app")
    drain_id = secrets.token_hex(4)
    while any(d.id == drain_id for d in taken):
        drain_id = secrets.token_hex(4)
    return Drain(app, drain_id, url, f"d.{uuid.uuid4()}", round(now, 3))


def find(drains: list[Drain], app: str, ref: str) -> Drain:
    for d in drains:
        if d.id == ref or (len(ref) >= 4 and d.id.startswith(ref)) or d.url == ref:
            return d
    raise InvalidInput(f"{app} has no drain {ref!r} (see: lbsolo drains {app})")


# ---- the messages


def _header_field(value: str, limit: int) -> str:
    """A header field of RFC 5424: printable US-ASCII without spaces, at most `limit` long; '-' if empty."""
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return out or "-"


def timestamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def procid(process: str, replica: str) -> str:
    """`web.a1b2c3` for replica `lbsolo-shop-web-v3-a1b2c3`; the process alone without a replica."""
    if not replica:
        return process
    return f"{process}.{replica.rsplit('-', 1)[-1]}"


def message(ts: float, hostname: str, app: str, proc: str, text: str) -> bytes:
    """One RFC 5424 message: `<14>1 TIMESTAMP HOSTNAME APP-NAME PROCID - - MSG` (no trailing newline)."""
    head = f"<{PRIORITY}>1 {timestamp(ts)} {_header_field(hostname, 255)} {_header_field(app, 48)} "
    head += f"{_header_field(proc, 128)} - - "
    body = text.rstrip("\r\n").replace("\n", " ").encode("utf-8", "replace")
    if len(body) > MAX_MESSAGE:
        body = body[:MAX_MESSAGE]
    return head.encode() + body


def frame(msg: bytes) -> bytes:
    """RFC 6587 octet counting: `LEN SP MSG`."""
    return b"%d %s" % (len(msg), msg)


def frames(msgs: list[bytes]) -> bytes:
    return b"".join(frame(m) for m in msgs)


def unframe(data: bytes) -> tuple[list[bytes], bytes]:
    """Split octet-counted frames off `data`: the whole messages and the incomplete rest.
    ValueError when the data is not octet-counted (receivers in tests; spill files)."""
    out: list[bytes] = []
    i = 0
    while True:
        sp = data.find(b" ", i, i + 12)
        if sp < 0:
            if len(data) - i >= 12:
                raise ValueError(f"not an octet count at byte {i}: {data[i : i + 12]!r}")
            return out, data[i:]
        count = data[i:sp]
        if not count.isdigit() or count.startswith(b"0"):
            raise ValueError(f"not an octet count at byte {i}: {count!r}")
        end = sp + 1 + int(count)
        if end > len(data):
            return out, data[i:]
        out.append(data[sp + 1 : end])
        i = end


def logplex_headers(token: str, count: int, frame_id: str) -> dict[str, str]:
    return {
        "Content-Type": LOGPLEX_TYPE,
        "Logplex-Msg-Count": str(count),
        "Logplex-Drain-Token": token,
        "Logplex-Frame-Id": frame_id,
        "User-Agent": "lbsolo-drain",
    }


# ---- delivery


def backoff(failures: int, base: float = 0.5, cap: float = 60.0, rng: random.Random | None = None) -> float:
    """Seconds to wait after `failures` failed attempts in a row: doubling from `base` up to
    `cap`, with up to a quarter taken off at random so that drains do not retry in step."""
    if failures <= 0:
        return 0.0
    delay = min(cap, base * (2 ** min(failures - 1, 30)))
    return delay * (1 - 0.25 * (rng or random).random())


class Buffer:
    """A drain's messages waiting to be sent, oldest first, bounded in count and in bytes.

    `put` never blocks and never fails: past either bound the oldest messages are dropped and
    counted in `dropped`. A batch taken and not delivered goes back to the front (`put_back`),
    within the same bounds.
    """

    def __init__(self, max_lines: int = 10_000, max_bytes: int = 4 << 20) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.bytes = 0
        self.dropped = 0
        self._q: collections.deque[bytes] = collections.deque()

    def __len__(self) -> int:
        return len(self._q)

    def put(self, msg: bytes) -> None:
        self._q.append(msg)
        self.bytes += len(msg)
        self._trim()

    def _trim(self) -> None:
        while len(self._q) > self.max_lines or self.bytes > self.max_bytes:
            self.bytes -= len(self._q.popleft())
            self.dropped += 1

    def take(self, max_lines: int, max_bytes: int) -> list[bytes]:
        """Up to `max_lines` oldest messages, at most `max_bytes` of them (at least one)."""
        out: list[bytes] = []
        size = 0
        while self._q and len(out) < max_lines:
            if out and size + len(self._q[0]) > max_bytes:
                break
            msg = self._q.popleft()
            size += len(msg)
            out.append(msg)
        self.bytes -= size
        return out

    def put_back(self, batch: list[bytes]) -> None:
        """A batch that was not delivered, back in front of newer ones (the oldest dropped past the bounds)."""
        self._q.extendleft(reversed(batch))
        self.bytes += sum(len(m) for m in batch)
        self._trim()

    def take_oldest_bytes(self, max_bytes: int) -> list[bytes]:
        """The oldest messages up to `max_bytes` (for the spill to disk)."""
        return self.take(len(self._q), max_bytes)


@dataclass
class Counters:
    """What a drain did since the daemon started: shown by `drains` and the UI."""

    delivered: int = 0
    dropped: int = 0
    failed_attempts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivered_at: float | None = None
    buffered: int = 0
    spilled: int = 0  # messages waiting in the spill files

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
