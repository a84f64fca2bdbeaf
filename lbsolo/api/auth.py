"""Who a request is: the one place that checks lbsolo's credentials.

A caller proves itself with the admin token (~/.lbsolo/token) or an extra token (tokens.py),
sent as `Authorization: Bearer <token>` (the REST API, the CLI) or as the password of HTTP
Basic (git push, any user name). The web UI's session cookie is web_session.py's (signed with a
key derived from the admin token); a session opened with an extra token names it by id, and
acts as that token for as long as the token exists (`session_caller`).

This module reads one header and compares secrets. It must not read request bodies or know
routes: api_guard.py decides which requests need a caller, before any body is read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from dataclasses import dataclass
from typing import Any

from lbsolo.api.tokens import TOKEN_PREFIX, TokenStore

ADMIN = "admin"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the admin, or the extra token with this id and name."""

    name: str
    token_id: str | None = None
    role: str = "admin"  # admin, deploy or read (scopes.py)
    apps: tuple[str, ...] = ()  # the apps an extra token is limited to; () for all

    @property
    def admin(self) -> bool:
        return self.token_id is None


def bearer_token(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def basic_password(header: str) -> str | None:
    """The password of an HTTP Basic Authorization header, or None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


class Authenticator:
    """Checks a presented secret against the admin token and the extra tokens."""

    def __init__(self, admin_token: str, tokens: TokenStore | None = None) -> None:
        self._admin = admin_token.encode()
        self._tokens = tokens

    def is_admin(self, secret: str) -> bool:
        return secrets.compare_digest(secret.encode(), self._admin)

    async def verify(self, secret: str | None) -> Caller | None:
        """The caller this secret proves, or None."""
        if not secret:
            return None
        if self.is_admin(secret):
            return Caller(ADMIN)
        # Only a secret shaped like an extra token costs a trip to a worker thread (the store
        # may write a last-used time); random guesses are refused on the loop.
        if self._tokens is None or not secret.startswith(TOKEN_PREFIX):
            return None
        row = await asyncio.to_thread(self._tokens.identify, secret)
        if row is None:
            return None
        return _caller(row)

    def session_caller(self, token_id: str | None) -> Caller | None:
        """Who a UI session acts as: the admin (no token id), its token while that exists, else None."""
        if token_id is None:
            return Caller(ADMIN)
        row = None if self._tokens is None else self._tokens.by_id(token_id)
        return None if row is None else _caller(row)

    async def bearer(self, authorization: str) -> Caller | None:
        """The caller of a REST request, from its Authorization header."""
        return await self.verify(bearer_token(authorization))

    async def basic(self, authorization: str) -> Caller | None:
        """The caller of a git request: the token is the HTTP Basic password."""
        return await self.verify(basic_password(authorization))


def _caller(row: dict[str, Any]) -> Caller:
    return Caller(row["name"], row["id"], row.get("role") or "admin", tuple(row.get("apps") or ()))
