"""Forwarding in lbsolo.dns: a fake upstream resolver on loopback, the cache, the allow list."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dnslib
import pytest
from dnslib import QTYPE, RR, SOA, A, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbsolo.dns import DNSServer, ForwardConfig, Zone
from lbsolo.dns_forward import Forwarder, parse_upstream, system_upstreams

pytestmark = pytest.mark.timeout(30)

#: handler(request, transport) -> replies to send ("udp" or "tcp"), in order.
Handler = Callable[[DNSRecord, str], list[bytes]]


def a_record(request: DNSRecord, ttl: int = 10, count: int = 1) -> bytes:
    reply = request.reply()
    for i in range(count):
        reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=ttl, rdata=A(f"192.0.2.{i + 1}")))
    return bytes(reply.pack())


def negative(request: DNSRecord, rcode: int, soa_ttl: int = 60, minimum: int = 30, soa: bool = True) -> bytes:
    reply = request.reply()
    reply.header.rcode = rcode
    if soa:
        rdata = SOA("ns.example.", "root.example.", (1, 3600, 600, 86400, minimum))
        reply.add_auth(RR("example.org", QTYPE.SOA, ttl=soa_ttl, rdata=rdata))
    return bytes(reply.pack())


def default_handler(request: DNSRecord, transport: str) -> list[bytes]:
    name = str(request.q.qname).lower()
    if name.startswith("nx."):
        return [negative(request, dnslib.RCODE.NXDOMAIN)]
    if name.startswith("nosoa."):
        return [negative(request, dnslib.RCODE.NXDOMAIN, soa=False)]
    if request.q.qtype == QTYPE.MX:
        return [negative(request, dnslib.RCODE.NOERROR, soa_ttl=20, minimum=100)]
    if name.startswith("zero."):
        return [a_record(request, ttl=0)]
    return [a_record(request)]


class FakeUpstream(asyncio.DatagramProtocol):
    """A resolver on 127.0.0.1 (UDP and TCP, same port) that counts the queries it gets."""

    def __init__(self, handler: Handler = default_handler) -> None:
        self.handler = handler
        self.udp_queries: list[DNSRecord] = []
        self.tcp_queries: list[DNSRecord] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.last_addr: tuple[str, int] | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = DNSRecord.parse(data)
        self.udp_queries.append(request)
        self.last_addr = addr
        assert self.transport is not None
        for reply in self.handler(request, "udp"):
            self.transport.sendto(reply, addr)

    async def serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        request = DNSRecord.parse(await reader.readexactly(size))
        self.tcp_queries.append(request)
        for reply in self.handler(request, "tcp"):
            writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()
        writer.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def upstream(handler: Handler = default_handler) -> AsyncIterator[FakeUpstream]:
    loop = asyncio.get_running_loop()
    for _ in range(5):
        transport, fake = await loop.create_datagram_endpoint(lambda: FakeUpstream(handler), ("127.0.0.1", 0))
        fake.port = transport.get_extra_info("sockname")[1]
        try:
            tcp = await asyncio.start_server(fake.serve_tcp, "127.0.0.1", fake.port)
        except OSError:
            transport.close()
            continue
        try:
            yield fake
        finally:
            transport.close()
            tcp.close()
            await tcp.wait_closed()
        return
    raise RuntimeError("no free port pair")


@asynccontextmanager
async def server(config: ForwardConfig, zone: Zone | None = None) -> AsyncIterator[DNSServer]:
    dns_server = DNSServer("127.0.0.1", 0, zone or Zone(), forward=config)
    await dns_server.start()
    try:
        yield dns_server
    finally:
        await dns_server.stop()


async def udp(srv: DNSServer, name: str, rdtype: str = "A", **kwargs: object) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    reply = await asyncio.to_thread(dns.query.udp, query, "127.0.0.1", timeout=3, port=srv.port)
    assert query.is_response(reply)
    return reply


async def tcp(srv: DNSServer, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return await asyncio.to_thread(dns.query.tcp, query, "127.0.0.1", timeout=3, port=srv.port)


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- through the server


def test_outside_names_are_forwarded_for_loopback_and_zone_stays_local(run) -> None:
    async def main() -> None:
        async with upstream() as fake, server(ForwardConfig(upstreams=(fake.address,))) as srv:
            reply = await udp(srv, "WWW.Example.org")
            assert reply.rcode() == dns.rcode.NOERROR
            assert addresses(reply) == ["192.0.2.1"]
            assert reply.flags & dns.flags.RA and not reply.flags & dns.flags.AA
            assert reply.question[0].name.to_text() == "WWW.Example.org."  # the client's case
            sent = fake.udp_queries[0]
            assert str(sent.q.qname) == "www.example.org." and sent.header.rd
            reply = await tcp(srv, "other.example.org")
            assert addresses(reply) == ["192.0.2.1"]
            # The lbsolo zone is still answered authoritatively, never forwarded.
            local = await udp(srv, "web.lbsolo.localhost")
            assert local.flags & dns.flags.AA and addresses(local) == ["127.0.0.1"]
            assert len(fake.udp_queries) == 2

    run(main)


def test_upstream_ids_are_random_and_edns_is_kept_for_the_client(run) -> None:
    async def main() -> None:
        async with upstream() as fake, server(ForwardConfig(upstreams=(fake.address,))) as srv:
            for i in range(4):
                reply = await udp(srv, f"n{i}.example.org", use_edns=0)
                assert reply.edns == 0
            assert len({q.header.id for q in fake.udp_queries}) > 1

    run(main)


def test_cached_answer_is_served_without_upstream_until_ttl_passes(run) -> None:
    async def main() -> None:
        async with upstream() as fake, server(ForwardConfig(upstreams=(fake.address,))) as srv:
            clock = Clock()
            assert srv.forwarder is not None
            srv.forwarder.clock = clock
            first = await udp(srv, "cached.example.org")
            assert first.answer[0].ttl == 10
            clock.now += 3
            second = await udp(srv, "CACHED.example.org")  # case does not matter for the cache
            assert addresses(second) == ["192.0.2.1"]
            assert second.answer[0].ttl == 7  # aged by the time it spent in the cache
            assert second.question[0].name.to_text() == "CACHED.example.org."
            assert len(fake.udp_queries) == 1
            await udp(srv, "cached.example.org", "AAAA")  # another type is another key
            assert len(fake.udp_queries) == 2
            clock.now += 7.5
            await udp(srv, "cached.example.org")
            assert len(fake.udp_queries) == 3

    run(main)


def test_zero_ttl_answers_are_not_cached(run) -> None:
    async def main() -> None:
        async with upstream() as fake, server(ForwardConfig(upstreams=(fake.address,))) as srv:
            for _ in range(2):
                assert addresses(await udp(srv, "zero.example.org")) == ["192.0.2.1"]
            assert len(fake.udp_queries) == 2

    run(main)


def test_negative_answers_are_cached_for_the_soa_negative_ttl(run) -> None:
    async def main() -> None:
        async with upstream() as fake, server(ForwardConfig(upstreams=(fake.address,))) as srv:
            clock = Clock()
            assert srv.forwarder is not None
            srv.forwarder.clock = clock
            nx = await udp(srv, "nx.example.org")
            assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority
            clock.now += 29  # min(SOA TTL 60, minimum 30) = 30
            assert (await udp(srv, "nx.example.org")).rcode() == dns.rcode.NXDOMAIN
            assert len(fake.udp_queries) == 1
            clock.now += 2
            await udp(srv, "nx.example.org")
            assert len(fake.udp_queries) == 2

            nodata = await udp(srv, "mail.example.org", "MX")  # NODATA: min(20, 100) = 20
            assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
            clock.now += 19
            await udp(srv, "mail.example.org", "MX")
            assert len(fake.udp_queries) == 3
            clock.now += 2
            await udp(srv, "mail.example.org", "MX")
            assert len(fake.udp_queries) == 4

            for _ in range(2):  # without an SOA there is nothing to cache by
                assert (await udp(srv, "nosoa.example.org")).rcode() == dns.rcode.NXDOMAIN
            assert len(fake.udp_queries) == 6

    run(main)


def test_clients_outside_allow_list_are_refused_and_nothing_is_forwarded(run) -> None:
    async def main() -> None:
        async with upstream() as fake:
            config = ForwardConfig(upstreams=(fake.address,), allow=("10.0.0.0/8",))
            async with server(config) as srv:
                assert (await udp(srv, "example.org")).rcode() == dns.rcode.REFUSED
                assert (await tcp(srv, "example.org")).rcode() == dns.rcode.REFUSED
                assert addresses(await udp(srv, "web.lbsolo.localhost")) == ["127.0.0.1"]  # zone still served
            assert fake.udp_queries == [] and fake.tcp_queries == []

    run(main)


def test_silent_upstream_fails_over_and_all_failing_is_servfail(run) -> None:
    async def main() -> None:
        async with upstream(lambda request, transport: []) as silent, upstream() as good:
            config = ForwardConfig(upstreams=(silent.address, good.address), timeout=0.2)
            async with server(config) as srv:
                assert addresses(await udp(srv, "example.org")) == ["192.0.2.1"]
                assert len(silent.udp_queries) == 1 and len(good.udp_queries) == 1
            async with server(ForwardConfig(upstreams=(silent.address,), timeout=0.2)) as srv:
                assert (await udp(srv, "example.org")).rcode() == dns.rcode.SERVFAIL

    run(main)


def test_upstream_servfail_tries_the_next_one(run) -> None:
    def servfail(request: DNSRecord, transport: str) -> list[bytes]:
        return [negative(request, dnslib.RCODE.SERVFAIL, soa=False)]

    async def main() -> None:
        async with upstream(servfail) as bad, upstream() as good:
            async with server(ForwardConfig(upstreams=(bad.address, good.address))) as srv:
                assert addresses(await udp(srv, "example.org")) == ["192.0.2.1"]
            async with server(ForwardConfig(upstreams=(bad.address,))) as srv:
                assert (await udp(srv, "example.org")).rcode() == dns.rcode.SERVFAIL
                await udp(srv, "example.org")
                assert len(bad.udp_queries) == 3  # failures are not cached

    run(main)


def test_spoofed_replies_are_ignored(run) -> None:
    def spoofing(request: DNSRecord, transport: str) -> list[bytes]:
        wrong_id = DNSRecord.parse(a_record(request))
        wrong_id.header.id = (request.header.id + 1) & 0xFFFF
        wrong_id.rr[0].rdata = A("203.0.113.66")
        other = DNSRecord.question("evil.example.org")
        other.header.id = request.header.id
        not_response = DNSRecord.parse(a_record(request))
        not_response.header.qr = 0
        return [bytes(wrong_id.pack()), a_record(other), bytes(not_response.pack()), a_record(request)]

    async def main() -> None:
        async with upstream(spoofing) as fake, server(ForwardConfig(upstreams=(fake.address,))) as srv:
            assert addresses(await udp(srv, "example.org")) == ["192.0.2.1"]

    run(main)


def test_truncated_upstream_answer_is_fetched_over_tcp(run) -> None:
    def big(request: DNSRecord, transport: str) -> list[bytes]:
        if transport == "udp":
            reply = request.reply()
            reply.header.tc = 1
            return [bytes(reply.pack())]
        return [a_record(request, count=40)]

    async def main() -> None:
        async with upstream(big) as fake, server(ForwardConfig(upstreams=(fake.address,))) as srv:
            reply = await udp(srv, "big.example.org", use_edns=0, payload=1232)
            assert len(addresses(reply)) == 40 and not reply.flags & dns.flags.TC
            assert len(fake.udp_queries) == 1 and len(fake.tcp_queries) == 1
            small = await udp(srv, "big.example.org")  # no EDNS: 512 bytes, so TC to the client
            assert small.flags & dns.flags.TC
            assert len(addresses(await tcp(srv, "big.example.org"))) == 40

    run(main)


def test_concurrent_identical_questions_share_one_upstream_query(run) -> None:
    async def main() -> None:
        async with upstream(lambda request, transport: []) as fake:  # answered by hand below
            forwarder = Forwarder(ForwardConfig(upstreams=(fake.address,)))
            wire = bytes(DNSRecord.question("same.example.org").pack())
            tasks = [asyncio.create_task(forwarder.resolve(wire)) for _ in range(5)]
            while not fake.udp_queries:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert len(fake.udp_queries) == 1
            assert fake.transport is not None and fake.last_addr is not None
            fake.transport.sendto(a_record(fake.udp_queries[0]), fake.last_addr)
            replies = await asyncio.wait_for(asyncio.gather(*tasks), 3)
            for raw in replies:
                assert raw is not None
                assert [str(rr.rdata) for rr in DNSRecord.parse(raw).rr] == ["192.0.2.1"]
            assert forwarder.upstream_queries == 1

    run(main)


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.1.1.1", ("1.1.1.1", 53)),
        ("1.1.1.1:5353", ("1.1.1.1", 5353)),
        ("::1", ("::1", 53)),
        ("[2606:4700::1111]:5300", ("2606:4700::1111", 5300)),
        ("[::1]", ("::1", 53)),
        ("fe80::1%eth0", ("fe80::1", 53)),
    ],
)
def test_parse_upstream(text: str, expected: tuple[str, int]) -> None:
    assert parse_upstream(text) == expected


@pytest.mark.parametrize("text", ["dns.google", "1.1.1.1:0", "1.1.1.1:70000", "[::1]x", ""])
def test_parse_upstream_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_upstream(text)


def test_config_validates() -> None:
    with pytest.raises(ValueError):
        ForwardConfig(allow=("not-a-network",))
    with pytest.raises(ValueError):
        ForwardConfig(upstreams=("resolver.example",))
    config = ForwardConfig(allow="192.168.0.0/16")  # type: ignore[arg-type]
    assert config.allow == ("192.168.0.0/16",)
    hash(config)


def test_allows() -> None:
    forwarder = Forwarder(ForwardConfig(allow=("127.0.0.0/8", "::1/128", "192.168.1.0/24")))
    for client in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "192.168.1.20"):
        assert forwarder.allows(client)
    for client in ("10.0.0.1", "192.168.2.1", "2001:db8::1", "garbage", ""):
        assert not forwarder.allows(client)
    assert not Forwarder(ForwardConfig(allow=())).allows("127.0.0.1")


def test_system_upstreams_skip_the_systemd_stub(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolved = tmp_path / "resolved.conf"
    resolv.write_text("# comment\nnameserver 127.0.0.53\noptions edns0\nsearch lan\n")
    resolved.write_text("nameserver 192.0.2.53\nnameserver 2001:db8::53\nnameserver 192.0.2.53\n")
    assert system_upstreams(resolv, resolved) == (("192.0.2.53", 53), ("2001:db8::53", 53))
    resolv.write_text("nameserver 10.1.1.1\nnameserver bogus\n")
    assert system_upstreams(resolv, resolved) == (("10.1.1.1", 53),)
    assert system_upstreams(tmp_path / "missing", resolved) == ()


def test_own_address_is_never_an_upstream(tmp_path: Path) -> None:
    forwarder = Forwarder(ForwardConfig(upstreams=("127.0.0.1:5354", "127.0.0.1:53")))
    forwarder.ignore("0.0.0.0", 5354)
    assert forwarder.upstreams == (("127.0.0.1", 53),)


def test_resolve_ignores_what_it_cannot_forward(run) -> None:
    forwarder = Forwarder(ForwardConfig(upstreams=("127.0.0.1:9",)))

    async def main() -> None:
        assert await forwarder.resolve(b"garbage") is None
        chaos = DNSRecord.question("version.bind", "TXT", "CH")
        assert await forwarder.resolve(bytes(chaos.pack())) is None
        axfr = DNSRecord.question("example.org", "AXFR")
        assert await forwarder.resolve(bytes(axfr.pack())) is None
        response = DNSRecord.question("example.org").reply()
        assert await forwarder.resolve(bytes(response.pack())) is None

    run(main)


# The run fixture holds no state between examples: sharing it across them is safe.
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_resolve_never_raises_on_random_bytes(run, data: bytes) -> None:
    async def main() -> None:
        # Upstream: a closed loopback port, so anything forwardable fails fast (ICMP refused).
        forwarder = Forwarder(ForwardConfig(upstreams=("127.0.0.1:9",), timeout=0.2))
        result = await forwarder.resolve(data)
        assert result is None or isinstance(result, bytes)

    run(main)


def test_server_with_forwarding_survives_garbage_and_keeps_answering(run) -> None:
    async def main() -> None:
        async with upstream() as fake, server(ForwardConfig(upstreams=(fake.address,))) as srv:
            junk = [b"", b"\x00" * 12, b"\x12\x34\x01\x00\x00\x01" + b"\xff" * 30, bytes(range(256))]
            junk.append(bytes(DNSRecord.question("example.org").pack())[:-3])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for data in junk:
                    sock.sendto(data, ("127.0.0.1", srv.port))
            assert addresses(await udp(srv, "example.org")) == ["192.0.2.1"]

    run(main)
