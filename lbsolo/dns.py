"""Authoritative DNS for the lbsolo domain, served over asyncio UDP and TCP.

What it is for: answering queries for ``<domain>`` and ``*.<domain>`` (by default
``lbsolo.localhost``) and for the apps' custom domains with the proxy's address, so
that ``<app>.<domain>`` reaches the proxy without editing ``/etc/hosts``.  Names outside
those zones are refused, unless forwarding is on (:mod:`lbsolo.dns_forward`) and the
client is allowed to recurse.  A per-client rate limit (:mod:`lbsolo.dns_ratelimit`)
keeps one client from starving the others.

How it is split: :mod:`lbsolo.dns_zone` holds the zone and the pure ``answer``; this module's
:class:`DNSServer` binds UDP and TCP on one port and feeds packets to it; a REFUSED reply to an
allowed client is replaced by the forwarder's answer.

What it must not do: import docker, tinydb or lbsolo modules other than its dns_* helpers, read state on
its own, or block the event loop.  The core pushes records into it with
:meth:`DNSServer.set_zone`.  It does not use dnslib's threaded server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
from collections.abc import Coroutine
from typing import Any

from lbsolo.dns_forward import ForwardConfig, Forwarder
from lbsolo.dns_ratelimit import RateLimit, RateLimiter
from lbsolo.dns_zone import PLAIN_UDP_SIZE, Zone, answer, refused, truncate, udp_limit

__all__ = ["DNSServer", "ForwardConfig", "RateLimit", "Zone", "answer"]

log = logging.getLogger("lbsolo.dns")

#: TCP connections are closed after this many seconds without a complete message.
TCP_IDLE_TIMEOUT = 10.0
#: Concurrent TCP connections beyond this are closed at once.
TCP_MAX_CONNECTIONS = 256
#: Default cap on one client address's concurrent TCP connections (beyond it: closed at once).
#: A stub resolver uses one and a busy NAT gateway a few, while 256 / 16 means it takes 16
#: addresses to fill the server.
TCP_MAX_PER_CLIENT = 16
#: Default lifetime of a TCP connection, in seconds: past it the connection is closed after the
#: answer in flight, so a client asking every few seconds (never idle for TCP_IDLE_TIMEOUT)
#: still gives its slot back.  Two minutes is far longer than any burst of queries needs, and a
#: reconnect that often costs a client nothing (RFC 7766 has clients expect such closes and retry).
TCP_MAX_LIFETIME = 120.0


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        server = self._server
        try:
            limiter = server.limiter
            if limiter is not None and not limiter.allow(addr[0]):
                return  # over its rate: drop, like a lost packet
            reply = answer(data, server.zone)
            if reply is None or self.transport is None:
                return
            forwarder = server.forwarder
            if forwarder is not None and refused(reply) and forwarder.allows(addr[0]):
                server._spawn(self._forward(forwarder, data, reply, addr))
                return
            if len(reply) > PLAIN_UDP_SIZE and len(reply) > udp_limit(data):
                reply = truncate(reply)
            self.transport.sendto(reply, addr)
        except Exception:
            log.debug("UDP query from %s failed", addr, exc_info=True)

    async def _forward(self, forwarder: Forwarder, data: bytes, refused: bytes, addr: tuple[str, int]) -> None:
        reply = await forwarder.resolve(data) or refused
        if len(reply) > PLAIN_UDP_SIZE and len(reply) > udp_limit(data):
            reply = truncate(reply)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class DNSServer:
    """Serve :func:`answer` on ``host:port`` over UDP and TCP.

    ``forward``: forward names outside the zones for allowed clients (off by default).
    ``rate_limit``: per-client token bucket (on by default, generous, loopback exempt);
    ``None`` turns it off.
    ``tcp_max_per_client``: concurrent TCP connections per client address (loopback too);
    ``tcp_max_lifetime``: seconds a TCP connection stays open.  0 turns either off.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5354,
        zone: Zone | None = None,
        forward: ForwardConfig | None = None,
        rate_limit: RateLimit | None = RateLimit(),  # frozen: sharing the default is safe
        tcp_max_per_client: int = TCP_MAX_PER_CLIENT,
        tcp_max_lifetime: float = TCP_MAX_LIFETIME,
    ) -> None:
        if tcp_max_per_client < 0 or tcp_max_lifetime < 0:
            raise ValueError(f"invalid DNS TCP limits: {tcp_max_per_client=}, {tcp_max_lifetime=}")
        self.host = host
        self.zone: Zone = zone if zone is not None else Zone()
        self.forwarder: Forwarder | None = Forwarder(forward) if forward is not None else None
        self.limiter: RateLimiter | None = RateLimiter(rate_limit) if rate_limit is not None else None
        self._requested_port = port
        self._port = port
        self._udp: _UDPProtocol | None = None
        self._tcp: asyncio.Server | None = None
        self.tcp_max_per_client = tcp_max_per_client
        self.tcp_max_lifetime = tcp_max_lifetime
        #: TCP connections closed at once because of the total or the per-client cap.
        self.tcp_refused = 0
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self._tcp_clients: dict[str, int] = {}  # client address -> its open TCP connections
        self._forward_tasks: set[asyncio.Task[None]] = set()

    def set_zone(self, zone: Zone) -> None:
        """Replace the zone; queries received from now on use it."""
        self.zone = zone

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    async def start(
        self, attempts: int = 5, *, udp_sock: socket.socket | None = None, tcp_sock: socket.socket | None = None
    ) -> None:
        """Bind UDP, then TCP on the same port.  With port 0, retry if TCP's bind fails.
        Or serve on sockets bound beforehand (a daemon taking over passes the ones it inherited)."""
        if self._udp is not None:
            raise RuntimeError("DNS server already started")
        loop = asyncio.get_running_loop()
        if udp_sock is not None and tcp_sock is not None:
            _, protocol = await loop.create_datagram_endpoint(lambda: _UDPProtocol(self), sock=udp_sock)
            self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp_sock)
            self._udp = protocol
            self._port = int(udp_sock.getsockname()[1])
            if self.forwarder is not None:
                self.forwarder.ignore(self.host, self._port)
            return
        for attempt in range(attempts):
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), local_addr=(self.host, self._requested_port)
            )
            port = int(transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:
                transport.close()
                await protocol.closed
                if self._requested_port != 0 or attempt == attempts - 1:
                    raise
                log.debug("TCP port %d busy, retrying with another port", port)
                continue
            self._udp = protocol
            self._port = port
            if self.forwarder is not None:
                self.forwarder.ignore(self.host, port)  # never forward to ourselves
            log.debug("DNS server listening on %s:%d (udp+tcp)", self.host, port)
            return

    async def stop(self, timeout: float = 2.0) -> None:
        """Close the sockets and all TCP connections; waits at most about ``timeout``."""
        udp, self._udp = self._udp, None
        tcp, self._tcp = self._tcp, None
        if udp is not None and udp.transport is not None:
            udp.transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(udp.closed), timeout)
        if tcp is not None:
            tcp.close()
        tasks = [*self._tcp_tasks, *self._forward_tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        if tcp is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tcp.wait_closed(), timeout)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a forwarded query in the background; beyond the cap, drop it."""
        limit = self.forwarder.config.max_inflight if self.forwarder is not None else 0
        if len(self._forward_tasks) >= limit:
            coro.close()
            return
        task = asyncio.ensure_future(coro)
        self._forward_tasks.add(task)
        task.add_done_callback(self._forward_done)

    def _forward_done(self, task: asyncio.Task[None]) -> None:
        self._forward_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("forwarded query failed", exc_info=task.exception())

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        held = self._tcp_clients.get(client, 0)
        if (
            task is None
            or len(self._tcp_tasks) >= TCP_MAX_CONNECTIONS
            or (self.tcp_max_per_client and held >= self.tcp_max_per_client)
        ):
            self.tcp_refused += 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        self._tcp_tasks.add(task)
        self._tcp_clients[client] = held + 1
        loop = asyncio.get_running_loop()
        expires = loop.time() + self.tcp_max_lifetime if self.tcp_max_lifetime else math.inf
        try:
            while True:
                # Past the lifetime no new message is waited for, but one that has begun is read
                # whole (within the idle timeout), answered and sent: the close never cuts a reply.
                begun = loop.time()
                if begun >= expires:
                    return
                async with asyncio.timeout_at(min(begun + TCP_IDLE_TIMEOUT, expires)) as limit:
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    limit.reschedule(begun + TCP_IDLE_TIMEOUT)
                    if size < 12:  # cannot be a DNS message: framing is broken
                        return
                    message = await reader.readexactly(size)
                if self.limiter is not None and not self.limiter.allow(client):
                    return  # over its rate: close the connection
                reply = answer(message, self.zone)
                if reply is None:
                    continue
                forwarder = self.forwarder
                if forwarder is not None and refused(reply) and forwarder.allows(client):
                    reply = await forwarder.resolve(message) or reply
                if len(reply) > 0xFFFF:
                    reply = truncate(reply)
                writer.write(struct.pack("!H", len(reply)) + reply)
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                    await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            pass
        except Exception:
            log.debug("TCP DNS connection failed", exc_info=True)
        finally:
            self._tcp_tasks.discard(task)
            held = self._tcp_clients.pop(client, 1) - 1
            if held:
                self._tcp_clients[client] = held
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
