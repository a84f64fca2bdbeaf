"""A client connection's side toward its app: each request routed, then sent to one of its targets.

Every client connection (`Downstream`) builds one `Forwarder` and hands it the requests it
answers, one at a time and in order (`dispatch`). The forwarder routes a request by the current
`RouteTable` and answers, through its connection, what the proxy answers for a route itself: no
app at the host (404), an app not running (503), an HTTPS-only app over plain HTTP (308), a body
over the route's limit (413). A buffering route's body is held until it is whole (`HeldBodies`),
then sent on (`forward`). Sending on means picking a target (`TargetPool.pick`), counting the
exchange in flight to it (`track`, `release`: balancing and drain read the count), taking an
upstream connection to it (a pooled one, one that frees up while the request is queued for the
target: the forwarder is the pool's `Waiter`, or a new one from the `Connector`) and starting the
exchange on it (`Upstream.begin`). When that connection fails (`failed`), a request none of whose
response came may go again, once, on a new connection; otherwise its connection answers 502/504.

What it must not do: read or write bytes itself, parse, or keep any per-target state (the pool
holds it). A forwarder holds only its connection's current exchange: the slot it counts against,
its upstream connection (`up`), the slot it is queued for and its connection attempt. It sees its
connection only as a `Forwarding`, and an upstream connection only as a `Relay`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import replace
from typing import Protocol

from lbsolo.proxy_buffering import CANNOT_HOLD, CannotHold, HeldBodies
from lbsolo.proxy_connect import Connector
from lbsolo.proxy_http import _P_BUFFER, ACME_CHALLENGE_PREFIX, _acme_answer, _https_redirect
from lbsolo.proxy_request import Request
from lbsolo.proxy_routes import RouteTable, Target, normalize_host
from lbsolo.proxy_targets import Connection, Slot, TargetPool
from lbsolo.proxy_wake import Wakes

__all__ = ["Forwarder", "Forwarding", "Relay", "Routing"]

log = logging.getLogger("lbsolo.proxy")

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_EXPECT_LINE = re.compile(rb"\r\nexpect:[^\r\n]*", re.IGNORECASE)


class Routing(Protocol):
    """What a forwarder reads of the proxy (`ProxyServer` is one)."""

    table: RouteTable  # read per request: `set_routes` replaces it
    pool: TargetPool
    connector: Connector
    bodies: HeldBodies
    # HTTP-01 tokens -> key authorizations while ACME is on (None: off, and apps get that path as before).
    challenges: dict[str, bytes] | None
    wakes: Wakes | None  # sleeping apps' held requests (None: no app sleeps, 503 as for any stopped one)

    @property
    def https_port(self) -> int | None: ...


class Forwarding(Protocol):
    """The client connection a forwarder sends requests on for (a `Downstream`)."""

    proto: bytes  # b"http" or b"https": the listener it came in on
    paused: int  # why reading from the client is paused (a bit set)
    write_paused: bool  # the client does not read what is written: the app is not read either
    closed: bool
    active: Request | None  # the request being answered now

    def write(self, data: bytes) -> None: ...

    def keep_alive(self, req: Request) -> bool: ...

    def finish(self, req: Request, close: bool) -> None: ...

    def send_error(
        self, req: Request, status: int, code: str, message: str, *, close: bool = False, retry_after: int = 0
    ) -> None: ...

    def refuse(self, req: Request, status: int, code: str, message: str) -> None:
        """Answer `req` before its body is read whole, and read nothing more."""
        ...

    def resume(self, reason: int) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Relay(Connection, Protocol):
    """An upstream connection, as a forwarder starts an exchange on it (an `Upstream`)."""

    def begin(self, client: Forwarding, req: Request, reused: bool) -> None:
        """Relay `req` for `client` (the forwarder's connection)."""
        ...

    def write(self, data: bytes) -> None: ...

    def pause_read(self) -> None: ...

    def resume_read(self) -> None: ...

    def abandon(self) -> None:
        """Drop the connection mid-exchange."""
        ...


class Forwarder:
    __slots__ = ("_conn", "_connect_task", "_connector", "_edge", "_loop", "_pool", "_slot", "_waiting_for", "up")

    def __init__(self, conn: Forwarding, edge: Routing, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._edge = edge
        self._loop = loop
        self._pool = edge.pool
        self._connector = edge.connector
        self._slot: Slot | None = None  # the target the current exchange (or tunnel) goes to, for drain
        self.up: Relay | None = None  # the upstream connection relaying the current exchange (or tunnel)
        self._waiting_for: Slot | None = None  # queued for a connection to this target
        self._connect_task: asyncio.Task[None] | None = None

    def dispatch(self, req: Request) -> None:
        """Route `req`, the request its connection answers now: answer it here, hold its body, or send it on."""
        conn = self._conn
        edge = self._edge
        table = edge.table
        hit = table.by_raw_host.get(req.host)
        route = hit[0] if hit is not None and hit[1] is None else table.match_raw(req.host, req.url)
        if route is None:
            host = normalize_host(req.host) or "(none)"
            conn.send_error(req, 404, "not_found", f"no app is served at {host}")
            return
        if edge.challenges is not None and req.url.startswith(ACME_CHALLENGE_PREFIX):
            self._challenge(req)  # ACME off: one attribute read per request; on: a prefix check too
            return
        if route.https_redirect and conn.proto == b"http" and (port := edge.https_port) is not None:
            # The app is HTTPS-only: answer 308 here; the app never sees plain HTTP. One flag read
            # per request otherwise.
            req.route = route
            keep = conn.keep_alive(req)  # a body not yet read is not read: the connection closes
            conn.write(_https_redirect(normalize_host(req.host), req.url, port, req.request_id, keep, req.http11))
            req.status = 308
            req.responded = True
            conn.finish(req, close=not keep)
            return
        if route.hsts:  # one truth test per request without HSTS
            if conn.proto == b"https":
                req.hsts = route.hsts  # the proxy's own answers (503) carry it too
            else:
                route = replace(route, hsts=b"")  # RFC 6797: never over plain HTTP
        if not route.targets and not route.asleep:  # a sleeping app's request waits in `forward`
            conn.send_error(req, 503, "app_not_running", f"app {route.app} is not running")
            return
        req.route = route
        if req.body_done and not req.received:  # most requests: no body, nothing to hold or cap
            self.forward(req)
            return
        limit = route.max_body
        buffered = route.request_buffering and not req.upgrade
        hold = buffered and not req.body_done  # a body that came whole with its head is sent on at once
        bodies = edge.bodies
        if buffered and (limit is None or limit > bodies.max_body):
            limit = bodies.max_body  # a buffered body is capped by the proxy's bound too, however it came
        if limit is not None:
            if req.content_length > limit or req.received > limit:
                # Not read any further: the connection cannot be reused.
                conn.refuse(req, 413, "body_too_large", f"the body limit of app {route.app} is {limit} bytes")
                return
            req.limit = limit
        if hold:
            # Read the whole body first (the reader forwards it once complete): a slow client then
            # costs the app nothing, whatever its workers.
            try:
                bodies.hold(req)
            except CannotHold:
                conn.refuse(req, *CANNOT_HOLD)
                return
            if req.expect_continue:
                req.head = _EXPECT_LINE.sub(b"", req.head, count=1)  # answered here, not by the app
                if not req.received:
                    conn.write(_CONTINUE)
            if conn.paused & _P_BUFFER:
                conn.resume(_P_BUFFER)
            return
        self.forward(req)

    def _challenge(self, req: Request) -> None:
        """Answer an ACME HTTP-01 request from the token table; an unknown token gets 404. Never sent on."""
        conn = self._conn
        challenges = self._edge.challenges
        assert challenges is not None
        token = req.url[len(ACME_CHALLENGE_PREFIX) :].partition(b"?")[0].decode("latin-1")
        answer = challenges.get(token) if req.method in (b"GET", b"HEAD") else None
        if answer is None:
            conn.send_error(req, 404, "not_found", "no such ACME challenge")
            return
        keep = conn.keep_alive(req)
        conn.write(_acme_answer(answer, req.request_id, keep, req.http11, req.method == b"HEAD"))
        req.status = 200
        req.responded = True
        conn.finish(req, close=not keep)

    def forward(self, req: Request, reroute: bool = False) -> None:
        """Send a routed request to one of its app's targets: a pooled connection, or a new one.

        `reroute`: the request was held while its body came, and its app's route may have changed.
        """
        route = req.route
        assert route is not None
        if reroute:
            current = self._edge.table.routes.get(route.app)
            if current is not None:
                req.route = route = current
        targets = route.targets
        if not targets:
            wakes = self._edge.wakes
            if route.asleep and wakes is not None:
                wakes.hold(route.app, self, req)
            else:
                self._conn.send_error(req, 503, "app_not_running", f"app {route.app} is not running")
            return
        pool = self._pool
        target = targets[0] if len(targets) == 1 else pool.pick(targets)
        slot = self._slot
        if slot is None:  # the usual case: the last exchange released its target
            self._slot = slot = pool.acquire(target)
        elif slot.target is not target and slot.target != target:
            slot = self.track(target)
        up = pool.take_idle(slot)
        if up is not None:
            self._begin(req, up, True)  # type: ignore[arg-type]
        elif pool.wait(slot, self):
            # Enough connections are being opened to this target: wait for one of them, or for one
            # that frees up (take, connect).
            self._waiting_for = slot
        else:
            self._connect_task = self._loop.create_task(self._connect(req, target))

    def _begin(self, req: Request, up: Relay, reused: bool) -> None:
        conn = self._conn
        self.up = up
        up.begin(conn, req, reused)
        if conn.write_paused:
            up.pause_read()
        if conn.paused & _P_BUFFER:
            conn.resume(_P_BUFFER)

    def failed(self, req: Request, status: int, code: str, message: str, retry: bool) -> None:
        """The upstream connection relaying `req` failed (it is closed). `retry`: none of the response
        came, and an idempotent request whose body is still at hand goes again, once, on a new one."""
        self.up = None
        req.sink = None
        conn = self._conn
        if conn.closed or conn.active is not req:
            return
        if req.responded:
            conn.close()
        elif retry and req.attempts == 0 and req.replayable and req.method in _IDEMPOTENT:
            self._retry(req)
        else:
            conn.send_error(req, status, code, message)

    def _retry(self, req: Request) -> None:
        """Send an idempotent request again on a fresh connection, to the least busy target."""
        route = self._edge.table.routes.get(req.route.app) if req.route is not None else None
        if route is None or not route.targets:
            self._conn.send_error(req, 502, "bad_gateway", "app closed the connection")
            return
        req.attempts += 1
        req.route = route
        target = self._pool.pick(route.targets)
        self.track(target)
        self._connect_task = self._loop.create_task(self._connect(req, target))

    async def _connect(self, req: Request, first: Target) -> None:
        """Open a connection to `first`, else to the route's other targets (nothing was sent yet)."""
        route = req.route
        assert route is not None
        conn = self._conn
        try:
            up = await self._connector.connect(route.app, first, self.track)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not leave the client waiting forever
            log.exception("proxy: internal error while connecting to an app")
            self._connect_task = None
            if not conn.closed and conn.active is req and not req.responded:
                conn.send_error(req, 502, "bad_gateway", "internal proxy error", close=True)
            else:
                conn.abort()
            return
        self._connect_task = None
        if isinstance(up, str):
            if not conn.closed and conn.active is req:
                conn.send_error(req, 502, "bad_gateway", f"app {route.app} is unreachable (connection {up})")
        elif conn.closed or conn.active is not req:
            self._pool.put_idle(up)  # a fresh connection: someone else can use it
        else:
            self._begin(req, up, False)  # type: ignore[arg-type]

    # -- in-flight accounting (drain) -----------------------------------------------------

    def track(self, target: Target) -> Slot:
        """Count the connection's current exchange (or tunnel) against `target`."""
        old = self._slot
        if old is not None:
            if old.target is target or old.target == target:
                return old
            self._slot = None
            self._pool.release(old)
        self._slot = slot = self._pool.acquire(target)
        return slot

    def release(self) -> None:
        """The exchange ended (its upstream connection is pooled or closed): its target is given back."""
        self.up = None
        slot = self._slot
        if slot is not None:
            self._slot = None
            self._pool.release(slot)

    def abandon(self, req: Request) -> None:
        """`req`'s body went wrong while its upstream connection had it: the connection is dropped
        (the client connection answers `req`, or closes)."""
        up = self.up
        if up is not None:
            self.up = None
            req.sink = None
            up.abandon()

    def stop(self, tunnel: bool = False) -> None:
        """The exchange is dropped (its connection closes, or a request timed out): stop waiting for a
        connection, give its target back, cancel a connection attempt, drop the upstream connection
        (a tunnel's is closed, not aborted: what is buffered for the app still goes)."""
        self._waiting_for = None  # skipped when its turn comes
        up = self.up
        self.release()
        task = self._connect_task
        if task is not None:
            self._connect_task = None
            task.cancel()
        if up is not None:
            if tunnel:
                up.close()
            else:
                up.abandon()

    # -- held while a sleeping app wakes (proxy_wake.Held) ---------------------------------

    def resume_held(self, req: Request) -> None:
        conn = self._conn
        if not conn.closed and conn.active is req and not req.responded:
            self.forward(req, True)

    def fail_held(self, req: Request, message: str) -> None:
        conn = self._conn
        if not conn.closed and conn.active is req and not req.responded:
            conn.send_error(req, 503, "app_not_running", message)

    def wait_page(self, req: Request, message: str, retry_after: int) -> None:
        conn = self._conn
        if not conn.closed and conn.active is req and not req.responded:
            conn.send_error(req, 503, "app_starting", message, retry_after=retry_after)

    # -- the pool's `Waiter`: queued for a connection to a busy target --------------------

    def claim(self, slot: Slot) -> bool:
        conn = self._conn
        if self._waiting_for is slot and not conn.closed and conn.active is not None:
            self._waiting_for = None
            return True
        return False

    def take(self, up: Connection) -> None:
        req = self._conn.active
        assert req is not None
        self._begin(req, up, True)  # type: ignore[arg-type]

    def connect(self, target: Target) -> None:
        req = self._conn.active
        assert req is not None
        self._connect_task = self._loop.create_task(self._connect(req, target))
