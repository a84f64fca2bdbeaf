"""Tests for lbsolo.dns: the pure answer() function and the asyncio UDP/TCP server."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbsolo.dns import DNSServer
from lbsolo.dns_zone import Zone, _answer_slow, answer, truncate

pytestmark = pytest.mark.timeout(30)

ZONE = Zone()
ZONE6 = Zone(ipv4=("10.0.0.1", "10.0.0.2"), ipv6=("fd00::1",))
STRICT = Zone(apps=frozenset({"web", "API"}), strict=True)


def make(name: str, rdtype: str = "A", **kwargs: object) -> dns.message.QueryMessage:
    return dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]


def ask(
    name: str, rdtype: str = "A", zone: Zone = ZONE, **kwargs: object
) -> tuple[dns.message.Message, dns.message.Message]:
    query = make(name, rdtype, **kwargs)
    raw = answer(query.to_wire(), zone)
    assert raw is not None
    reply = dns.message.from_wire(raw)
    assert query.is_response(reply)
    return query, reply


def rdatas(reply: dns.message.Message, section: str = "answer") -> list[str]:
    return sorted(rd.to_text() for rrset in getattr(reply, section) for rd in rrset)


def rtypes(reply: dns.message.Message, section: str = "answer") -> set[str]:
    return {dns.rdatatype.to_text(rrset.rdtype) for rrset in getattr(reply, section)}


def assert_nodata(reply: dns.message.Message, zone: Zone = ZONE) -> None:
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert reply.answer == []
    assert rtypes(reply, "authority") == {"SOA"}
    assert reply.authority[0].name.to_text() == zone.domain + "."


# --------------------------------------------------------------------------- Zone


def test_zone_normalises_fields() -> None:
    zone = Zone(domain="LbSolo.Example.", ipv4=["127.0.0.2"], apps=frozenset({"Web"}))  # type: ignore[arg-type]
    assert zone.domain == "lbsolo.example"
    assert zone.ipv4 == ("127.0.0.2",)
    assert zone.apps == frozenset({"web"})
    assert Zone(ipv6=("0:0::1",)).ipv6 == ("::1",)
    hash(zone)


@pytest.mark.parametrize(
    "kwargs",
    [{"domain": ""}, {"domain": "."}, {"domain": "a..b"}, {"ipv4": ("::1",)}, {"ipv6": ("1.2.3.4",)}, {"ttl": -1}],
)
def test_zone_rejects_invalid(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Zone(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- answer()


@pytest.mark.parametrize(
    "name", ["lbsolo.localhost", "lbsolo.localhost.", "web.lbsolo.localhost", "a.b.lbsolo.localhost"]
)
def test_a_for_apex_and_wildcard(name: str) -> None:
    _, reply = ask(name)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert reply.flags & dns.flags.QR
    assert rdatas(reply) == ["127.0.0.1"]
    assert reply.answer[0].ttl == 5
    assert reply.answer[0].name == dns.name.from_text(name)


def test_multiple_addresses_and_ttl() -> None:
    _, reply = ask("web.lbsolo.localhost", zone=Zone(ipv4=("10.0.0.1", "10.0.0.2"), ttl=30))
    assert rdatas(reply) == ["10.0.0.1", "10.0.0.2"]
    assert reply.answer[0].ttl == 30


def test_aaaa_with_ipv6() -> None:
    _, reply = ask("web.lbsolo.localhost", "AAAA", zone=ZONE6)
    assert rdatas(reply) == ["fd00::1"]
    assert rtypes(reply) == {"AAAA"}


def test_aaaa_without_ipv6_is_nodata_with_soa() -> None:
    _, reply = ask("web.lbsolo.localhost", "AAAA")
    assert_nodata(reply)
    soa = reply.authority[0][0]
    assert soa.mname.to_text() == "lbsolo.localhost."
    assert soa.minimum == ZONE.ttl


def test_a_without_ipv4_is_nodata() -> None:
    _, reply = ask("web.lbsolo.localhost", "A", zone=Zone(ipv4=(), ipv6=("::1",)))
    assert_nodata(reply)


def test_any_returns_both_families() -> None:
    _, reply = ask("web.lbsolo.localhost", "ANY", zone=ZONE6)
    assert rdatas(reply) == ["10.0.0.1", "10.0.0.2", "fd00::1"]
    _, apex = ask("lbsolo.localhost", "ANY", zone=ZONE6)
    assert rtypes(apex) == {"A", "AAAA", "SOA", "NS"}


def test_soa_and_ns_at_apex() -> None:
    _, reply = ask("lbsolo.localhost", "SOA")
    assert rtypes(reply) == {"SOA"}
    assert reply.answer[0][0].rname.to_text() == "hostmaster.lbsolo.localhost."
    _, reply = ask("lbsolo.localhost", "NS")
    assert rdatas(reply) == ["lbsolo.localhost."]
    assert rdatas(reply, "additional") == ["127.0.0.1"]  # glue for the apex name server


@pytest.mark.parametrize("rdtype", ["SOA", "NS", "MX", "TXT", "CAA", "HTTPS"])
def test_other_types_below_apex_are_nodata(rdtype: str) -> None:
    _, reply = ask("web.lbsolo.localhost", rdtype)
    assert_nodata(reply)


def test_other_types_at_apex_are_nodata() -> None:
    _, reply = ask("lbsolo.localhost", "MX")
    assert_nodata(reply)


def test_case_insensitive_and_question_echoed_as_asked() -> None:
    for name in ["WeB.LbSoLo.LOCALHOST", "web.lbsolo.localhost", "WEB.LBSOLO.LOCALHOST"]:
        query, reply = ask(name)
        assert rdatas(reply) == ["127.0.0.1"]
        assert reply.question[0].name.to_text() == name + "."
        assert query.to_wire()[12:] in answer(query.to_wire(), ZONE)  # type: ignore[operator]


def test_id_and_rd_echoed() -> None:
    for ident in (0, 1, 0xBEEF, 0xFFFF):
        query = make("web.lbsolo.localhost")
        query.id = ident
        for rd in (True, False):
            if rd:
                query.flags |= dns.flags.RD
            else:
                query.flags &= ~dns.flags.RD
            raw = answer(query.to_wire(), ZONE)
            assert raw is not None
            reply = dns.message.from_wire(raw)
            assert reply.id == ident
            assert bool(reply.flags & dns.flags.RD) is rd
            assert not reply.flags & dns.flags.RA


def test_strict_known_apps_and_apex() -> None:
    for name in ["web.lbsolo.localhost", "Api.lbsolo.localhost", "lbsolo.localhost"]:
        _, reply = ask(name, zone=STRICT)
        assert reply.rcode() == dns.rcode.NOERROR
        assert rdatas(reply) == ["127.0.0.1"]


@pytest.mark.parametrize("name", ["nope.lbsolo.localhost", "a.web.lbsolo.localhost", "x.y.lbsolo.localhost"])
@pytest.mark.parametrize("rdtype", ["A", "AAAA", "MX"])
def test_strict_unknown_name_is_nxdomain_with_soa(name: str, rdtype: str) -> None:
    _, reply = ask(name, rdtype, zone=STRICT)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.AA
    assert reply.answer == []
    assert rtypes(reply, "authority") == {"SOA"}


def test_non_strict_wildcard_answers_any_name_under_domain() -> None:
    for name in ["nope.lbsolo.localhost", "a.b.c.lbsolo.localhost", "_srv._tcp.lbsolo.localhost"]:
        _, reply = ask(name, zone=Zone(apps=frozenset({"web"})))
        assert rdatas(reply) == ["127.0.0.1"]


@pytest.mark.parametrize("name", ["example.com", "localhost", "xlbsolo.localhost", "lbsolo.localhost.evil.com", "."])
def test_names_outside_domain_are_refused(name: str) -> None:
    _, reply = ask(name)
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.answer == [] and reply.authority == []
    assert not reply.flags & dns.flags.AA


def test_non_in_class_is_refused() -> None:
    query = dns.message.make_query("version.bind", "TXT", rdclass=dns.rdataclass.CH)
    reply = dns.message.from_wire(answer(query.to_wire(), ZONE))  # type: ignore[arg-type]
    assert reply.rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x12\x34\x01\x00", b"\xff" * 11, b"garbage" * 9, bytes(range(256))])
def test_garbage_is_dropped(data: bytes) -> None:
    assert answer(data, ZONE) is None


def test_response_packets_are_dropped() -> None:
    _, reply = ask("web.lbsolo.localhost")
    assert answer(reply.to_wire(), ZONE) is None
    # A response to something outside our zone, too (no amplification loops).
    response = dns.message.make_response(make("example.com"))
    assert answer(response.to_wire(), ZONE) is None


def test_non_query_opcode_is_notimp() -> None:
    query = make("web.lbsolo.localhost")
    query.set_opcode(dns.opcode.NOTIFY)
    reply = dns.message.from_wire(answer(query.to_wire(), ZONE))  # type: ignore[arg-type]
    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.opcode() == dns.opcode.NOTIFY


def test_question_count_other_than_one_is_formerr() -> None:
    empty = struct.pack("!HHHHHH", 0x4242, 0x0100, 0, 0, 0, 0)
    raw = answer(empty, ZONE)
    assert raw is not None
    reply = dnslib.DNSRecord.parse(raw)
    assert (reply.header.id, reply.header.rcode, reply.header.qr) == (0x4242, dnslib.RCODE.FORMERR, 1)

    two = dnslib.DNSRecord(dnslib.DNSHeader(id=7))
    two.add_question(dnslib.DNSQuestion("a.lbsolo.localhost"), dnslib.DNSQuestion("b.lbsolo.localhost"))
    reply = dnslib.DNSRecord.parse(answer(bytes(two.pack()), ZONE))  # type: ignore[arg-type]
    assert reply.header.rcode == dnslib.RCODE.FORMERR


def test_edns_opt_is_echoed() -> None:
    _, reply = ask("web.lbsolo.localhost", use_edns=0, payload=4096)
    assert reply.edns == 0
    assert rdatas(reply) == ["127.0.0.1"]
    # With an option (cookie), the non-cached path answers the same way.
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")
    _, reply = ask("WEB.lbsolo.localhost", use_edns=0, options=[cookie])
    assert reply.edns == 0
    assert rdatas(reply) == ["127.0.0.1"]
    _, plain = ask("web.lbsolo.localhost")
    assert plain.edns == -1


def test_refused_and_nxdomain_keep_edns() -> None:
    _, reply = ask("example.com", use_edns=0)
    assert reply.edns == 0 and reply.rcode() == dns.rcode.REFUSED
    _, reply = ask("zzz.lbsolo.localhost", use_edns=0, zone=STRICT)
    assert reply.edns == 0 and reply.rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(
    ("name", "rdtype", "kwargs"),
    [
        ("WeB.lbsolo.localhost", "A", {}),
        ("lbsolo.localhost", "AAAA", {}),
        ("Lbsolo.Localhost", "SOA", {"use_edns": 0}),
        ("lbsolo.localhost", "NS", {}),
        ("nope.LBSOLO.localhost", "A", {}),
        ("example.com", "A", {"use_edns": 0}),
        ("a.b.lbsolo.localhost", "ANY", {}),
    ],
)
def test_cached_path_matches_uncached(name: str, rdtype: str, kwargs: dict[str, object]) -> None:
    for zone in (ZONE, ZONE6, STRICT):
        wire = make(name, rdtype, **kwargs).to_wire()
        fast = answer(wire, zone)
        fast_again = answer(wire, zone)  # served from the cache
        slow = _answer_slow(wire, zone)
        assert fast is not None and slow is not None
        assert fast == fast_again
        # Byte layout may differ in name compression; the messages must be equal.
        assert dns.message.from_wire(fast) == dns.message.from_wire(slow)
        assert dns.message.from_wire(fast).question[0].name.to_text() == dns.name.from_text(name).to_text()


def test_zone_swap_is_not_served_from_stale_cache() -> None:
    wire = make("web.lbsolo.localhost").to_wire()
    first = answer(wire, Zone(ipv4=("10.1.1.1",)))
    second = answer(wire, Zone(ipv4=("10.2.2.2",)))
    assert rdatas(dns.message.from_wire(first)) == ["10.1.1.1"]  # type: ignore[arg-type]
    assert rdatas(dns.message.from_wire(second)) == ["10.2.2.2"]  # type: ignore[arg-type]


def test_truncate_keeps_header_and_question() -> None:
    many = Zone(ipv4=tuple(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(60)))
    query = make("Web.lbsolo.localhost")
    raw = answer(query.to_wire(), many)
    assert raw is not None and len(raw) > 512
    small = truncate(raw)
    reply = dns.message.from_wire(small)
    assert reply.flags & dns.flags.TC
    assert query.is_response(reply)
    assert reply.answer == [] and reply.edns == -1
    assert reply.question[0].name.to_text() == "Web.lbsolo.localhost."

    query = make("web.lbsolo.localhost", use_edns=0)
    reply = dns.message.from_wire(truncate(answer(query.to_wire(), many)))  # type: ignore[arg-type]
    assert reply.flags & dns.flags.TC and reply.edns == 0


# --------------------------------------------------------------------------- property tests


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = answer(data, ZONE)
    assert result is None or isinstance(result, bytes)
    result = answer(data, STRICT)
    assert result is None or isinstance(result, bytes)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["web.lbsolo.localhost", "lbsolo.localhost", "example.com", "A.B.LBSOLO.localhost"]),
    st.sampled_from(["A", "AAAA", "SOA", "NS", "ANY", "MX"]),
    st.booleans(),
    st.data(),
)
def test_truncated_and_mutated_queries_never_raise(name: str, rdtype: str, edns: bool, data: st.DataObject) -> None:
    wire = make(name, rdtype, use_edns=0 if edns else None).to_wire()
    cut = data.draw(st.integers(min_value=0, max_value=len(wire)))
    for candidate in (wire[:cut], wire[:cut] + b"\x00" * 3):
        result = answer(candidate, ZONE)
        assert result is None or isinstance(result, bytes)
    pos = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    value = data.draw(st.integers(min_value=0, max_value=255))
    mutated = wire[:pos] + bytes((value,)) + wire[pos + 1 :]
    result = answer(mutated, STRICT)
    assert result is None or isinstance(result, bytes)


label = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.lists(label, min_size=0, max_size=4), st.sampled_from(["A", "AAAA", "TXT"]), st.integers(0, 0xFFFF))
def test_well_formed_queries_get_matching_replies(labels: list[str], rdtype: str, ident: int) -> None:
    name = ".".join([*labels, "LbSolo.localhost"])
    query = make(name, rdtype)
    query.id = ident
    raw = answer(query.to_wire(), ZONE6)
    assert raw is not None
    reply = dns.message.from_wire(raw)
    assert query.is_response(reply)
    assert reply.question[0].name.to_text() == name + "."
    assert reply.rcode() == dns.rcode.NOERROR
    assert bool(reply.answer) is (rdtype != "TXT")


# --------------------------------------------------------------------------- real sockets


async def on_a_server(test: Callable[[DNSServer], Awaitable[None]], zone: Zone = ZONE) -> None:
    """`test` against a DNSServer on a free port, stopped afterwards."""
    server = DNSServer("127.0.0.1", 0, zone)
    await server.start()
    try:
        assert server.port != 0
        await test(server)
    finally:
        await server.stop()


async def udp(server: DNSServer, name: str, rdtype: str = "A", **kwargs: object) -> dns.message.Message:
    query = make(name, rdtype, **kwargs)
    return await asyncio.to_thread(dns.query.udp, query, "127.0.0.1", timeout=2, port=server.port)


async def tcp(server: DNSServer, name: str, rdtype: str = "A") -> dns.message.Message:
    query = make(name, rdtype)
    return await asyncio.to_thread(dns.query.tcp, query, "127.0.0.1", timeout=2, port=server.port)


def test_server_answers_over_udp_and_tcp(run) -> None:
    async def check(server: DNSServer) -> None:
        for ask_ in (udp, tcp):
            reply = await ask_(server, "Web.lbsolo.localhost")
            assert rdatas(reply) == ["127.0.0.1"]
            assert reply.question[0].name.to_text() == "Web.lbsolo.localhost."
            reply = await ask_(server, "example.com")
            assert reply.rcode() == dns.rcode.REFUSED

    run(lambda: on_a_server(check))


def test_server_survives_garbage_over_udp(run) -> None:
    async def check(server: DNSServer) -> None:
        junk = [b"", b"\x00", b"\xff" * 12, b"\x00" * 12 + b"\xc0\x0c" * 20, bytes(range(256)) * 4, b"x" * 4000]
        reply = dns.message.make_response(make("web.lbsolo.localhost")).to_wire()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for data in [*junk, reply]:
                sock.sendto(data, ("127.0.0.1", server.port))
        answer_ = await udp(server, "web.lbsolo.localhost")
        assert rdatas(answer_) == ["127.0.0.1"]

    run(lambda: on_a_server(check))


def test_set_zone_swap_takes_effect(run) -> None:
    async def check(server: DNSServer) -> None:
        reply = await udp(server, "web.lbsolo.localhost")
        assert rdatas(reply) == ["127.0.0.1"]
        server.set_zone(Zone(ipv4=("10.9.9.9",), apps=frozenset({"web"}), strict=True))
        assert rdatas(await udp(server, "web.lbsolo.localhost")) == ["10.9.9.9"]
        assert rdatas(await tcp(server, "web.lbsolo.localhost")) == ["10.9.9.9"]
        assert (await udp(server, "other.lbsolo.localhost")).rcode() == dns.rcode.NXDOMAIN

    run(lambda: on_a_server(check))


def test_udp_truncates_large_replies(run) -> None:
    many = Zone(ipv4=tuple(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(100)))  # ~1650 bytes

    async def check(server: DNSServer) -> None:
        reply = await udp(server, "web.lbsolo.localhost")
        assert reply.flags & dns.flags.TC and reply.answer == []
        big = await udp(server, "web.lbsolo.localhost", use_edns=0, payload=4096)
        assert big.flags & dns.flags.TC  # 100 A records exceed our 1232-byte UDP cap
        small = Zone(ipv4=tuple(f"10.0.0.{i}" for i in range(1, 41)))  # ~660 bytes
        server.set_zone(small)
        fits = await udp(server, "web.lbsolo.localhost", use_edns=0, payload=1232)
        assert not fits.flags & dns.flags.TC and len(rdatas(fits)) == 40
        server.set_zone(many)
        full = await tcp(server, "web.lbsolo.localhost")
        assert not full.flags & dns.flags.TC and len(rdatas(full)) == 100

    run(lambda: on_a_server(check, many))


def test_tcp_pipelined_queries_and_bad_framing(run) -> None:
    async def check(server: DNSServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            queries = [make(n) for n in ("a.lbsolo.localhost", "b.lbsolo.localhost", "example.com")]
            # A response packet in the middle is skipped without closing the connection.
            junk = dns.message.make_response(make("x.lbsolo.localhost")).to_wire()
            payload = b"".join(struct.pack("!H", len(w)) + w for w in [queries[0].to_wire(), junk])
            payload += b"".join(struct.pack("!H", len(q.to_wire())) + q.to_wire() for q in queries[1:])
            writer.write(payload)
            await writer.drain()
            for query in queries:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = dns.message.from_wire(await reader.readexactly(size))
                assert query.is_response(reply)
            writer.write(b"\x00\x03abc")  # a "message" too short to be DNS: framing is broken
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 2) == b""
        finally:
            writer.close()
            await writer.wait_closed()

    run(lambda: on_a_server(check))


def test_stop_closes_idle_tcp_connections(run) -> None:
    async def main() -> None:
        server = DNSServer("127.0.0.1", 0)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"\x00")  # half a length prefix, then nothing
            await writer.drain()
            await asyncio.sleep(0.05)
            await asyncio.wait_for(server.stop(), 3)
            assert await asyncio.wait_for(reader.read(), 2) == b""
        finally:
            writer.close()
            await writer.wait_closed()
        await server.stop()  # idempotent

    run(main)


def test_fixed_port_with_busy_tcp_fails_cleanly(run) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        async def main() -> None:
            server = DNSServer("127.0.0.1", port)
            with pytest.raises(OSError):
                await server.start()
            await server.stop()

        run(main)


# --------------------------------------------------------------------------- EDNS details


def test_dig_style_cookie_query_is_served_from_the_fast_path() -> None:
    from lbsolo.dns_zone import _MISS, _answer_fast

    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    query = make("Web.lbsolo.localhost", use_edns=0, payload=1232, options=[cookie])
    query.flags |= dns.flags.AD  # dig sets AD by default
    wire = query.to_wire()
    assert _answer_fast(wire, ZONE) is not _MISS
    reply = dns.message.from_wire(answer(wire, ZONE))  # type: ignore[arg-type]
    assert query.is_response(reply)
    assert reply.edns == 0 and not reply.options  # cookies are not implemented: ignored, not echoed
    assert rdatas(reply) == ["127.0.0.1"]
    assert reply.question[0].name.to_text() == "Web.lbsolo.localhost."


def test_unknown_edns_version_is_badvers() -> None:
    query = make("web.lbsolo.localhost", use_edns=1)
    reply = dns.message.from_wire(answer(query.to_wire(), ZONE))  # type: ignore[arg-type]
    assert query.is_response(reply)
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0 and reply.answer == []
