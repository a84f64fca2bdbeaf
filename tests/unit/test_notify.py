"""Outbound webhooks against a real receiver on loopback (port 0): signatures, retries, history.

Loopback receivers need allow_private (tests/security/test_webhook_targets.py checks the refusal)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from lbsolo.errors import InvalidInput, NotFound
from lbsolo.events import Event, EventBus
from lbsolo.notify import (
    SIGNATURE_HEADER,
    Webhook,
    WebhookNotifier,
    payload,
    sign,
    validate_url,
    verify_signature,
)
from lbsolo.state import State


@dataclass
class Receiver:
    """A tiny HTTP/1.1 server: answers `statuses` in turn (then 200) and keeps what it got."""

    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((headers, body))
            status = self.statuses.pop(0) if self.statuses else 200
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@asynccontextmanager
async def receiver(*statuses: int) -> AsyncIterator[Receiver]:
    r = Receiver(list(statuses))
    server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
    r.port = server.sockets[0].getsockname()[1]
    try:
        yield r
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def state(tmp_path):
    s = State(tmp_path / "state.json")
    yield s
    s.close()


def test_urls_must_be_http_or_https():
    assert validate_url(" https://hooks.example.com/x ") == "https://hooks.example.com/x"
    assert validate_url("http://127.0.0.1:9/") == "http://127.0.0.1:9/"
    for bad in ("ftp://x/y", "file:///etc/passwd", "javascript:alert(1)", "http://", "/relative", "http://h:99999/"):
        with pytest.raises(InvalidInput):
            validate_url(bad)


def test_payloads_and_signature():
    event = Event(7, 123.5, "deploy.failed", "hello", "v3 failed", {"release": "v3"})
    body = json.loads(payload(event))
    assert body == {
        "id": 7,
        "event": "deploy.failed",
        "app": "hello",
        "message": "v3 failed",
        "data": {"release": "v3"},
        "ts": 123.5,
    }
    slack = json.loads(payload(event, slack=True))
    assert set(slack) == {"text"} and "hello" in slack["text"] and "v3 failed" in slack["text"]
    raw = payload(event)
    assert sign("s3cret", raw).startswith("sha256=") and len(sign("s3cret", raw)) == 7 + 64
    assert verify_signature("s3cret", raw, sign("s3cret", raw))
    assert not verify_signature("other", raw, sign("s3cret", raw))
    assert not verify_signature("s3cret", raw, None)


def test_webhook_filters_by_app_and_kind():
    def ev(kind: str, app: str | None) -> Event:
        return Event(1, 0.0, kind, app, "", {})

    every = Webhook("a", "http://x")
    assert every.wants(ev("deploy.started", "hello")) and every.wants(ev("app.created", None))
    mine = Webhook("b", "http://x", app="hello", kinds=["deploy.*", "replica.crashed"])
    assert mine.wants(ev("deploy.failed", "hello"))
    assert mine.wants(ev("replica.crashed", "hello"))
    assert not mine.wants(ev("scaled", "hello"))
    assert not mine.wants(ev("deploy.failed", "other"))
    assert Webhook.from_dict(mine.to_dict()) == mine
    assert mine.public()["secret"] == ""


def test_a_failing_receiver_is_retried_and_every_attempt_recorded(state, run):
    async def scenario() -> None:
        bus = EventBus()
        notifier = WebhookNotifier(state, bus, backoff=(0.01, 0.02, 0.04, 0.08), timeout=2, allow_private=True)
        await notifier.start()
        try:
            async with receiver(500) as rx:
                hook = await notifier.create(rx.url, app="hello", secret="topsecret!")
                other = await notifier.create(rx.url, app="other")
                bus.emit("deploy.succeeded", "hello", "hello v2 is serving", release="v2")
                await asyncio.wait_for(notifier.drain(), 10)
                assert len(rx.requests) == 2  # a 500, then the retry
                for headers, body in rx.requests:
                    assert headers["content-type"] == "application/json"
                    assert verify_signature("topsecret!", body, headers[SIGNATURE_HEADER.lower()])
                    assert headers["x-lbsolo-event"] == "deploy.succeeded"
                    assert json.loads(body)["data"] == {"release": "v2"}
                attempts = notifier.deliveries(hook.id)
                assert [(d.attempt, d.status, d.ok) for d in attempts] == [(1, 500, False), (2, 200, True)]
                assert attempts[0].error == "HTTP 500" and attempts[1].error is None
                assert notifier.deliveries(other.id) == []
        finally:
            await notifier.aclose()

    run(scenario)


def test_gives_up_after_the_last_attempt_and_does_not_retry_a_4xx(state, run):
    async def scenario() -> None:
        bus = EventBus()
        notifier = WebhookNotifier(state, bus, backoff=(0.01, 0.01), timeout=2, history=4, allow_private=True)
        await notifier.start()
        try:
            async with receiver(503, 503, 503, 404) as rx:
                hook = await notifier.create(rx.url, slack=True)
                bus.emit("replica.crashed", "hello", "web.1 exited 137")
                await asyncio.wait_for(notifier.drain(), 10)
                assert [d.status for d in notifier.deliveries(hook.id)] == [503, 503, 503]
                assert set(json.loads(rx.requests[0][1])) == {"text"}
                bus.emit("scaled", "hello")
                await asyncio.wait_for(notifier.drain(), 10)
                assert [d.status for d in notifier.deliveries(hook.id)] == [503, 503, 503, 404]
                assert len(rx.requests) == 4
        finally:
            await notifier.aclose()

    run(scenario)


def test_unreachable_receiver_records_the_error(state, run):
    async def scenario() -> None:
        async with receiver() as rx:
            url = rx.url  # the server closes at the end of the block: nothing listens there now
        notifier = WebhookNotifier(state, EventBus(), backoff=(0.01,), timeout=1, allow_private=True)
        await notifier.start()
        try:
            hook = await notifier.create(url)
            notifier.ping(hook.id)
            await asyncio.wait_for(notifier.drain(), 10)
            attempts = notifier.deliveries(hook.id)
            assert [d.attempt for d in attempts] == [1, 2]
            assert all(d.status is None and d.error == "connection refused" for d in attempts)
        finally:
            await notifier.aclose()

    run(scenario)


def test_webhooks_persist_and_go_with_their_app(tmp_path, run):
    async def scenario() -> None:
        s = State(tmp_path / "state.json")
        bus = EventBus()
        notifier = WebhookNotifier(s, bus, backoff=(), timeout=1, allow_private=True)
        await notifier.start()
        async with receiver() as rx:
            mine = await notifier.create(rx.url, app="hello", kinds=["app.*"])
            glob = await notifier.create(rx.url)
            with pytest.raises(InvalidInput):
                await notifier.create("gopher://x")
            with pytest.raises(InvalidInput):
                await notifier.create(rx.url, secret="short")

            again = WebhookNotifier(s, EventBus())
            await again.start()
            assert [h.id for h in again.webhooks()] == [mine.id, glob.id]
            assert [h.id for h in again.webhooks("hello")] == [mine.id]
            await again.aclose()

            bus.emit("app.destroyed", "hello", "hello destroyed")
            await asyncio.wait_for(notifier.drain(), 10)
            assert len(rx.requests) == 2  # both still heard about it
            await asyncio.sleep(0.05)
            assert [h.id for h in notifier.webhooks()] == [glob.id]
            assert [w["id"] for w in s.list_webhooks()] == [glob.id]

            await notifier.delete(glob.id)
            with pytest.raises(NotFound):
                await notifier.delete(glob.id)
            with pytest.raises(NotFound):
                notifier.deliveries(glob.id)
        await notifier.aclose()
        s.close()

    run(scenario)
