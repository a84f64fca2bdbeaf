"""The API's front door: who is asking and how much they may send, decided before a body is read.

FastAPI reads and parses a JSON body before a route's dependencies run, so a token check there
comes too late: an anonymous 200 MiB POST would already sit in memory. This pure-ASGI
middleware, in front of the FastAPI app, answers 401 for /api/*, /metrics and git without a
valid token, and 403 for what a scoped token's role or apps do not cover (scopes.py), before it
calls `receive` (for the web UI too, whose session may be a scoped token's: `ui_caller`); and it
counts body bytes while the app reads them: past the route's cap (declared by Content-Length, or
counted, chunked bodies included) it answers 413 at once. A refusal of a request whose body is
still unread says `Connection: close`, so the server closes the connection instead of reading
(and discarding) the rest.

Caps: settings.max_upload_bytes for source uploads, git pushes and add-on dump imports,
settings.max_hook_bytes for inbound push webhooks (their signature can only be checked once
read), and settings.max_json_bytes for everything else (JSON, UI forms).

Every change that reaches it (and every refusal of one) is written to the audit log (audit.py)
once its answer is sent: the guard knows the caller, the route template and the status; the
route adds what it changed through audit.note().

It must not parse bodies or know about apps; auth.py decides who a caller is.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from lbsolo.api.audit import AuditLog, begin_note, end_note, is_change
from lbsolo.api.auth import Authenticator, Caller
from lbsolo.api.scopes import UI_OPEN, refusal, ui_refusal
from lbsolo.config import Settings
from lbsolo.errors import Forbidden, InvalidInput, LbsoloError, TooLarge, Unauthorized

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: The route a request goes to: (its template, e.g. "/api/apps/{name}/config", its path parameters).
RouteOf = Callable[[Scope], "tuple[str, dict[str, Any]] | None"]


class Paused(LbsoloError):
    """The daemon is handing over to its successor (`lbsolo restart`): changes wait a moment."""

    code = "restarting"
    status = 503


CALLER = "lbsolo.caller"  # the scope key under which the guard leaves who the caller is
UNAUTHORIZED = "missing or wrong API token (see `lbsolo` on the daemon's machine: ~/.lbsolo/token)"
GIT_UNAUTHORIZED = "git needs an API token as the password (see: lbsolo git:remote APP)"
_DEPLOY = re.compile(r"/api/apps/[^/]+/deploy")
_IMPORT = re.compile(r"/api/addons/[^/]+/import")  # an add-on's dump, streamed in


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one error shape of the API."""
    return {"error": {"code": code, "message": message}}


def needs_token(path: str) -> bool:
    return path == "/metrics" or path == "/api" or path.startswith("/api/")


def client_address(scope: Scope) -> str:
    """The client as uvicorn saw it: its X-Forwarded-For is believed from loopback only, i.e. from
    lbsolo's own proxy, which sets it from the connection (or a LBSOLO_TRUSTED_PROXIES peer's chain).
    "local": the unix socket (the CLI on this machine)."""
    client = scope.get("client")
    return str(client[0]) if client else "local"


def concerns(template: str, params: dict[str, Any]) -> dict[str, str]:
    """The app or add-on a route acts on, from its path parameters."""
    name = params.get("name") or params.get("app")
    if not isinstance(name, str) or not name:
        return {}
    return {"addon": name} if template.startswith(("/api/addons/", "/ui/addons/")) else {"app": name}


def actor_of(scope: Scope, path: str, params: dict[str, Any], noted: str | None) -> str:
    """Who the audit log names: a token's name ("admin" for the admin token), "git:<token>" for a
    push, "webhook:<app>" for a push webhook, "ui:<session>" for the web UI (web.py notes it)."""
    if noted:
        return noted
    caller = caller_of(scope)
    if path.startswith("/hooks/"):
        return f"webhook:{params.get('app') or path.removeprefix('/hooks/')}"
    if caller is not None:
        via_git = path.startswith("/git/") or _header(list(scope.get("headers") or ()), b"x-lbsolo-via") == "git"
        return f"git:{caller.name}" if via_git else caller.name
    return "ui" if path.startswith("/ui") else "anonymous"


