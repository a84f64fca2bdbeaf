"""Custom app domains in lbsolo.dns: answered like the lbsolo domain, each its own one-name zone."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from lbsolo.dns import DNSServer
from lbsolo.dns_zone import Zone, _answer_slow, answer

pytestmark = pytest.mark.timeout(30)

ZONE = Zone(ipv4=("10.0.0.7",), ipv6=("fd00::7",), domains=frozenset({"Example.COM.", "www.shop.test"}))


def ask(name: str, rdtype: str = "A", zone: Zone = ZONE, **kwargs: object) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    raw = answer(query.to_wire(), zone)
    assert raw is not None
    reply = dns.message.from_wire(raw)
    assert query.is_response(reply)
    return reply


def rdatas(reply: dns.message.Message, section: str = "answer") -> list[str]:
    return sorted(rd.to_text() for rrset in getattr(reply, section) for rd in rrset)


def test_zone_normalises_domains_and_stays_hashable() -> None:
    assert ZONE.domains == frozenset({"example.com", "www.shop.test"})
    assert Zone(domains="a.test").domains == frozenset({"a.test"})  # type: ignore[arg-type]
    assert Zone(domains={"b.test": "web"}).domains == frozenset({"b.test"})  # type: ignore[arg-type]
    assert hash(ZONE) == hash(replace(ZONE))
    for bad in ("", "a..b", "x" * 64 + ".com", "ünï.test"):
        with pytest.raises(ValueError):
            Zone(domains=frozenset({bad}))


@pytest.mark.parametrize("name", ["example.com", "EXAMPLE.com.", "www.shop.test", "WWW.Shop.Test"])
def test_custom_domain_answers_a_and_aaaa_authoritatively(name: str) -> None:
    reply = ask(name)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert rdatas(reply) == ["10.0.0.7"]
    assert reply.answer[0].ttl == ZONE.ttl
    assert reply.question[0].name.to_text() == name.rstrip(".") + "."
    assert rdatas(ask(name, "AAAA")) == ["fd00::7"]


@pytest.mark.parametrize("rdtype", ["MX", "TXT", "CAA"])
def test_custom_domain_other_types_are_nodata_with_its_own_soa(rdtype: str) -> None:
    reply = ask("www.shop.test", rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert reply.answer == []
    [soa_set] = reply.authority
    assert soa_set.rdtype == dns.rdatatype.SOA
    assert soa_set.name.to_text() == "www.shop.test."  # the custom domain is its own zone apex
    soa = soa_set[0]
    assert soa.mname.to_text() == "lbsolo.localhost."  # served by the lbsolo name server
    assert soa.minimum == ZONE.ttl


def test_custom_domain_soa_and_ns() -> None:
    reply = ask("example.com", "SOA")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.SOA]
    assert reply.answer[0].name.to_text() == "example.com."
    reply = ask("example.com", "NS")
    assert rdatas(reply) == ["lbsolo.localhost."]
    assert rdatas(reply, "additional") == ["10.0.0.7", "fd00::7"]
    reply = ask("example.com", "ANY")
    kinds = {dns.rdatatype.to_text(r.rdtype) for r in reply.answer}
    assert kinds == {"A", "AAAA", "SOA", "NS"}


@pytest.mark.parametrize("name", ["mail.example.com", "shop.test", "a.www.shop.test", "example.co", "xexample.com"])
def test_names_near_custom_domains_are_not_ours(name: str) -> None:
    reply = ask(name)
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.AA


def test_custom_domain_under_lbsolo_domain_passes_strict_mode() -> None:
    strict = Zone(strict=True, apps=frozenset({"web"}), domains=frozenset({"promo.lbsolo.localhost"}))
    reply = ask("promo.lbsolo.localhost", zone=strict)
    assert reply.rcode() == dns.rcode.NOERROR and rdatas(reply) == ["127.0.0.1"]
    nodata = ask("promo.lbsolo.localhost", "MX", zone=strict)
    assert nodata.authority[0].name.to_text() == "lbsolo.localhost."  # still the lbsolo zone
    assert ask("other.lbsolo.localhost", zone=strict).rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(("name", "rdtype"), [("Example.com", "A"), ("www.shop.test", "MX"), ("example.com", "NS")])
def test_custom_domain_cached_path_matches_uncached(name: str, rdtype: str) -> None:
    for edns in (None, 0):
        wire = dns.message.make_query(name, rdtype, use_edns=edns).to_wire()
        fast, again, slow = answer(wire, ZONE), answer(wire, ZONE), _answer_slow(wire, ZONE)
        assert fast is not None and slow is not None and fast == again
        assert dns.message.from_wire(fast) == dns.message.from_wire(slow)


def test_custom_domains_appear_and_disappear_with_set_zone(run) -> None:
    async def main() -> None:
        server = DNSServer("127.0.0.1", 0, Zone())
        await server.start()
        try:

            async def query(name: str) -> dns.message.Message:
                q = dns.message.make_query(name, "A")
                return await asyncio.to_thread(dns.query.udp, q, "127.0.0.1", timeout=2, port=server.port)

            assert (await query("example.com")).rcode() == dns.rcode.REFUSED
            server.set_zone(replace(server.zone, domains=frozenset({"example.com"})))
            reply = await query("example.com")
            assert reply.rcode() == dns.rcode.NOERROR and rdatas(reply) == ["127.0.0.1"]
            tcp = await asyncio.to_thread(
                dns.query.tcp, dns.message.make_query("Example.com", "A"), "127.0.0.1", timeout=2, port=server.port
            )
            assert rdatas(tcp) == ["127.0.0.1"]
            server.set_zone(replace(server.zone, domains=frozenset()))
            assert (await query("example.com")).rcode() == dns.rcode.REFUSED
        finally:
            await server.stop()

    run(main)


def test_wildcard_custom_domain_covers_names_below_it() -> None:
    zone = Zone(domains=frozenset({"*.shop.test", "exact.shop.test", "*.a.b.test"}))
    for name in ("www.shop.test", "A.B.Shop.Test", "exact.shop.test", "x.a.b.test"):
        reply = ask(name, zone=zone)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        assert rdatas(reply) == ["127.0.0.1"]
    nodata = ask("www.shop.test", "MX", zone=zone)
    assert nodata.answer == [] and nodata.authority[0].name.to_text() == "shop.test."
    for name in ("shop.test", "a.b.test", "other.test"):  # the wildcard's parent itself is not covered
        assert ask(name, zone=zone).rcode() == dns.rcode.REFUSED
    for bad in ("*", "a.*.test", "**.test", "*x.test"):
        with pytest.raises(ValueError):
            Zone(domains=frozenset({bad}))
