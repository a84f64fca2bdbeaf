"""lbsolo's DNS zone and its answers: pure, no sockets.

:class:`Zone` is an immutable description of what to serve (the domain, the apps, their custom
domains, the addresses). :func:`answer` is a pure function ``query bytes -> reply bytes | None``
(``None`` = drop the packet): decisions are made with dnslib, and the encoded reply is cached per
zone object and per (lowercased question, EDNS present) so that repeated queries only patch the
message ID, the RD bit and the question bytes (which keeps the case the client asked with).
:func:`truncate` and :func:`udp_limit` fit a reply to UDP.

What it must not do: open sockets, read the clock or state, or import lbsolo modules (it logs
only a message it drops).
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from dnslib import AAAA, CLASS, EDNS0, NS, OPCODE, QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSRecord

__all__ = ["EDNS_UDP_SIZE", "PLAIN_UDP_SIZE", "Zone", "answer", "refused", "truncate", "udp_limit"]

log = logging.getLogger("lbsolo.dns")

#: UDP payload size we advertise in our own OPT record, and the most we send over UDP.
EDNS_UDP_SIZE = 1232
#: Classic DNS limit for UDP replies to queries without EDNS0.
PLAIN_UDP_SIZE = 512
#: Encoded answers kept per zone before the cache is emptied (bounds memory under
#: random-name floods).
CACHE_MAX_ENTRIES = 4096
#: How many zone objects keep a cache at once.
CACHE_MAX_ZONES = 4

_SOA_REFRESH = 3600
_SOA_RETRY = 600
_SOA_EXPIRE = 86400

# Name classification results.
_OUTSIDE = 0
_APEX = 1
_MEMBER = 2
_NXDOMAIN = 3

_CLASS_IN = 1
_CLASS_ANY = 255
_BADVERS = 16  # extended RCODE: upper 8 bits in the OPT record, lower 4 (0) in the header

# Our OPT pseudo-record, exactly as dnslib packs EDNS0(udp_len=EDNS_UDP_SIZE).
_OPT_WIRE = b"\x00\x00\x29" + struct.pack("!H", EDNS_UDP_SIZE) + b"\x00\x00\x00\x00\x00\x00"


@dataclass(frozen=True, slots=True)
class Zone:
    """What the DNS server answers.  Immutable: swap a whole new Zone in to change it.

    ``domain`` is stored lowercase without a trailing dot; ``apps`` are stored
    lowercase.  ``ipv4``/``ipv6`` are validated address literals.

    ``domains`` are custom app domains (``example.com``, ``www.shop.test``): each exact
    name is answered with the same addresses as the lbsolo domain, as the apex of its
    own one-name zone (SOA and NS there, NODATA with that SOA for other types).  Names
    *below* a custom domain are not ours: they are refused (or forwarded, when
    forwarding is on), so ``mail.example.com`` keeps resolving upstream, unless a
    wildcard entry ``*.example.com`` claims them.  A mapping (domain -> app) is accepted
    too; only its keys matter here.
    """

    domain: str = "lbsolo.localhost"
    ipv4: tuple[str, ...] = ("127.0.0.1",)
    ipv6: tuple[str, ...] = ()
    apps: frozenset[str] = frozenset()
    strict: bool = False
    ttl: int = 5
    domains: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", _dns_name(self.domain))
        object.__setattr__(self, "ipv4", _addresses(self.ipv4, ipaddress.IPv4Address))
        object.__setattr__(self, "ipv6", _addresses(self.ipv6, ipaddress.IPv6Address))
        apps = [self.apps] if isinstance(self.apps, str) else self.apps
        object.__setattr__(self, "apps", frozenset(str(a).lower() for a in apps))
        if not 0 <= int(self.ttl) < 2**31:
            raise ValueError(f"invalid TTL: {self.ttl!r}")
        object.__setattr__(self, "ttl", int(self.ttl))
        domains = [self.domains] if isinstance(self.domains, str) else self.domains
        object.__setattr__(self, "domains", frozenset(_dns_name(d) for d in domains))


def _dns_name(value: object) -> str:
    """``value`` lowercased without the trailing dot, or ValueError if it is no DNS name."""
    name = str(value).strip().rstrip(".").lower()
    if not name or not name.isascii() or len(name) > 253:
        raise ValueError(f"invalid DNS name: {value!r}")
    labels = name.split(".")
    if any(not 0 < len(label) <= 63 or label.isspace() for label in labels):
        raise ValueError(f"invalid DNS name: {value!r}")
    if "*" in name and ("*" in name[1:] or len(labels) < 2 or labels[0] != "*"):
        raise ValueError(f"invalid DNS name (a wildcard must be a leading '*.'): {value!r}")
    return name


def _addresses(
    values: str | Iterable[str], kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
) -> tuple[str, ...]:
    items = [values] if isinstance(values, str) else list(values)
    return tuple(str(kind(str(v))) for v in items)


# --------------------------------------------------------------------------- answer()

# zone id -> (zone, {(lowercased wire qname, qtype+qclass bytes, edns?): reply template})
# The zone object itself is kept in the value so its id cannot be reused while cached.
_caches: dict[int, tuple[Zone, dict[tuple[bytes, bytes, bool], bytes | None]]] = {}


def _zone_cache(zone: Zone) -> dict[tuple[bytes, bytes, bool], bytes | None]:
    entry = _caches.get(id(zone))
    if entry is not None and entry[0] is zone:
        return entry[1]
    while len(_caches) >= CACHE_MAX_ZONES:
        _caches.pop(next(iter(_caches)), None)
    cache: dict[tuple[bytes, bytes, bool], bytes | None] = {}
    _caches[id(zone)] = (zone, cache)
    return cache


_MISS = object()  # _answer_fast(): "not the simple shape, ask the slow path"


def answer(query: bytes, zone: Zone) -> bytes | None:
    """Build the reply to one DNS message, or return ``None`` to drop it.

    Dropped: anything shorter than a header, responses (QR set), and messages that do
    not parse.  Never raises.
    """
    try:
        if type(query) is not bytes:
            query = bytes(query)
        fast = _answer_fast(query, zone)
        if fast is not _MISS:
            return fast  # type: ignore[return-value]
        return _answer_slow(query, zone)
    except Exception:
        log.debug("dropping DNS message that could not be answered", exc_info=True)
        return None


def _answer_fast(query: bytes, zone: Zone) -> bytes | object | None:
    """Serve the common case (one plain question, optional bare OPT) from the cache.

    Returns ``_MISS`` when the packet is not of that shape; the slow path decides then.
    """
    n = len(query)
    if n < 12:
        return None
    flags = query[2]
    if flags & 0x80:  # a response, not a query
        return None
    # opcode QUERY, QDCOUNT=1, ANCOUNT=0, NSCOUNT=0
    if flags & 0x78 or query[4:10] != b"\x00\x01\x00\x00\x00\x00":
        return _MISS
    i = 12
    while True:
        if i >= n:
            return _MISS
        length = query[i]
        if length == 0:
            i += 1
            break
        if length & 0xC0:  # compression pointer / extended label type in the question
            return _MISS
        i += length + 1
    qend = i + 4
    if qend > n:
        return _MISS
    arcount = query[10:12]
    if arcount == b"\x00\x00" and qend == n:
        edns = False
    elif (
        arcount == b"\x00\x01"
        and n >= qend + 11
        and query[qend : qend + 3] == b"\x00\x00\x29"
        and query[qend + 6] == 0  # EDNS version 0; others get BADVERS from the slow path
        and n == qend + 11 + int.from_bytes(query[qend + 9 : qend + 11], "big")
    ):
        # Options (e.g. a dig-style COOKIE) are ignored, as RFC 7873 allows a server that
        # does not implement them; the cached reply carries our bare OPT record.
        edns = True
    else:
        return _MISS
    qname = query[12:i]
    # bytes.lower() only touches ASCII letters; label lengths are <= 63 so never change.
    key = (qname.lower(), query[i:qend], edns)
    cache = _zone_cache(zone)
    try:
        template = cache[key]
    except KeyError:
        canonical = (
            b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00"
            + (b"\x00\x01" if edns else b"\x00\x00")
            + key[0]
            + key[1]
            + (_OPT_WIRE if edns else b"")
        )
        template = _answer_slow(canonical, zone)
        if template is not None and template[12:qend] != canonical[12:qend]:
            return _MISS  # dnslib re-encoded the question differently: don't patch, answer slowly
        if len(cache) >= CACHE_MAX_ENTRIES:
            cache.clear()
        cache[key] = template
    if template is None:
        return None
    # Same question length in template and query: copy ID, RD bit and the question as asked.
    return query[:2] + bytes((template[2] | (flags & 0x01),)) + template[3:12] + query[12:qend] + template[qend:]


def _answer_slow(query: bytes, zone: Zone) -> bytes | None:
    """Parse with dnslib and build the reply.  The reference semantics for answer()."""
    if len(query) < 12 or query[2] & 0x80:
        return None
    try:
        request = DNSRecord.parse(query)
    except Exception:
        return None
    if request.header.qr:
        return None
    req_header = request.header
    header = DNSHeader(id=req_header.id, bitmap=0, qr=1, opcode=req_header.opcode, rd=req_header.rd)
    reply = DNSRecord(header)
    opts = [rr for rr in request.ar if rr.rtype == QTYPE.OPT]
    if opts:
        reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
        if (opts[0].ttl >> 16) & 0xFF != 0:  # an EDNS version we do not speak (RFC 6891 6.1.3)
            reply.questions = list(request.questions)
            reply.ar[-1] = EDNS0(udp_len=EDNS_UDP_SIZE, ext_rcode=_BADVERS >> 4)
            return bytes(reply.pack())

    if req_header.opcode != OPCODE.QUERY:
        reply.questions = list(request.questions)
        header.rcode = RCODE.NOTIMP
        return bytes(reply.pack())
    if len(request.questions) != 1:
        header.rcode = RCODE.FORMERR
        return bytes(reply.pack())

    question = request.questions[0]
    reply.questions = [question]
    kind, apex = _classify(question.qname.label, zone)
    if kind == _OUTSIDE or question.qclass not in (_CLASS_IN, _CLASS_ANY):
        header.rcode = RCODE.REFUSED
        return bytes(reply.pack())

    header.aa = 1
    soa = _soa(zone, apex)
    if kind == _NXDOMAIN:
        header.rcode = RCODE.NXDOMAIN
        reply.add_auth(soa)
        return bytes(reply.pack())

    qname = question.qname
    qtype = question.qtype
    ttl = zone.ttl
    records: list[RR] = []
    if qtype in (QTYPE.A, QTYPE.ANY):
        records += [RR(qname, QTYPE.A, CLASS.IN, ttl, A(ip)) for ip in zone.ipv4]
    if qtype in (QTYPE.AAAA, QTYPE.ANY):
        records += [RR(qname, QTYPE.AAAA, CLASS.IN, ttl, AAAA(ip)) for ip in zone.ipv6]
    if kind == _APEX:
        if qtype in (QTYPE.SOA, QTYPE.ANY):
            records.append(RR(qname, QTYPE.SOA, CLASS.IN, ttl, soa.rdata))
        if qtype in (QTYPE.NS, QTYPE.ANY):
            records.append(RR(qname, QTYPE.NS, CLASS.IN, ttl, NS(zone.domain + ".")))
        if qtype == QTYPE.NS:
            # Glue: the name server of every zone we serve is the lbsolo apex itself.
            extra = [RR(zone.domain, QTYPE.A, CLASS.IN, ttl, A(ip)) for ip in zone.ipv4]
            extra += [RR(zone.domain, QTYPE.AAAA, CLASS.IN, ttl, AAAA(ip)) for ip in zone.ipv6]
            reply.ar[:0] = extra
    if records:
        reply.add_answer(*records)
    else:
        reply.add_auth(soa)  # NODATA
    return bytes(reply.pack())


def _classify(labels: tuple[bytes, ...], zone: Zone) -> tuple[int, str]:
    """How ``labels`` relate to ``zone``, and the apex of the zone that holds them."""
    lowered = tuple(label.lower() for label in labels)
    apex = tuple(zone.domain.encode("ascii").split(b"."))
    size = len(apex)
    # A label holding a dot or non-ASCII bytes can never equal one of our names.
    name = b".".join(lowered).decode("ascii", "replace") if all(b"." not in x for x in lowered) else ""
    if len(lowered) >= size and lowered[len(lowered) - size :] == apex:
        if len(lowered) == size:
            return _APEX, zone.domain
        if not zone.strict or name in zone.domains:
            return _MEMBER, zone.domain
        if len(lowered) == size + 1 and lowered[0].decode("ascii", "replace") in zone.apps:
            return _MEMBER, zone.domain
        return _NXDOMAIN, zone.domain
    if name in zone.domains:
        return _APEX, name
    # "*.shop.test" covers every name below shop.test (the closest wildcard wins); the
    # SOA for negative answers is then shop.test's.
    for i in range(1, len(lowered)):
        parent = name.split(".", i)[-1]
        if "*." + parent in zone.domains:
            return _MEMBER, parent
    return _OUTSIDE, ""


def _soa(zone: Zone, apex: str) -> RR:
    times = (1, _SOA_REFRESH, _SOA_RETRY, _SOA_EXPIRE, zone.ttl)
    rdata = SOA(zone.domain + ".", "hostmaster." + zone.domain + ".", times)
    return RR(apex + ".", QTYPE.SOA, CLASS.IN, zone.ttl, rdata)


def _question_end(message: bytes) -> int:
    """Offset just past the first question of ``message`` (no pointers expected there)."""
    i = 12
    while message[i]:
        if message[i] & 0xC0:
            return i + 2 + 4
        i += message[i] + 1
    return i + 1 + 4


def truncate(reply: bytes) -> bytes:
    """Header + question of ``reply`` with TC set (plus our OPT record when it had one)."""
    if len(reply) < 12:
        return reply
    qdcount = int.from_bytes(reply[4:6], "big")
    qend = _question_end(reply) if qdcount else 12
    if qend > len(reply):
        qend, qdcount = 12, 0
    opt = reply.endswith(_OPT_WIRE) and reply[10:12] != b"\x00\x00"
    head = reply[:2] + bytes((reply[2] | 0x02, reply[3]))
    counts = struct.pack("!HHHH", 1 if qdcount else 0, 0, 0, 1 if opt else 0)
    return head + counts + reply[12:qend] + (_OPT_WIRE if opt else b"")


def udp_limit(query: bytes) -> int:
    """Largest UDP reply for ``query``: 512, or the EDNS0 size it advertises (capped)."""
    try:
        request = DNSRecord.parse(query)
    except Exception:
        return PLAIN_UDP_SIZE
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(PLAIN_UDP_SIZE, min(int(rr.rclass), EDNS_UDP_SIZE))
    return PLAIN_UDP_SIZE


# --------------------------------------------------------------------------- server


def refused(reply: bytes) -> bool:
    """Is ``reply`` our REFUSED for a standard query (a name outside our zones)?"""
    return reply[3] & 0x0F == RCODE.REFUSED and not reply[2] & 0x7C