def caller_of(scope: Scope) -> Caller | None:
    """Who the guard found this request to be (None if it was not checked)."""
    return scope.get(CALLER)


@dataclass(frozen=True)
class BodyLimits:
    """The largest request body each kind of route accepts, in bytes."""

    json: int
    upload: int
    hook: int

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        return cls(json=settings.max_json_bytes, upload=settings.max_upload_bytes, hook=settings.max_hook_bytes)

    def cap(self, method: str, path: str) -> tuple[int, str]:
        """(limit, the setting that raises it) for a request."""
        if path.startswith("/git/") or (method == "POST" and (_DEPLOY.fullmatch(path) or _IMPORT.fullmatch(path))):
            return self.upload, "LBSOLO_MAX_UPLOAD_BYTES"
        if path.startswith("/hooks/"):
            return self.hook, "LBSOLO_MAX_HOOK_BYTES"
        return self.json, "LBSOLO_MAX_JSON_BYTES"


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length a request declares, None without one; InvalidInput if unreadable."""
    values = {v.strip() for k, v in headers if k.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1 or not all(v.isdigit() for v in values):
        raise InvalidInput("unreadable Content-Length")
    return int(values.pop())


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), "")


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        (k.lower() == b"content-length" and v.strip() not in (b"", b"0")) or k.lower() == b"transfer-encoding"
        for k, v in headers
    )


async def refuse(
    send: Send, error: LbsoloError, *, close: bool, headers: tuple[tuple[bytes, bytes], ...] = (), page: bool = False
) -> None:
    """Answer with lbsolo's JSON error (a small HTML page for the web UI: `page`); `close` asks the
    server to drop the connection after it."""
    if page:
        text = html.escape(error.message)
        body = f'<!doctype html><title>Forbidden</title><h1>Forbidden</h1><p>{text}</p><a href="/ui/">Back</a>'
        body = body.encode()
        kind = b"text/html; charset=utf-8"
    else:
        body = json.dumps(error_body(error.code, error.message)).encode()
        kind = b"application/json"
    head = [(b"content-type", kind), (b"content-length", b"%d" % len(body)), *headers]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class _CappedBody:
    """The request's receive and send, counting body bytes: past the cap, 413 and a disconnect.

    An answer that starts before the body has been read to its end says `Connection: close`:
    the app did not want the rest, so neither does the server.
    """

    def __init__(self, receive: Receive, send: Send, limit: int, setting: str, unread: bool) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.setting = setting
        self.unread = unread
        self.received = 0
        self.started = False
        self.refused = False

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.unread = self.unread and bool(message.get("more_body"))
            if self.received > self.limit:
                self.refused = True
                if not self.started:
                    too_large = TooLarge(f"the request body is over the limit of {self.limit} bytes ({self.setting})")
                    await refuse(self._send, too_large, close=True)
                # To the app the client went away: it stops reading, and whatever it answers is dropped.
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
            if self.unread and not any(k.lower() == b"connection" for k, _ in message.get("headers", ())):
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await self._send(message)


class ApiGuard:
    """ASGI middleware: authentication for /api/* and /metrics, and body caps on every route."""

    def __init__(
        self,
        app: ASGIApp,
        auth: Authenticator,
        limits: BodyLimits,
        paused: Callable[[], str | None] = lambda: None,
        audit: AuditLog | None = None,
        route_of: RouteOf = lambda scope: None,
        ui_caller: Callable[[str], Caller | None] = lambda cookies: None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.limits = limits
        self.paused = paused  # a note while the daemon hands over: changes are refused meanwhile
        self.audit = audit
        self.route_of = route_of
        self.ui_caller = ui_caller  # who a web UI request's session cookie (its Cookie header) acts as

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope.get("method", "GET")
        path: str = scope.get("path", "")
        if self.audit is None or not is_change(method, path):
            await self._serve(scope, receive, send)
            return
        status = 0

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start" and not status:
                status = int(message["status"])
            await send(message)

        started = time.time()
        route = self.route_of(scope)  # before the app runs: routing adds to the scope
        noted, token = begin_note()
        try:
            await self._serve(scope, receive, watched)
        finally:
            end_note(token)
            self._record(scope, route or (path, {}), status or 500, started, noted)

    def _record(
        self, scope: Scope, route: tuple[str, dict[str, Any]], status: int, started: float, noted: dict[str, Any]
    ) -> None:
        assert self.audit is not None
        method, path = scope.get("method", "GET"), scope.get("path", "")
        template, params = route
        action = "git push" if path.startswith("/git/") else f"{method} {template}"
        entry: dict[str, Any] = {
            "ts": round(started, 3),
            "actor": actor_of(scope, path, params, noted.pop("actor", None)),
            "source": client_address(scope),
            "action": action,
            **concerns(template, params),
            "status": status,
        }
        for key in ("app", "addon"):
            if key in noted:
                entry[key] = noted.pop(key)
        if noted:
            entry["changed"] = noted
        self.audit.record(entry)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or ())
        path: str = scope.get("path", "")
        unread = _has_body(headers)
        if needs_token(path):
            caller = await self.auth.bearer(_header(headers, b"authorization"))
            if caller is None:
                challenge = ((b"www-authenticate", b'Bearer realm="lbsolo"'),)
                await refuse(send, Unauthorized(UNAUTHORIZED), close=unread, headers=challenge)
                return
            scope[CALLER] = caller
        elif path.startswith("/git/"):
            # git sends the token as the Basic password, asked for by this challenge.
            caller = await self.auth.basic(_header(headers, b"authorization"))
            if caller is None:
                challenge = ((b"www-authenticate", b'Basic realm="lbsolo"'),)
                await refuse(send, Unauthorized(GIT_UNAUTHORIZED), close=unread, headers=challenge)
                return
            scope[CALLER] = caller
        elif path == "/ui" or path.startswith("/ui/"):
            # The UI's pages check their session themselves (and send a stranger to the login page);
            # what a scoped token's session may do is decided here, as for its REST requests.
            caller = self.ui_caller(_header(headers, b"cookie"))
            if caller is not None:
                scope[CALLER] = caller
        caller = caller_of(scope)
        if caller is not None and (caller.role != "admin" or caller.apps):
            # A scoped token: its role and apps decide, from the route alone, before the body.
            route = self.route_of(scope) or (path, {})
            ui = path.startswith("/ui")
            why = (ui_refusal if ui else refusal)(caller.role, caller.apps, scope.get("method", "GET"), *route)
            if why is not None and not (ui and route[0] in UI_OPEN):
                await refuse(send, Forbidden(why), close=unread, page=ui)
                if self.audit is not None and not is_change(scope.get("method", "GET"), path):
                    # a refused read is recorded too: a token probing beyond its scope is worth knowing of
                    self._record(scope, route, 403, time.time(), {})
                return
        note = self.paused()
        if note and scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS"):
            await refuse(send, Paused(note), close=unread, headers=((b"retry-after", b"2"),))
            return
        limit, setting = self.limits.cap(scope.get("method", "GET"), path)
        try:
            declared = declared_length(headers)
        except InvalidInput as e:
            await refuse(send, e, close=True)
            return
        if declared is not None and declared > limit:
            message = f"the request body is {declared} bytes; the limit is {limit} ({setting})"
            await refuse(send, TooLarge(message), close=True)
            return
        body = _CappedBody(receive, send, limit, setting, unread)
        try:
            await self.app(scope, body.receive, body.send)
        except Exception:
            # The app saw the body end in a disconnect and may fail on it; the client has its 413.
            if not body.refused:
                raise
