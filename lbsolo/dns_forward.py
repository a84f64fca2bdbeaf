"""Optional forwarding of names outside lbsolo's zones to upstream resolvers, with a cache.

What it is for: letting containers, LAN machines or a VPS use lbsolo as their only
resolver.  :class:`Forwarder` resolves one query message through the upstreams
(UDP, TCP when the answer is truncated), caches answers for their smallest TTL and
negative answers for the SOA's negative TTL (RFC 2308), and says which clients may
recurse at all (:meth:`Forwarder.allows`), so that an exposed lbsolo is never an open
resolver.

Anti-spoofing: every upstream query goes out from a fresh connected UDP socket (random
source port) with a random ID, and a reply is only taken when its ID, QR bit and
question match; anything else is ignored until the timeout.

What it must not do: import other lbsolo modules (dns.py imports it), block the event
loop, or raise out of :meth:`Forwarder.resolve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import CLASS, EDNS0, OPCODE, QTYPE, RCODE, RR, DNSHeader, DNSQuestion, DNSRecord

__all__ = ["ForwardConfig", "Forwarder", "lookup_addresses", "parse_upstream", "system_upstreams"]

log = logging.getLogger("lbsolo.dns")

#: UDP payload size advertised upstream and to clients.
EDNS_UDP_SIZE = 1232
#: systemd-resolved's stub listeners: forwarding to them could loop back into lbsolo
#: when resolved routes the lbsolo domain here, so the real upstreams are read instead.
_RESOLVED_STUBS = frozenset({"127.0.0.53", "127.0.0.54"})
_RESOLVED_UPSTREAMS = "/run/systemd/resolve/resolv.conf"
#: Query types never forwarded (zone transfers are not a resolver's business).
_NOT_FORWARDED = frozenset({QTYPE.AXFR, QTYPE.IXFR, QTYPE.OPT})
_ALLOW_CACHE_MAX = 4096

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    """How lbsolo forwards names outside its zones.

    ``upstreams``: ``"1.1.1.1"``, ``"1.1.1.1:5353"``, ``"[2606:4700::1111]:53"`` or a
    bare IPv6 literal; empty means the ``nameserver`` lines of ``resolv_conf``.
    ``allow``: networks (CIDR) whose clients may recurse; everyone else gets REFUSED
    for names outside the zone.  ``timeout`` is per upstream attempt.
    """

    upstreams: tuple[str, ...] = ()
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    timeout: float = 2.0
    cache_size: int = 10_000
    max_ttl: int = 3600
    max_negative_ttl: int = 300
    max_inflight: int = 512
    resolv_conf: str = "/etc/resolv.conf"
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        upstreams = [self.upstreams] if isinstance(self.upstreams, str) else list(self.upstreams)
        for text in upstreams:
            parse_upstream(text)  # validate early: a typo should fail at startup
        object.__setattr__(self, "upstreams", tuple(upstreams))
        allow = [self.allow] if isinstance(self.allow, str) else list(self.allow)
        networks = tuple(ipaddress.ip_network(str(net), strict=False) for net in allow)
        object.__setattr__(self, "allow", tuple(allow))
        object.__setattr__(self, "networks", networks)
        if self.timeout <= 0 or self.cache_size < 0 or self.max_inflight < 1:
            raise ValueError("invalid forwarding settings")


def parse_upstream(text: str, default_port: int = 53) -> tuple[str, int]:
    """``"host[:port]"`` / ``"[v6]:port"`` / ``"v6"`` -> (address literal, port)."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"invalid upstream resolver: {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    host = host.split("%", 1)[0]  # an IPv6 zone index cannot be used from here
    try:
        address = ipaddress.ip_address(host)
    except ValueError as e:
        raise ValueError(f"invalid upstream resolver (an IP address is needed): {text!r}") from e
    if not 0 < port < 65536:
        raise ValueError(f"invalid upstream resolver port: {text!r}")
    return str(address), port


def read_resolv_conf(path: str | Path) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf file (empty if unreadable)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    servers = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            servers.append(parts[1])
    return servers


def system_upstreams(
    resolv_conf: str | Path = "/etc/resolv.conf", resolved_conf: str | Path = _RESOLVED_UPSTREAMS
) -> tuple[tuple[str, int], ...]:
    """The host's resolvers, skipping systemd-resolved's stub in favour of its upstreams."""
    servers = read_resolv_conf(resolv_conf)
    if any(s in _RESOLVED_STUBS for s in servers):
        servers = [s for s in servers if s not in _RESOLVED_STUBS] + read_resolv_conf(resolved_conf)
    result: list[tuple[str, int]] = []
    for server in servers:
        with contextlib.suppress(ValueError):
            upstream = parse_upstream(server)
            if upstream[0] not in _RESOLVED_STUBS and upstream not in result:
                result.append(upstream)
    return tuple(result)


@dataclass(slots=True)
class _Entry:
    """An upstream answer (kept encoded: far smaller than dnslib objects) and when it came."""

    wire: bytes
    stored: float
    expires: float


class Forwarder:
    """Resolve queries through upstream resolvers, with a TTL-respecting cache."""

    def __init__(self, config: ForwardConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.upstream_queries = 0
        self._upstreams: tuple[tuple[str, int], ...] | None = None
        self._own: set[tuple[str, int]] = set()
        self._cache: OrderedDict[tuple[str, int, int], _Entry] = OrderedDict()
        self._inflight: dict[tuple[str, int, int], asyncio.Future[_Entry | None]] = {}
        self._allowed: dict[str, bool] = {}

    # ------------------------------------------------------------------ policy

    def allows(self, client: str) -> bool:
        """May ``client`` (an address string from a socket) use recursion?"""
        allowed = self._allowed.get(client)
        if allowed is None:
            allowed = self._check(client)
            if len(self._allowed) >= _ALLOW_CACHE_MAX:
                self._allowed.clear()
            self._allowed[client] = allowed
        return allowed

    def _check(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.config.networks)

    def ignore(self, host: str, port: int) -> None:
        """Never forward to ``host:port`` (lbsolo's own listening address)."""
        self._own.add((host, port))
        if host in ("0.0.0.0", "::", ""):
            self._own.update({("127.0.0.1", port), ("::1", port)})
        self._upstreams = None

    @property
    def upstreams(self) -> tuple[tuple[str, int], ...]:
        if self._upstreams is None:
            configured = tuple(parse_upstream(u) for u in self.config.upstreams)
            upstreams = configured or system_upstreams(self.config.resolv_conf)
            self._upstreams = tuple(u for u in upstreams if u not in self._own)
            if not self._upstreams:
                log.warning("DNS forwarding is on but no upstream resolver is known")
        return self._upstreams

    # ------------------------------------------------------------------ resolving

    async def resolve(self, query: bytes) -> bytes | None:
        """The reply to ``query`` from cache or upstream; ``None`` if it is not forwardable.

        Upstream failure gives SERVFAIL.  Never raises.
        """
        try:
            request = DNSRecord.parse(query)
        except Exception:
            return None
        try:
            header = request.header
            if header.qr or header.opcode != OPCODE.QUERY or len(request.questions) != 1:
                return None
            question = request.questions[0]
            if question.qclass != CLASS.IN or question.qtype in _NOT_FORWARDED:
                return None
            key = (str(question.qname).lower(), int(question.qtype), int(question.qclass))
            entry = self._cached(key)
            if entry is None:
                entry = await self._lookup(key)
            return _reply_for(request, entry, self.clock())
        except Exception:
            log.debug("forwarding failed", exc_info=True)
            with contextlib.suppress(Exception):
                return _reply_for(request, None, 0.0)
            return None

    def _cached(self, key: tuple[str, int, int]) -> _Entry | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry

    async def _lookup(self, key: tuple[str, int, int]) -> _Entry | None:
        # Identical questions in flight share one upstream query.
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        if len(self._inflight) >= self.config.max_inflight:
            return None
        future: asyncio.Future[_Entry | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        entry: _Entry | None = None
        try:
            entry = await self._ask_upstreams(key)
        finally:
            self._inflight.pop(key, None)
            future.set_result(entry)
        if entry is not None and entry.expires > entry.stored and self.config.cache_size:
            while len(self._cache) >= self.config.cache_size:
                self._cache.popitem(last=False)
            self._cache[key] = entry
        return entry

    async def _ask_upstreams(self, key: tuple[str, int, int]) -> _Entry | None:
        """Try each upstream in turn; the first usable answer wins."""
        last: DNSRecord | None = None
        for host, port in self.upstreams:
            qid = secrets.randbits(16)
            question = DNSRecord(DNSHeader(id=qid, rd=1), q=DNSQuestion(key[0], key[1], key[2]))
            question.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
            wire = bytes(question.pack())
            self.upstream_queries += 1
            try:
                reply = await _udp_exchange(wire, host, port, self.config.timeout, qid, key)
                if reply.header.tc:
                    reply = await _tcp_exchange(wire, host, port, self.config.timeout, qid, key)
            except (OSError, TimeoutError, ValueError) as e:
                log.debug("upstream %s:%d failed for %s: %r", host, port, key[0], e)
                continue
            if reply.header.rcode in (RCODE.SERVFAIL, RCODE.REFUSED, RCODE.NOTIMP, RCODE.FORMERR):
                last = reply  # this upstream cannot help; another one might
                continue
            return self._entry(reply)
        return None if last is None else _Entry(bytes(last.pack()), self.clock(), self.clock())

    def _entry(self, reply: DNSRecord) -> _Entry:
        now = self.clock()
        answers = [rr for rr in reply.rr if rr.rtype != QTYPE.OPT]
        if reply.header.rcode == RCODE.NOERROR and answers:
            ttl = min(min(rr.ttl for rr in answers), self.config.max_ttl)
        elif reply.header.rcode in (RCODE.NOERROR, RCODE.NXDOMAIN):
            # Negative answer: cache for min(SOA TTL, SOA minimum) when an SOA came along.
            soas = [rr for rr in reply.auth if rr.rtype == QTYPE.SOA]
            ttl = min(min(soas[0].ttl, soas[0].rdata.times[4]), self.config.max_negative_ttl) if soas else 0
        else:
            ttl = 0
        return _Entry(bytes(reply.pack()), now, now + max(ttl, 0))


async def lookup_addresses(name: str, upstream: tuple[str, int], timeout: float = 3.0) -> set[str]:
    """The A and AAAA addresses one resolver gives for `name` (CNAMEs it followed included); empty
    when it has none. Raises OSError or TimeoutError when it does not answer (the ACME preflight)."""
    qname = name.rstrip(".").lower() + "."
    found: set[str] = set()
    for qtype in (QTYPE.A, QTYPE.AAAA):
        key = (qname, int(qtype), int(CLASS.IN))
        qid = secrets.randbits(16)
        wire = bytes(DNSRecord(DNSHeader(id=qid, rd=1), q=DNSQuestion(qname, qtype, CLASS.IN)).pack())
        reply = await _udp_exchange(wire, upstream[0], upstream[1], timeout, qid, key)
        if reply.header.tc:
            reply = await _tcp_exchange(wire, upstream[0], upstream[1], timeout, qid, key)
        found.update(str(rr.rdata) for rr in reply.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA))
    return found


def _matches(reply: DNSRecord, qid: int, key: tuple[str, int, int]) -> bool:
    if reply.header.id != qid or not reply.header.qr or len(reply.questions) != 1:
        return False
    q = reply.questions[0]
    return (str(q.qname).lower(), int(q.qtype), int(q.qclass)) == key


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, accept: Callable[[bytes], DNSRecord | None]) -> None:
        self.accept = accept
        self.result: asyncio.Future[DNSRecord] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.result.done():
            reply = self.accept(data)
            if reply is not None:
                self.result.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if not self.result.done():  # e.g. ICMP port unreachable: fail over at once
            self.result.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.result.done():
            self.result.set_exception(exc or ConnectionError("upstream socket closed"))


def _acceptor(qid: int, key: tuple[str, int, int]) -> Callable[[bytes], DNSRecord | None]:
    def accept(data: bytes) -> DNSRecord | None:
        try:
            reply = DNSRecord.parse(data)
        except Exception:
            return None
        return reply if _matches(reply, qid, key) else None  # spoofed or stale: keep waiting

    return accept


async def _udp_exchange(
    wire: bytes, host: str, port: int, timeout: float, qid: int, key: tuple[str, int, int]
) -> DNSRecord:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _UpstreamProtocol(_acceptor(qid, key)), remote_addr=(host, port)
    )
    try:
        transport.sendto(wire)
        async with asyncio.timeout(timeout):
            return await protocol.result
    finally:
        transport.close()
        if not protocol.result.done():
            protocol.result.cancel()
        elif not protocol.result.cancelled():
            protocol.result.exception()  # mark retrieved: no "never retrieved" warning


