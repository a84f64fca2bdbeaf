"""DNS over TCP cannot be held by one client (issue 11, item 3).

A client gets at most a few TCP connections at once (the next ones are closed at once, other
clients are still served), and no connection outlives its maximum lifetime, however often its
client asks: it is closed after the answer in flight, never in the middle of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import dns.message
import dns.rcode
import pytest

from lbsolo.dns import DNSServer, ForwardConfig

pytestmark = pytest.mark.timeout(30)

#: DNSServer's default per-client cap (the test fails if the default changes without it).
PER_CLIENT = 16
LIFETIME = 0.5


@contextlib.asynccontextmanager
async def serving(**kwargs: object) -> AsyncIterator[DNSServer]:
    server = DNSServer("127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Client:
    """One DNS-over-TCP connection, asking one query at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: DNSServer, source: str = "127.0.0.1") -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))
        return cls(reader, writer)

    async def send(self, name: str) -> dns.message.Message:
        query = dns.message.make_query(name, "A")
        wire = query.to_wire()
        self.writer.write(struct.pack("!H", len(wire)) + wire)
        await self.writer.drain()
        return query

    async def reply(self, query: dns.message.Message, timeout: float = 2.0) -> dns.message.Message:
        async with asyncio.timeout(timeout):
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
            reply = dns.message.from_wire(await self.reader.readexactly(size))
        assert query.is_response(reply)
        return reply

    async def ask(self, name: str = "web.lbsolo.localhost") -> dns.message.Message:
        return await self.reply(await self.send(name))

    async def closed_within(self, timeout: float) -> bool:
        """True if the server closes the connection within ``timeout`` (sending nothing more)."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        assert data == b"", f"unexpected bytes from the server: {data!r}"
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def addresses(reply: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in reply.answer for r in rrset]


def second_loopback_address_works() -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.2", 0))
        except OSError:
            return False
    return True


@pytest.mark.skipif(not second_loopback_address_works(), reason="127.0.0.2 is not usable as a source address")
def test_a_client_beyond_its_cap_is_closed_at_once_and_others_are_still_served(run) -> None:
    async def main() -> None:
        async with serving() as server:
            first = [await Client.open(server) for _ in range(PER_CLIENT)]
            extra: list[Client] = []
            try:
                for client in first:  # answered: each is held by the server from now on
                    assert addresses(await client.ask()) == ["127.0.0.1"]
                extra = [await Client.open(server) for _ in range(4)]
                for client in extra:
                    assert await client.closed_within(2), "a connection beyond the per-client cap was kept"
                assert server.tcp_refused == len(extra)
                for client in first:  # the first ones are untouched
                    assert addresses(await client.ask()) == ["127.0.0.1"]

                other = await Client.open(server, source="127.0.0.2")
                extra.append(other)
                assert addresses(await other.ask()) == ["127.0.0.1"]

                # A slot comes back when a connection ends.
                await first.pop().close()
                for _ in range(100):
                    again = await Client.open(server)
                    extra.append(again)
                    if not await again.closed_within(0.05):
                        break
                assert addresses(await again.ask()) == ["127.0.0.1"]
            finally:
                for client in first + extra:
                    await client.close()

    run(main)


def test_a_steady_client_is_closed_after_the_lifetime_with_every_query_answered(run) -> None:
    interval = 0.2  # queries at 0, 0.2, 0.4 s; the lifetime ends 0.1 s from either side of a query

    async def main() -> None:
        async with serving(tcp_max_lifetime=LIFETIME) as server:
            loop = asyncio.get_running_loop()
            client = await Client.open(server)
            start = loop.time()
            sent = answered = 0
            try:
                while True:
                    query = await client.send(f"q{sent}.lbsolo.localhost")
                    sent += 1
                    assert addresses(await client.reply(query)) == ["127.0.0.1"]
                    answered += 1
                    wait = start + sent * interval - loop.time()
                    if await client.closed_within(max(wait, 0.0)):
                        break
                    assert loop.time() - start < LIFETIME + 2, "the connection outlived its lifetime"
                closed_after = loop.time() - start
            finally:
                await client.close()
            assert answered == sent >= 3
            assert LIFETIME - 0.05 <= closed_after <= LIFETIME + 0.3

    run(main)


def test_the_answer_in_flight_at_the_end_of_the_lifetime_is_sent_before_the_close(run) -> None:
    async def main() -> None:
        # An upstream that never answers: the forwarded query's SERVFAIL comes after its timeout,
        # 0.3 s after it was asked at 0.3 s, so the answer is in flight when the lifetime ends.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            forward = ForwardConfig(upstreams=(f"127.0.0.1:{silent.getsockname()[1]}",), timeout=0.3)
            async with serving(forward=forward, tcp_max_lifetime=LIFETIME) as server:
                loop = asyncio.get_running_loop()
                client = await Client.open(server)
                start = loop.time()
                try:
                    assert addresses(await client.ask()) == ["127.0.0.1"]
                    await asyncio.sleep(0.3)
                    reply = await client.ask("example.com")
                    assert reply.rcode() == dns.rcode.SERVFAIL
                    assert loop.time() - start > LIFETIME
                    assert await client.closed_within(0.5), "the connection outlived its lifetime"
                finally:
                    await client.close()

    run(main)


def test_a_query_begun_before_the_end_of_the_lifetime_is_read_whole_and_answered(run) -> None:
    async def main() -> None:
        async with serving(tcp_max_lifetime=LIFETIME) as server:
            loop = asyncio.get_running_loop()
            client = await Client.open(server)
            start = loop.time()
            try:
                query = dns.message.make_query("slow.lbsolo.localhost", "A")
                wire = query.to_wire()
                message = struct.pack("!H", len(wire)) + wire
                await asyncio.sleep(LIFETIME - 0.2)
                client.writer.write(message[:5])  # the length and part of the header ...
                await client.writer.drain()
                await asyncio.sleep(0.4)
                client.writer.write(message[5:])  # ... and the rest after the lifetime
                await client.writer.drain()
                assert loop.time() - start > LIFETIME
                assert addresses(await client.reply(query)) == ["127.0.0.1"]
                assert await client.closed_within(0.5), "the connection outlived its lifetime"
            finally:
                await client.close()

    run(main)
