"""Outbound webhooks cannot be aimed at the machine itself or at cloud metadata (issue 11, item 10).

The address is checked after resolving, at delivery time (a name, a numeric form or a DNS
answer that changed since the webhook was created all end at the same check), and the
delivery goes to exactly the address checked. Failed deliveries say why in a few words,
never with the internal address or the library's error text.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from lbsolo.events import EventBus
from lbsolo.notify import WebhookNotifier, address_allowed, pin
from lbsolo.notify import resolve as system_resolve
from lbsolo.state import State
from tests.unit.test_notify import receiver


@pytest.fixture
def state(tmp_path):
    s = State(tmp_path / "state.json")
    yield s
    s.close()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "169.254.169.254",  # cloud metadata (AWS, GCP, Azure, ...)
        "169.254.10.1",
        "fd00:ec2::254",  # AWS's IPv6 metadata
        "fe80::1",
        "fe80::1%eth0",
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "not an address",
    ],
)
def test_addresses_deliveries_may_not_reach(address):
    assert not address_allowed(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "10.1.2.3", "192.168.1.20", "fd00::1"])
def test_addresses_deliveries_may_reach(address):
    assert address_allowed(address)


def fixed_resolver(answers: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    return resolve


def test_the_delivery_goes_to_the_address_that_was_checked(run):
    async def scenario() -> None:
        resolve = fixed_resolver({"hooks.example.test": ["169.254.169.254", "93.184.216.34"]})
        url, host, extensions = await pin("https://hooks.example.test:8443/x?y=1", resolve, False)
        assert str(url) == "https://93.184.216.34:8443/x?y=1"
        assert host == {"Host": "hooks.example.test:8443"} and extensions == {"sni_hostname": "hooks.example.test"}
        url, host, _ = await pin(
            "http://[2606:4700::1111]/", fixed_resolver({"2606:4700::1111": ["2606:4700::1111"]}), False
        )
        assert str(url) == "http://[2606:4700::1111]/" and host == {"Host": "[2606:4700::1111]"}

    run(scenario)


def with_names(answers: dict[str, list[str]]):
    """Names the test made up resolve as `answers` says; every other host through the system resolver."""
    made_up = fixed_resolver(answers)

    async def resolve(host: str, port: int) -> list[str]:
        return await (made_up if host in answers else system_resolve)(host, port)

    return resolve


@asynccontextmanager
async def notifier_for(state: State, **kw) -> AsyncIterator[WebhookNotifier]:
    kw = {"backoff": (0.01, 0.01), "timeout": 1, **kw}
    notifier = WebhookNotifier(state, EventBus(), **kw)
    await notifier.start()
    try:
        yield notifier
    finally:
        await notifier.aclose()


async def deliver_to(notifier: WebhookNotifier, url: str) -> list:
    hook = await notifier.create(url)
    notifier.ping(hook.id)
    await asyncio.wait_for(notifier.drain(), 10)
    return notifier.deliveries(hook.id)


def test_loopback_and_metadata_receivers_are_refused_at_delivery(state, run):
    async def scenario() -> None:
        # What these names resolve to when the delivery is made (whatever they did before).
        names = with_names({"rebind.example.test": ["127.0.0.1"], "meta.example.test": ["169.254.169.254"]})
        async with receiver() as rx, notifier_for(state, resolver=names) as notifier:
            urls = [
                rx.url,
                f"http://localhost:{rx.port}/hook",
                f"http://2130706433:{rx.port}/hook",  # 127.0.0.1 as one number: no URL check sees it
                f"http://[::ffff:127.0.0.1]:{rx.port}/hook",
                f"http://rebind.example.test:{rx.port}/hook",
                "http://meta.example.test/latest/meta-data/",
            ]
            for url in urls:
                attempts = await deliver_to(notifier, url)
                assert [(d.attempt, d.ok, d.status, d.error) for d in attempts] == [
                    (1, False, None, "address not allowed")
                ], url  # refused once, not retried
            assert rx.requests == []

    run(scenario)


def test_allowing_private_receivers_still_pins_the_checked_address(state, run):
    async def scenario() -> None:
        names = with_names({"hooks.example.test": ["127.0.0.1"]})
        async with receiver() as rx, notifier_for(state, allow_private=True, resolver=names) as notifier:
            attempts = await deliver_to(notifier, f"http://hooks.example.test:{rx.port}/hook")
            assert [d.ok for d in attempts] == [True]
            ((headers, _),) = rx.requests
            assert headers["host"] == f"hooks.example.test:{rx.port}"

    run(scenario)


@asynccontextmanager
async def silent_server(close_at_once: bool) -> AsyncIterator[int]:
    """A server that reads the request and then says nothing (or hangs up without an answer)."""
    done = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        # The body too: closing with it unread would reset the connection (on uvloop the close can
        # come before the body arrives), a different failure from a clean hang-up.
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        if not close_at_once:
            await done.wait()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        done.set()
        server.close()
        await server.wait_closed()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def test_delivery_errors_are_short_and_echo_no_internals(state, run):
    async def scenario() -> None:
        async with receiver() as rx:
            closed_port = rx.port  # nothing listens here once the block ends
        async with (
            notifier_for(state, allow_private=True, backoff=(), timeout=0.3) as notifier,
            silent_server(close_at_once=False) as hang,
            silent_server(close_at_once=True) as hangup,
            receiver(500) as failing,
        ):
            cases = {
                f"http://127.0.0.1:{closed_port}/hook": "connection refused",
                f"http://127.0.0.1:{hang}/hook": "timed out",
                f"http://127.0.0.1:{hangup}/hook": "bad response",
                "http://no-such-host.invalid/hook": "name not resolved",
                failing.url: "HTTP 500",
            }
            for url, reason in cases.items():
                (attempt,) = await deliver_to(notifier, url)
                assert attempt.error == reason, (url, attempt)
                assert "127.0.0.1" not in attempt.error and str(closed_port) not in attempt.error

    run(scenario)