async def _tcp_exchange(
    wire: bytes, host: str, port: int, timeout: float, qid: int, key: tuple[str, int, int]
) -> DNSRecord:
    accept = _acceptor(qid, key)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = accept(await reader.readexactly(size))
                if reply is not None:
                    return reply
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _reply_for(request: DNSRecord, entry: _Entry | None, now: float) -> bytes:
    """The client's reply: its ID and question, the upstream's records with aged TTLs."""
    header = DNSHeader(id=request.header.id, qr=1, opcode=request.header.opcode, rd=request.header.rd, ra=1)
    reply = DNSRecord(header, q=request.questions[0])
    if entry is None:
        header.rcode = RCODE.SERVFAIL
    else:
        upstream = DNSRecord.parse(entry.wire)
        header.rcode = upstream.header.rcode
        age = max(0, int(now - entry.stored))
        for section, add in ((upstream.rr, reply.add_answer), (upstream.auth, reply.add_auth)):
            add(*_aged(section, age))
        reply.add_ar(*_aged([rr for rr in upstream.ar if rr.rtype != QTYPE.OPT], age))
    if any(rr.rtype == QTYPE.OPT for rr in request.ar):
        reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
    return bytes(reply.pack())


def _aged(records: Iterable[RR], age: int) -> list[RR]:
    return [RR(rr.rname, rr.rtype, rr.rclass, max(0, rr.ttl - age), rr.rdata) for rr in records]
