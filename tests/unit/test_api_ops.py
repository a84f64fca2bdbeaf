"""The operations routes in-process: a FastAPI app with the router, real bus/sampler/notifier/tokens
over a temporary State, and a hand-written fake Platform. No Docker, no sockets (but the SSE test
drives the ASGI app by hand, since httpx's ASGITransport waits for a response to end)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from lbsolo.api.ops import create_ops_router
from lbsolo.api.tokens import TokenStore
from lbsolo.errors import LbsoloError, NotFound, Unauthorized
from lbsolo.events import EventBus
from lbsolo.notify import WebhookNotifier
from lbsolo.run_stats import StatsSampler
from lbsolo.state import State

ADMIN = "admin-token"


class FakePlatform:
    def __init__(self, apps: set[str]) -> None:
        self.apps = apps

    async def get_app(self, name: str) -> dict[str, Any]:
        if name not in self.apps:
            raise NotFound(f"unknown app {name!r}")
        return {"name": name}


class Clock:
    def __init__(self) -> None:
        self.now = 1_200_000.0

    def __call__(self) -> float:
        return self.now


class Ops:
    def __init__(self, tmp_path: Any) -> None:
        self.state = State(tmp_path / "state.json")
        self.clock = Clock()
        self.bus = EventBus()
        self.notifier = WebhookNotifier(self.state, self.bus, backoff=(), timeout=1)
        self.sampler = StatsSampler(lambda: {}, interval=5, clock=self.clock)
        self.tokens = TokenStore(self.state)

        def require_token(request: Request) -> None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not (given == ADMIN or self.tokens.verify(given)):
                raise Unauthorized("missing or wrong API token")

        app = FastAPI()

        @app.exception_handler(LbsoloError)
        async def _lbsolo_error(request: Request, exc: LbsoloError) -> JSONResponse:
            return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status)

        @app.exception_handler(RequestValidationError)
        async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
            return JSONResponse({"error": {"code": "invalid", "message": str(exc.errors())}}, status_code=422)

        app.include_router(
            create_ops_router(
                FakePlatform({"hello"}), self.bus, self.notifier, self.sampler, self.tokens, require_token, 0.05
            )
        )
        self.app = app

    def client(self, token: str | None = ADMIN) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t", headers=headers)


@pytest.fixture
def ops(tmp_path):
    o = Ops(tmp_path)
    yield o
    o.state.close()


def test_every_route_needs_a_token(ops, run):
    async def scenario() -> None:
        async with ops.client(None) as anon, ops.client("wrong") as wrong:
            for c in (anon, wrong):
                for method, path in [
                    ("GET", "/api/events"),
                    ("GET", "/api/events/stream"),
                    ("GET", "/api/apps/hello/stats"),
                    ("GET", "/api/webhooks"),
                    ("POST", "/api/webhooks"),
                    ("DELETE", "/api/webhooks/x"),
                    ("GET", "/api/webhooks/x/deliveries"),
                    ("POST", "/api/webhooks/x/ping"),
                    ("GET", "/api/tokens"),
                    ("POST", "/api/tokens"),
                    ("DELETE", "/api/tokens/x"),
                ]:
                    r = await c.request(method, path)
                    assert r.status_code == 401, (method, path)
                    assert r.json()["error"]["code"] == "unauthorized"

    run(scenario)


def test_events_are_listed_by_app_and_count(ops, run):
    for i in range(5):
        ops.bus.emit("deploy.started", "hello" if i % 2 else "other", f"e{i}", n=i)

    async def scenario() -> None:
        async with ops.client() as c:
            r = await c.get("/api/events")
            assert [e["message"] for e in r.json()] == ["e0", "e1", "e2", "e3", "e4"]
            r = await c.get("/api/events", params={"app": "hello", "n": 1})
            assert r.json() == [
                {
                    "id": 4,
                    "ts": r.json()[0]["ts"],
                    "kind": "deploy.started",
                    "app": "hello",
                    "message": "e3",
                    "data": {"n": 3},
                }
            ]
            assert (await c.get("/api/events", params={"after": 3})).json()[0]["id"] == 4
            bad = await c.get("/api/events", params={"n": 0})
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid"

    run(scenario)


async def read_sse(app: Any, path: str, headers: dict[str, str], until: int, emit: Any) -> tuple[dict, bytes]:
    """Drive the ASGI app: read body chunks until `until` `data:` lines arrived, then disconnect."""
    disconnect = asyncio.Event()
    start: dict[str, Any] = {}
    body = bytearray()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            emit()
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if body.count(b"data: ") >= until:
                disconnect.set()

    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    await app(scope, receive, send)
    return start, bytes(body)


def test_event_stream_sends_sse_with_keepalives_and_unsubscribes(ops, run):
    def emit_later() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.12, ops.bus.emit, "scaled", "other", "not for this stream")
        loop.call_later(0.15, lambda: ops.bus.emit("scaled", "hello", "web=2", formation={"web": 2}))

    async def scenario() -> None:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        start, body = await read_sse(ops.app, "/api/events/stream?app=hello", headers, 1, emit_later)
        assert start["status"] == 200
        assert dict(start["headers"])[b"content-type"].startswith(b"text/event-stream")
        text = body.decode()
        assert text.startswith(": connected\n\n")
        assert ": keep-alive\n\n" in text  # keepalive is 0.05 s in this router
        (frame,) = [f for f in text.split("\n\n") if "data: " in f]
        assert frame.startswith("id: 2\n")
        event = json.loads(frame.split("data: ", 1)[1])
        assert event["kind"] == "scaled" and event["app"] == "hello" and event["data"] == {"formation": {"web": 2}}
        await asyncio.sleep(0.01)
        assert ops.bus.subscribers == 0

        # A reconnect with Last-Event-ID gets what it missed from the buffer first.
        ops.bus.emit("config.changed", "hello", "set A")
        start, body = await read_sse(
            ops.app, "/api/events/stream?app=hello", {**headers, "Last-Event-ID": "2"}, 1, lambda: None
        )
        assert '"message":"set A"' in body.decode()

    run(scenario)


def test_app_stats_series(ops, run):
    t0 = ops.clock.now
    for i in range(3):
        ops.sampler.record({"hello": {"r1": {"cpu_percent": 10.0 * i, "mem_bytes": 100.0}}}, t0 + 5 * i)
    ops.clock.now = t0 + 10

    async def scenario() -> None:
        async with ops.client() as c:
            r = await c.get("/api/apps/hello/stats", params={"metric": "cpu"})
            assert r.status_code == 200
            assert r.json() == {
                "app": "hello",
                "metric": "cpu",
                "window": "10m",
                "points": [[t0, 0.0], [t0 + 5, 10.0], [t0 + 10, 20.0]],
            }
            r = await c.get("/api/apps/hello/stats", params={"metric": "mem", "window": "24h"})
            assert r.json()["points"] == [[t0, 100.0]]
            every = (await c.get("/api/apps/hello/stats")).json()
            assert set(every["series"]) == {"cpu", "mem", "net_rx", "net_tx", "rps", "latency_ms"}
            assert every["latest"]["cpu"] == 20.0
            assert (await c.get("/api/apps/nope/stats")).status_code == 404
            for params in ({"metric": "disk"}, {"window": "7d"}):
                bad = await c.get("/api/apps/hello/stats", params=params)
                assert bad.status_code == 422 and "error" in bad.json()

    run(scenario)


def test_webhooks_crud_and_deliveries(ops, run):
    async def scenario() -> None:
        await ops.notifier.start()
        try:
            async with ops.client() as c:
                r = await c.post("/api/webhooks", json={"url": "http://127.0.0.1:9/x", "app": "hello", "slack": True})
                assert r.status_code == 201
                hook = r.json()
                assert hook["app"] == "hello" and hook["slack"] is True and len(hook["secret"]) >= 16
                listed = (await c.get("/api/webhooks")).json()
                assert [h["id"] for h in listed] == [hook["id"]] and listed[0]["secret"] == "********"
                assert (await c.get("/api/webhooks", params={"app": "other"})).json() == []

                for bad in ({"url": "ftp://x/"}, {"url": "http://x/", "app": "nope"}, {}):
                    r = await c.post("/api/webhooks", json=bad)
                    assert r.status_code in (404, 422) and "error" in r.json(), bad

                r = await c.post(f"/api/webhooks/{hook['id']}/ping")
                assert r.status_code == 202 and r.json()["kind"] == "webhook.ping"
                await ops.notifier.drain(5)
                (attempt,) = (await c.get(f"/api/webhooks/{hook['id']}/deliveries")).json()
                assert attempt["attempt"] == 1 and attempt["ok"] is False and attempt["status"] is None

                assert (await c.delete(f"/api/webhooks/{hook['id']}")).json() == {"ok": True, "id": hook["id"]}
                gone = await c.delete(f"/api/webhooks/{hook['id']}")
                assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
                assert (await c.get(f"/api/webhooks/{hook['id']}/deliveries")).status_code == 404
        finally:
            await ops.notifier.aclose()

    run(scenario)


def test_tokens_create_use_list_and_revoke(ops, run):
    async def scenario() -> None:
        async with ops.client() as c:
            r = await c.post("/api/tokens", json={"name": "ci"})
            assert r.status_code == 201
            created = r.json()
            token = created["token"]
            assert created["name"] == "ci" and token.startswith(created["prefix"])

            async with ops.client(token) as ci:
                listed = (await ci.get("/api/tokens")).json()  # the new token works at once
                assert [t["name"] for t in listed] == ["ci"] and "token" not in listed[0] and "hash" not in listed[0]
                assert listed[0]["last_used"] is not None

            dup = await c.post("/api/tokens", json={"name": "ci"})
            assert dup.status_code == 409 and dup.json()["error"]["code"] == "conflict"
            assert (await c.post("/api/tokens", json={"name": "has space"})).status_code == 422

            r = await c.delete("/api/tokens/ci")
            assert r.status_code == 200 and r.json()["id"] == created["id"]
            async with ops.client(token) as ci:
                assert (await ci.get("/api/tokens")).status_code == 401
            assert (await c.delete("/api/tokens/ci")).status_code == 404

    run(scenario)


def test_routes_are_in_the_openapi_document(ops, run):
    async def scenario() -> None:
        async with ops.client() as c:
            doc = (await c.get("/openapi.json")).json()
        paths = doc["paths"]
        for path in (
            "/api/events",
            "/api/events/stream",
            "/api/apps/{name}/stats",
            "/api/webhooks",
            "/api/webhooks/{webhook_id}",
            "/api/webhooks/{webhook_id}/deliveries",
            "/api/tokens",
            "/api/tokens/{id_or_name}",
        ):
            assert path in paths, path
        assert "text/event-stream" in paths["/api/events/stream"]["get"]["responses"]["200"]["content"]

    run(scenario)
