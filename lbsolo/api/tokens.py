"""Extra API tokens (`lbsolo tokens:create/revoke`), stored only as SHA-256 hashes.

A token is shown once, when it is created; the state keeps its hash and a short prefix to
recognise it by. The admin token in ~/.lbsolo/token is not one of these; auth.py checks both.
Methods are blocking (they reach the state): call them through asyncio.to_thread, or from a
sync FastAPI dependency, which runs in a worker thread.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from lbsolo.api.scopes import validate_role
from lbsolo.errors import InvalidInput, NotFound
from lbsolo.state import State

TOKEN_PREFIX = "lbs_"
SHOWN_PREFIX = 10  # characters of a token kept in clear, e.g. "lbs_Ab3xYz"
TOUCH_EVERY = 60.0  # seconds between writes of a token's last_used
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,39}$")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_token_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(f"invalid token name {name!r}: 1-40 letters, digits, '_', '.', '@' or '-'")
    if name.lower() == "admin":  # the audit log's name for the admin token
        raise InvalidInput("'admin' names the admin token ($LBSOLO_HOME/token): pick another name")
    return name


class TokenStore:
    """Create, list, revoke and verify extra API tokens. Thread-safe."""

    def __init__(self, state: State, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self._clock = clock
        self._lock = threading.Lock()
        # id -> row; a cache of the table, so verifying a request costs no state read.
        self._rows: dict[str, dict[str, Any]] = {r["id"]: r for r in state.list_tokens()}

    def create(self, name: str, role: str = "admin", apps: list[str] | tuple[str, ...] = ()) -> tuple[str, str]:
        """A new token named `name` with a role, limited to `apps` (none: all): returns (id, token).
        The token cannot be shown again. Whether the apps exist is the caller's to check."""
        validate_token_name(name)
        validate_role(role)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = {
            "id": secrets.token_hex(4),
            "name": name,
            "hash": hash_token(token),
            "prefix": token[:SHOWN_PREFIX],
            "role": role,
            "apps": sorted(set(apps)),
            "created_at": round(self._clock(), 3),
            "last_used": None,
        }
        with self._lock:
            self.state.add_token(row)  # refuses a duplicate name
            self._rows[row["id"]] = row
        return row["id"], token

    def _find(self, id_or_name: str) -> dict[str, Any]:
        row = self._rows.get(id_or_name) or next((r for r in self._rows.values() if r["name"] == id_or_name), None)
        if row is None:
            raise NotFound(f"no token {id_or_name!r} (see lbsolo tokens)")
        return row

    def revoke(self, id_or_name: str) -> dict[str, Any]:
        """Delete a token by id or name; it stops working at once. Returns what was revoked."""
        with self._lock:
            if id_or_name == "admin" and not any(r["name"] == "admin" for r in self._rows.values()):
                raise InvalidInput(
                    "the admin token cannot be revoked: replace $LBSOLO_HOME/token and restart the daemon to change it"
                )
            row = self._find(id_or_name)
            self.state.delete_token(row["id"])
            self._rows.pop(row["id"], None)
        return _public(row)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = sorted(self._rows.values(), key=lambda r: (r["created_at"], r["id"]))
        return [_public(r) for r in rows]

    def by_id(self, token_id: str) -> dict[str, Any] | None:
        """The live token with this id (a UI session names its token by id), or None. No I/O."""
        with self._lock:
            row = self._rows.get(token_id)
        return None if row is None else _public(row)

    def verify(self, token: str) -> bool:
        """True if token is one of the extra tokens."""
        return self.identify(token) is not None

    def identify(self, token: str) -> dict[str, Any] | None:
        """The extra token's public row (id, name, ...), or None. Compares every stored hash, in constant time each."""
        if not token:
            return None
        given = hash_token(token)
        with self._lock:
            rows = list(self._rows.values())
        match = None
        for row in rows:
            if hmac.compare_digest(given, row["hash"]):
                match = row
        if match is None:
            return None
        ts = round(self._clock(), 3)
        last = match.get("last_used")
        if last is None or ts - last >= TOUCH_EVERY:
            # At most one state write per token a minute, not one per request.
            with self._lock:
                if match["id"] in self._rows:
                    match["last_used"] = ts
                    self.state.touch_token(match["id"], ts)
        return _public(match)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k) for k in ("id", "name", "prefix", "created_at", "last_used")}
    # rows from before roles (schema 3) are admins over every app, as they were
    return {**out, "role": row.get("role") or "admin", "apps": list(row.get("apps") or ())}
