"""The web UI's sessions and its pure helpers: signed session cookies and their revocation,
CSRF tokens, origin and redirect checks, form parsing, and small view helpers.

No routes, no templates and no I/O of its own (a revoked session is recorded through the store
it is given).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from lbsolo.core_rollout import DeployJob
from lbsolo.errors import InvalidInput

COOKIE = "lbsolo_session"
SESSION_MAX_AGE = 24 * 3600


@dataclass(frozen=True)
class Session:
    id: str
    expires: int
    token_id: str | None = None  # the extra token it was opened with; None: the admin token


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class RevokedSessions(Protocol):
    """Where ended sessions are kept across restarts (the daemon's state). Blocking."""

    def revoked_sessions(self) -> dict[str, int]: ...

    def revoke_session(self, session_id: str, expires: int, now: float) -> None: ...


class Sessions:
    """Signed, stateless session cookies and their CSRF tokens, keyed off the admin token.

    A cookie is `<id>.<expires>.<signature>`. Logging out revokes the id until it would have
    expired anyway, in memory and in `store` (so a logout outlives a daemon restart); the
    browser drops the cookie at the same moment. With a store, `revoke` blocks: call it
    through asyncio.to_thread.
    """

    def __init__(
        self,
        token: str,
        max_age: int = SESSION_MAX_AGE,
        clock: Callable[[], float] = time.time,
        store: RevokedSessions | None = None,
    ) -> None:
        self._token = token.encode()
        self._key = hmac.new(self._token, b"lbsolo web session v1", hashlib.sha256).digest()
        self.max_age = max_age
        self._clock = clock
        self._store = store
        self._lock = threading.Lock()
        now = clock()
        stored = store.revoked_sessions() if store is not None else {}
        self._revoked: dict[str, int] = {sid: exp for sid, exp in stored.items() if exp > now}

    def _sign(self, message: str) -> str:
        return _b64(hmac.new(self._key, message.encode(), hashlib.sha256).digest())

    def check_token(self, given: str) -> bool:
        return hmac.compare_digest(given.strip().encode(), self._token)

    def issue(self, token_id: str | None = None) -> tuple[Session, str]:
        """A new session (of the admin, or of the extra token with this id) and the cookie value that proves it."""
        session = Session(secrets.token_urlsafe(18), int(self._clock()) + self.max_age, token_id)
        payload = f"{session.id}.{session.expires}" + (f".{token_id}" if token_id else "")
        return session, f"{payload}.{self._sign(payload)}"

    def verify(self, cookie: str | None) -> Session | None:
        """The session a cookie proves, or None. Whether its token still exists is the caller's to check."""
        if not cookie or len(cookie) > 200:
            return None
        payload, _, signature = cookie.rpartition(".")
        parts = payload.split(".")
        if len(parts) not in (2, 3) or not all(parts) or not parts[1].isdigit() or not signature:
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        sid, expires = parts[0], int(parts[1])
        if expires <= self._clock() or sid in self._revoked:
            return None
        return Session(sid, expires, parts[2] if len(parts) == 3 else None)

    def revoke(self, session: Session) -> None:
        now = self._clock()
        with self._lock:
            revoked = {sid: exp for sid, exp in self._revoked.items() if exp > now}
            revoked[session.id] = session.expires
            self._revoked = revoked  # refused from here on, before the store has it
            if self._store is not None:
                self._store.revoke_session(session.id, session.expires, now)

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf:{session.id}")

    def check_csrf(self, session: Session, given: str | None) -> bool:
        if not given:
            return False
        return hmac.compare_digest(given.encode(), self.csrf_token(session).encode())


def session_cookie(header: str) -> str | None:
    """The session cookie's value in a request's Cookie header, or None."""
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE:
            return value
    return None


def same_origin(origin: str | None, host: str | None) -> bool:
    """A form post's Origin header, when the browser sends one, must name this very host."""
    if not origin:
        return True
    if origin == "null" or not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def safe_next(target: str | None) -> str:
    """Where to go after login: only a page of the UI itself, never another site."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


def parse_form(body: bytes) -> dict[str, str]:
    """An urlencoded form body; a repeated field keeps its last value."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInput(f"unreadable form: {e}") from e
    return {k: v[-1] for k, v in fields.items()}


def on_off(form: dict[str, str], field: str) -> bool:
    """A toggle button's value: only its own two values mean something; anything else would silently pick a side."""
    choice = {"on": True, "off": False}.get(form.get(field, ""))
    if choice is None:
        raise InvalidInput(f"{field} must be on or off")
    return choice


def split_domains(text: str) -> list[str]:
    """A form field of extra hosts, separated by commas and/or whitespace; validation is the model's."""
    return [d for d in re.split(r"[\s,]+", text) if d]


def sse_event(data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def job_outcome(job: DeployJob | None, what: str) -> tuple[str, str]:
    """A finished job as a flash message: (kind, text)."""
    if job is None:
        return "ok", f"{what}: saved; it applies from the first deploy"
    result = job.result
    if result.get("ok"):
        return "ok", f"{what}: {result.get('release')} is live"
    error = result.get("error") or {}
    return "error", f"{what} failed: {error.get('message', 'unknown error')}"


def sparkline(points: list[tuple[float, float]], width: int = 240, height: int = 40) -> dict[str, Any]:
    """Scale (ts, value) points into an SVG polyline `points` string; also the last value."""
    if not points:
        return {"points": "", "last": None, "width": width, "height": height}
    if len(points) == 1:  # one sample so far: a flat line at its level
        points = [(points[0][0] - 1, points[0][1]), points[0]]
    t0, t1 = points[0][0], points[-1][0]
    top = max(v for _, v in points) or 1.0
    span = (t1 - t0) or 1.0
    coords = " ".join(f"{(t - t0) / span * width:.1f},{height - v / top * (height - 2) - 1:.1f}" for t, v in points)
    return {"points": coords, "last": points[-1][1], "width": width, "height": height}


def local_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""
