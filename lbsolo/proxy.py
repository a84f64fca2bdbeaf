"""lbsolo's HTTP reverse proxy: routes `<app>.<domain>` (and custom domains) to app replicas.

It runs inside the daemon's event loop (uvloop or the default loop). This module holds
`ProxyServer` (listeners, connection caps, timeout sweep, metrics, access log). Its parts:
`proxy_downstream` (the client side of each connection: keep-alive, pipelining, timeouts, error
pages), `proxy_reader` (its parser path: bytes to requests, bodies), `proxy_request` (what a
request head says, pure), `proxy_forward` (each request routed and sent to a target: the proxy's
own answers for a route, the target's slot, the upstream connection, a retry), `proxy_buffering`
(held request bodies and their budget), `proxy_connect` (opening a connection to an app, with
failover), `proxy_upstream` (the app side of an exchange, and WebSocket tunnels),
`proxy_response_reader` (its parser path: a response relayed in pieces), `proxy_response` (what a
response head says, pure), `proxy_targets` (per target: state, requests in flight, upstream
connection pool, balancing, passive ejection, drain), `proxy_routes` (the routing table),
`proxy_http` (shared HTTP constants and helpers), `proxy_metrics`; TLS certificates come from
`lbsolo.proxy_tls`, and each HTTPS connection's ClientHello is read first by `proxy_hello` (ACME
TLS-ALPN-01, the unrecognized_name alert). A client that picks HTTP/2 on the HTTPS listener (ALPN) gets `proxy_h2`'s
connection instead of a `Downstream`, imported only then (`_Negotiated`).

What it must not do: know about containers, releases or state. It never imports docker,
tinydb or lbsolo modules other than those parts. The core decides routes and pushes them in with
`ProxyServer.set_routes`; the proxy only reads the current immutable `RouteTable` snapshot.
It must never let one client connection break another, and never log per request: the hot path
only counts and appends a tuple for the access log, formatted off the hot path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from lbsolo.proxy_buffering import HeldBodies
from lbsolo.proxy_connect import Connector
from lbsolo.proxy_downstream import Downstream
from lbsolo.proxy_hello import ACME_TLS_ALPN, Hello, HelloListener, challenge_context, listen_tcp
from lbsolo.proxy_http import _now
from lbsolo.proxy_http import request_ids as new_request_ids
from lbsolo.proxy_metrics import AppStats, access_lines, prometheus_text
from lbsolo.proxy_routes import Route, RouteTable, Target, normalize_host
from lbsolo.proxy_targets import TargetPool, TargetState
from lbsolo.proxy_upstream import Upstream
from lbsolo.proxy_wake import Wakes

__all__ = ["ProxyServer", "Route", "RouteTable", "Target", "TargetState", "normalize_host"]

log = logging.getLogger("lbsolo.proxy")

# Tuning of the server side.
_FOLD_EVERY = 0.2  # seconds between folds of finished exchanges into metrics and access log
_FOLD_SLICE = 200  # finished exchanges folded per loop iteration (about a millisecond)


class ProxyServer:
    """The proxy listener. `set_routes` swaps the route table atomically, without a restart.

    `access_log` is handed JSON access-log lines in batches: one string of newline-terminated lines.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        domain: str = "lbsolo.localhost",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        header_timeout: float = 10.0,
        idle_timeout: float = 75.0,
        access_log: Callable[[str], None] | None = None,
        https_port: int | None = None,
        tls: ssl.SSLContext | None = None,
        trusted_proxies: Iterable[str] = (),
        max_connections: int = 10000,
        max_connections_per_client: int = 256,
        buffer_memory: int = 64 * 1024,
        buffer_max: int = 1 << 30,
        buffer_disk: int = 4 << 30,
        spool_dir: str | os.PathLike[str] | None = None,
        body_min_rate: float = 1024,
        body_grace: float = 10.0,
        tunnel_idle_timeout: float = 300.0,
        request_ids: Iterator[bytes] | None = None,
        acme_challenges: bool = False,
        tls_knows: Callable[[str], bool] | None = None,
        wake: Callable[[str], None] | None = None,
        wake_timeout: float = 60.0,
        wake_page_after: float = 2.0,
    ) -> None:
        self.host = host
        self._port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        # The edge's limits (README, Security). Connections beyond a cap get 503 and are closed.
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.refused = 0  # connections refused by the caps since start
        self.per_peer: dict[bytes, int] = {}  # open connections per client address
        # Request buffering (Route.request_buffering): up to buffer_memory of a body in memory, the
        # rest in an unlinked temp file in spool_dir (None: the system's), at most buffer_max bytes;
        # buffer_disk bounds all held bodies' files together: beyond it, a new body gets 503.
        self.bodies = HeldBodies(buffer_memory, buffer_max, buffer_disk, spool_dir)
        # A body must come at body_min_rate bytes/s on average once body_grace seconds have passed.
        self.body_min_rate = body_min_rate
        self.body_grace = body_grace
        self.tunnel_idle_timeout = tunnel_idle_timeout
        self.table: RouteTable = RouteTable(domain)
        # Peers whose X-Forwarded-For/-Proto, Forwarded and X-Real-IP are passed on (CIDRs or addresses).
        self.trusted_proxies = tuple(
            ipaddress.ip_network(n.strip(), strict=False) for n in trusted_proxies if n.strip()
        )
        self.loop: asyncio.AbstractEventLoop | None = None  # the running loop, once started
        self._server: asyncio.Server | None = None
        self.clients: set[Downstream] = set()  # open client connections
        self.pool = TargetPool()  # every target's state and upstream connections
        self.connector = Connector(self.pool, self)  # opens upstream connections when none is pooled
        # `next(...)`: the id of a request that came without one (given: the same ids every run, for tests).
        self.request_ids = request_ids if request_ids is not None else new_request_ids()
        self._stats: dict[str, AppStats] = {}
        # When each app was last asked for (time.monotonic(), to a fold's precision): how long it idled.
        self.last_requests: dict[str, float] = {}
        # Sleeping apps (Route.asleep): requests held while `wake(app)` (the core) starts one; None:
        # a sleeping route is answered 503 like any app that is not running.
        self.wakes = Wakes(wake, wake_timeout, _now, wake_page_after) if wake is not None else None
        # ACME HTTP-01: /.well-known/acme-challenge/<token> on any routed host is answered from this
        # table (token -> key authorization) and never reaches an app; the core puts tokens in
        # (`put_challenge`). None while ACME is off: apps get that path as before.
        self.challenges: dict[str, bytes] | None = {} if acme_challenges else None
        # HTTPS listener: `tls` is a server context, e.g. lbsolo.proxy_tls.CertStore(...).server_context().
        self._https_port = https_port
        self._tls = tls
        self._tls_server: HelloListener | None = None
        # Whether the HTTPS listener has a certificate for an SNI name (None: every name goes on to
        # the handshake); a name it has none for gets the unrecognized_name alert (proxy_hello).
        self._tls_knows = tls_knows
        # ACME TLS-ALPN-01: a ClientHello offering acme-tls/1 for one of these names gets its
        # challenge certificate (domain -> context), then the connection closes (`put_alpn_challenge`).
        self.alpn_challenges: dict[str, ssl.SSLContext] = {}
        self._access_log = access_log
        # Finished exchanges wait here as tuples; a timer folds them into the metrics and formats
        # their access-log lines off the hot path (see Downstream.record for the fields). One list
        # for the proxy's life: each connection keeps a reference to it.
        self._finished: list[tuple[Any, ...]] = []
        self._folder: asyncio.TimerHandle | None = None
        self.stopping = False  # stop() began: no more requests on kept-alive connections
        self._sweeper: asyncio.TimerHandle | None = None
        shortest = min(read_timeout, header_timeout, idle_timeout, body_grace, tunnel_idle_timeout)
        self._sweep_every = max(0.05, min(1.0, shortest / 4))

    @property
    def domain(self) -> str:
        return self.table.domain

    def set_routes(self, routes: Mapping[str, Route]) -> None:
        """Replace the routing table (atomic swap; in-flight requests keep their target)."""
        self.table = table = RouteTable(self.table.domain, routes)
        self.pool.update(table.targets())
        if self.wakes is not None and self.wakes.held:
            self.wakes.routes_changed(table)

    def wake_failed(self, app: str, message: str) -> None:
        """A sleeping app could not be woken: the requests held for it are answered 503 with `message`."""
        if self.wakes is not None:
            self.wakes.failed(app, message)

    def put_challenge(self, token: str, key_authorization: str) -> None:
        """Answer GET /.well-known/acme-challenge/`token` with `key_authorization` (ACME must be on)."""
        if self.challenges is None:
            raise RuntimeError("the proxy was started without ACME challenges")
        self.challenges[token] = key_authorization.encode("ascii")

    def drop_challenge(self, token: str) -> None:
        if self.challenges is not None:
            self.challenges.pop(token, None)

    def put_alpn_challenge(self, domain: str, cert_pem: bytes, key_pem: bytes) -> None:
        """Answer TLS-ALPN-01 handshakes for `domain` with this self-signed certificate (RFC 8737)."""
        self.alpn_challenges[domain.lower().rstrip(".")] = challenge_context(cert_pem, key_pem, self.bodies.spool_dir)

    def serves_host(self, host: str) -> bool:
        """Whether a route takes requests for `host` now (an HTTPS listener without a certificate
        for it serves the default one meanwhile, lbsolo.proxy_tls)."""
        return self.table.serves_host(host)

    def drop_alpn_challenge(self, domain: str) -> None:
        self.alpn_challenges.pop(domain.lower().rstrip("."), None)

    def _choose(self, hello: Hello | None) -> tuple[ssl.SSLContext, bool] | None:
        """What an HTTPS connection gets from its ClientHello (`proxy_hello.Choose`): a pending
        TLS-ALPN-01 challenge's certificate, closed after the handshake; the unrecognized_name
        alert for a name no certificate covers; otherwise the listener's context (SNI picks the
        certificate). No name, or an unreadable ClientHello: the listener's context."""
        tls = self._tls
        assert tls is not None
        if hello is None or hello.server_name is None:
            return tls, False
        name = hello.server_name
        if ACME_TLS_ALPN in hello.alpn:
            challenge = self.alpn_challenges.get(name)
            if challenge is not None:
                return challenge, True
        knows = self._tls_knows
        if knows is not None and not knows(name):
            return None
        return tls, False

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Per-app counters since start (JSON-able): requests by status class, bytes, latency histogram."""
        self._fold(everything=True)
        return {app: self._stats[app].to_dict() for app in sorted(self._stats)}

    def prometheus(self) -> str:
        """The same counters in Prometheus text exposition format."""
        self._fold(everything=True)
        return prometheus_text(self._stats)

    def in_flight(self, target: Target) -> int:
        """Requests (and WebSocket tunnels) to `target` in progress now, whichever route sent them."""
        return self.pool.in_flight(target)

    async def wait_drained(self, targets: Iterable[Target], timeout: float) -> bool:
        """Wait until nothing is in flight to `targets`; False if some still are after `timeout` seconds.

        Call it after `set_routes` has removed the targets: they get no new requests from then on.
        """
        return await self.pool.wait_drained(targets, timeout)

    def downstream(self, https: bool = False) -> Downstream:
        """A protocol for one accepted client connection (what the listeners make)."""
        return Downstream(self, https)

    def h2_connection(self) -> asyncio.Protocol:
        """A protocol for one HTTPS connection whose client chose HTTP/2. python-hyper's h2 is
        imported by the first one: a daemon no h2 client reached never holds it in memory."""
        from lbsolo.proxy_h2 import H2Connection

        return H2Connection(self)

    def upstream(self, target: Target) -> Upstream:
        """A protocol for one connection to `target` (what the connector opens)."""
        return Upstream(self.pool, target, self)

    @property
    def finished(self) -> list[tuple[Any, ...]]:
        """Finished exchanges not yet folded into the metrics and the access log."""
        return self._finished

    def admit(self, conn: Downstream, peer: bytes, trusted: bool) -> bool:
        """Count a new client connection from `peer`; False, counted as refused, past a cap: one
        address's (not for a trusted proxy, which speaks for many clients) or everyone's."""
        clients = self.clients
        per_peer = self.per_peer
        if len(clients) >= self.max_connections or (
            not trusted and per_peer.get(peer, 0) >= self.max_connections_per_client
        ):
            self.refused += 1
            return False
        clients.add(conn)
        per_peer[peer] = per_peer.get(peer, 0) + 1
        return True

    def leave(self, conn: Downstream, peer: bytes) -> None:
        """An admitted connection is gone."""
        self.clients.discard(conn)
        per_peer = self.per_peer
        left = per_peer.get(peer, 1) - 1
        if left > 0:
            per_peer[peer] = left
        else:
            per_peer.pop(peer, None)

    def trusts(self, peer: str) -> bool:
        """Whether `peer` (an address) is one of the trusted proxies."""
        if not self.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)

    async def start(self, sock: socket.socket | None = None, tls_sock: socket.socket | None = None) -> None:
        """Listen on host:port (and the HTTPS port), or on listening sockets made beforehand (a
        daemon taking over from another passes it the sockets it inherited)."""
        if self._server is not None:
            raise RuntimeError("proxy already started")
        self.loop = loop = asyncio.get_running_loop()
        self.stopping = False
        self.pool.start(loop)
        # A deep accept queue: a burst of new connections must not overflow it (SYN retries cost seconds).
        here = {"host": self.host, "port": self._port, "reuse_address": True}
        where: dict[str, Any] = {"sock": sock} if sock is not None else here
        self._server = await loop.create_server(lambda: Downstream(self), **where, backlog=4096)
        self._port = self._server.sockets[0].getsockname()[1]
        if self._tls is not None and (self._https_port is not None or tls_sock is not None):
            # Each ClientHello is read first (proxy_hello), then TLS starts on the context it asks for.
            listening = tls_sock if tls_sock is not None else listen_tcp(self.host, self._https_port or 0)
            self._tls_server = HelloListener(listening, self._choose, lambda: _Negotiated(self), self.header_timeout)
            self._https_port = self._tls_server.sockets[0].getsockname()[1]
            log.info("proxy listening on https://%s:%d", self.host, self._https_port)
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)
        self._folder = loop.call_later(_FOLD_EVERY, self._fold)
        log.info("proxy listening on http://%s:%d for *.%s", self.host, self._port, self.table.domain)

    @property
    def https_port(self) -> int | None:
        """The HTTPS listener's port (None without TLS)."""
        return self._https_port if self._tls is not None else None

    @property
    def port(self) -> int:
        return self._port

    async def stop(self, timeout: float = 5.0, *, handing_over: float = 0.0) -> None:
        """Stop accepting, let in-flight requests finish for up to `timeout`, then close everything.

        `handing_over` (seconds): another process keeps the listening sockets and accepts from
        now on. Connections this one accepted last are answered, not closed, and idle keep-alive
        connections get that long to send one more request (answered with `Connection: close`),
        so a client never finds its connection closed under a request it had just sent."""
        server = self._server
        if server is None:
            return
        loop = self.loop
        assert loop is not None
        tls_server = self._tls_server
        if handing_over > 0:
            server.close()
            if tls_server is not None:
                tls_server.close()
            await asyncio.sleep(0)  # connections accepted in the last accept round get connection_made
        self.stopping = True
        self.pool.stop()
        server.close()
        if tls_server is not None:
            tls_server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.pool.close_idle()
        if handing_over > 0:
            grace = loop.time() + min(handing_over, timeout)
            while self.clients and loop.time() < grace:  # each closes after its next answer
                await asyncio.sleep(0.01)
        for client in list(self.clients):
            client.shutdown_if_idle()
        deadline = loop.time() + max(0.0, timeout)
        while self.clients and loop.time() < deadline:
            await asyncio.sleep(0.01)
            self.pool.close_idle()
        for client in list(self.clients):
            client.abort()
        self.pool.close_idle()
        self.pool.abort_all()
        # Let the transports deliver connection_lost so nothing is left half-closed.
        for _ in range(200):
            if not self.clients and not self.pool.connections:
                break
            await asyncio.sleep(0.005)
        try:
            await asyncio.wait_for(server.wait_closed(), 1.0)
            if tls_server is not None:
                await asyncio.wait_for(tls_server.wait_closed(), 1.0)
        except TimeoutError:
            log.warning("proxy: listener did not close in time")
        self._server = self._tls_server = None
        if self._folder is not None:
            self._folder.cancel()
            self._folder = None
        self._fold(everything=True)
        log.info("proxy stopped")

    # -- internals -----------------------------------------------------------------------

    def _fold(self, everything: bool = False) -> None:
        """Count finished exchanges in their apps' metrics and hand over their access-log lines.

        A slice at a time from the timer, so that requests interleave; everything when asked.
        """
        finished = self._finished
        more = False
        if finished:
            if everything or len(finished) <= _FOLD_SLICE:
                batch = finished[:]
                finished.clear()
            else:
                batch = finished[:_FOLD_SLICE]
                del finished[:_FOLD_SLICE]
                more = True
            stats = self._stats
            last = self.last_requests
            app = None
            counters: AppStats | None = None
            for entry in batch:
                if counters is None or entry[1] != app:  # runs of one app's requests are common
                    app = entry[1]
                    counters = stats.get(app) or stats.setdefault(app, AppStats())
                    last[app] = entry[0]
                counters.observe(entry[5], entry[6], entry[7], entry[8])
            sink = self._access_log
            if sink is not None:
                try:
                    # Entries carry monotonic time; access_lines converts it to wall time.
                    sink(access_lines(batch, time.time() - _now()))
                except Exception:
                    log.exception("proxy: access log writer failed; %d lines dropped", len(batch))
        loop = self.loop
        if self._server is not None and not self.stopping and loop is not None and not everything:
            self._folder = loop.call_later(0 if more else _FOLD_EVERY, self._fold)

    def _sweep(self) -> None:
        loop = self.loop
        assert loop is not None
        now = loop.time()
        try:
            for client in list(self.clients):
                deadline = client.deadline
                if deadline is None or deadline > now:
                    deadline = client.write_deadline
                if deadline is not None and deadline <= now:
                    client.on_timeout()
            for up in list(self.pool.connections):  # only those relaying an exchange have deadlines
                deadline = up.deadline
                if deadline is None or deadline > now:
                    deadline = up.write_deadline
                if deadline is not None and deadline <= now:
                    up.on_timeout()
            self.pool.sweep_idle(now)
            if self.wakes is not None and self.wakes.held:
                self.wakes.sweep(_now())  # its deadlines are on time.monotonic(), as uvloop's are not
        except Exception:
            log.exception("proxy: error in the timeout sweep")
        if not self.stopping:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep)


class _Negotiated(asyncio.Protocol):
    """An accepted HTTPS connection until its handshake is done (asyncio calls `connection_made`
    after it): then the protocol its client chose by ALPN takes the transport over, HTTP/2 or
    HTTP/1.1 (a client that offers nothing gets HTTP/1.1). Before that, there is nothing to do."""

    __slots__ = ("_server",)

    def __init__(self, server: ProxyServer) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tls = transport.get_extra_info("ssl_object")
        protocol: asyncio.Protocol
        if tls is not None and tls.selected_alpn_protocol() == "h2":
            protocol = self._server.h2_connection()
        else:
            protocol = Downstream(self._server, https=True)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
