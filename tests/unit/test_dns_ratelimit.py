"""Per-client rate limiting of lbsolo's DNS server."""

from __future__ import annotations

import asyncio
import socket

import dns.message
import pytest

from lbsolo.dns import DNSServer, RateLimit, Zone
from lbsolo.dns_ratelimit import RateLimiter

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_refills_at_qps() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(qps=10, burst=5, exempt_loopback=False), clock)
    assert [limiter.allow("192.0.2.1") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("192.0.2.2")  # another client has its own bucket
    clock.now += 0.1  # one token back
    assert limiter.allow("192.0.2.1")
    assert not limiter.allow("192.0.2.1")
    clock.now += 100  # refills only up to the burst
    assert sum(limiter.allow("192.0.2.1") for _ in range(10)) == 5
    assert limiter.dropped == 8


def test_loopback_exempt_unless_configured() -> None:
    exempt = RateLimiter(RateLimit(qps=1, burst=1), Clock())
    for client in ("127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"):
        assert all(exempt.allow(client) for _ in range(50))
    assert len(exempt) == 0
    strict = RateLimiter(RateLimit(qps=1, burst=1, exempt_loopback=False), Clock())
    assert strict.allow("127.0.0.1") and not strict.allow("127.0.0.1")


def test_memory_is_bounded_and_idle_buckets_go_first() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(qps=1, burst=2, exempt_loopback=False, max_clients=100), clock)
    limiter.allow("10.0.0.1")
    limiter.allow("10.0.0.1")  # now empty: an abuser worth remembering
    for i in range(2, 101):
        limiter.allow(f"10.0.1.{i}")
    assert len(limiter) == 100
    clock.now += 1.5  # the others are full again (same as forgotten); 10.0.0.1 is not
    limiter.allow("10.9.9.9")  # full table: evicts
    assert len(limiter) == 2
    assert limiter.allow("10.0.0.1") and not limiter.allow("10.0.0.1")  # still remembered
    for i in range(1000):  # a flood of new addresses never grows the table past the bound
        limiter.allow(f"10.1.{i // 250}.{i % 250}")
        assert len(limiter) <= 100


def test_invalid_limits() -> None:
    for kwargs in ({"qps": 0}, {"burst": 0}, {"max_clients": 0}):
        with pytest.raises(ValueError):
            RateLimit(**kwargs)  # type: ignore[arg-type]


async def replies_to_burst(limit: RateLimit | None, count: int = 20) -> int:
    """How many of ``count`` back-to-back UDP queries from 127.0.0.1 get a reply."""
    server = DNSServer("127.0.0.1", 0, Zone(), rate_limit=limit)
    await server.start()
    try:

        def blast() -> int:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.3)
                for i in range(count):
                    query = dns.message.make_query(f"a{i}.lbsolo.localhost", "A")
                    sock.sendto(query.to_wire(), ("127.0.0.1", server.port))
                got = 0
                try:
                    while True:
                        sock.recv(2048)
                        got += 1
                except TimeoutError:
                    return got

        return await asyncio.to_thread(blast)
    finally:
        await server.stop()


def test_server_drops_udp_over_the_limit(run) -> None:
    async def main() -> None:
        assert await replies_to_burst(RateLimit(qps=0.5, burst=5, exempt_loopback=False)) == 5

    run(main)


def test_server_default_limit_does_not_throttle_loopback_or_bursts(run) -> None:
    async def main() -> None:
        assert await replies_to_burst(RateLimit()) == 20
        assert await replies_to_burst(RateLimit(exempt_loopback=False)) == 20
        assert await replies_to_burst(None) == 20

    run(main)


def test_tcp_client_over_the_limit_is_disconnected(run) -> None:
    async def main() -> None:
        server = DNSServer("127.0.0.1", 0, Zone(), rate_limit=RateLimit(qps=0.5, burst=2, exempt_loopback=False))
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            wire = dns.message.make_query("web.lbsolo.localhost", "A").to_wire()
            writer.write((len(wire).to_bytes(2, "big") + wire) * 4)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 3)  # until the server closes
            sizes = []
            while data:
                size = int.from_bytes(data[:2], "big")
                sizes.append(size)
                data = data[2 + size :]
            assert len(sizes) == 2
            writer.close()
            await writer.wait_closed()
        finally:
            await server.stop()

    run(main)
