"""Upgrade requests cannot smuggle a body past the proxy (issue 11, item 1).

Behind a real h11 app server (uvicorn with its h11 backend, which does read a body that an
upgrade request declares): a request that asks to upgrade and carries a body is refused; the
framing headers of an upgrade request are not passed on; an upstream connection on which an
upgrade was declined is never pooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from lbsolo.proxy import ProxyServer, Route, Target
from tests.unit.proxy_harness import DOMAIN, Conn, read_response

HOST = b"hello.lbsolo.localhost"


class H11App:
    """An ASGI app that notes every request it gets (path, headers, body, client port)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        entry = {
            "path": scope["path"],
            "headers": {k.decode().lower(): v.decode() for k, v in scope["headers"]},
            "client_port": scope["client"][1],
            "body": b"",
        }
        self.seen.append(entry)
        if scope["path"] != "/decline":  # /decline answers without reading the declared body
            while True:
                message = await receive()
                entry["body"] += message.get("body", b"")
                if not message.get("more_body"):
                    break
        payload = json.dumps({"path": scope["path"]}).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(payload))]}
        )
        await send({"type": "http.response.body", "body": payload})

    def paths(self) -> list[str]:
        return [s["path"] for s in self.seen]


@contextlib.asynccontextmanager
async def h11_stack() -> AsyncIterator[tuple[ProxyServer, H11App]]:
    app = H11App()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, http="h11", lifespan="off", log_level="critical", access_log=False, proxy_headers=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    proxy = ProxyServer(port=0, domain=DOMAIN)
    proxy.set_routes({"hello": Route(app="hello", release="v1", targets=(Target("127.0.0.1", port),))})
    await proxy.start()
    try:
        yield proxy, app
    finally:
        await proxy.stop(timeout=1.0)
        server.should_exit = True
        await task
        sock.close()


def _upgrade_head(path: bytes, extra: bytes, protocol: bytes = b"websocket") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: %s\r\n%s\r\n" % (
        path,
        HOST,
        protocol,
        extra,
    )


def test_an_upgrade_request_with_a_body_gets_400_and_reaches_no_app(run):
    async def scenario():
        async with h11_stack() as (proxy, app):
            for framing, body in (
                (b"Content-Length: 5\r\n", b"hello"),
                (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
            ):
                c = await Conn.open(proxy.port)
                await c.send(_upgrade_head(b"/decline", framing) + body)
                r = await read_response(c.reader)
                assert r.status == 400, r
                assert r.header("Connection") == "close"
                await c.close()
            assert app.seen == []

    run(scenario)


def test_a_declined_upgrade_cannot_smuggle_a_request_onto_the_pooled_connection(run):
    """The attack: an upgrade request declares a body the proxy never reads; the app server, after
    answering, takes the next bytes of the upstream connection as that body. The attacker sizes it
    to swallow the head of its own next request, whose body is then read as a request of its own,
    with a forged X-Forwarded-For."""

    async def scenario():
        async with h11_stack() as (proxy, app):
            smuggled = b"GET /smuggled HTTP/1.1\r\nHost: %s\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n" % HOST
            second_head = b"POST /carrier HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n" % (HOST, len(smuggled))
            # What the proxy sends to the app for the second request: its end-to-end headers, then
            # its own forwarding headers (the client chose the request id, so the length is known).
            forwarded = second_head + (
                b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Request-Id: abc\r\n"
                b"X-Forwarded-Host: %s\r\n\r\n" % HOST
            )
            first = _upgrade_head(b"/decline", b"Content-Length: %d\r\n" % len(forwarded))
            second = second_head.replace(b"\r\nContent-Length", b"\r\nX-Request-Id: abc\r\nContent-Length")
            second += b"\r\n" + smuggled
            c = await Conn.open(proxy.port)
            await c.send(first + second)
            with contextlib.suppress(AssertionError, ConnectionError, asyncio.IncompleteReadError):
                await read_response(c.reader)
                await read_response(c.reader)
            await c.close()
            await asyncio.sleep(0.2)
            assert "/smuggled" not in app.paths()
            assert all(s["headers"].get("x-forwarded-for") != "6.6.6.6" for s in app.seen)

    run(scenario)


def test_an_upgrade_request_without_a_body_loses_its_framing_and_a_declined_one_is_not_pooled(run):
    async def scenario():
        async with h11_stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            # (uvicorn hands websocket upgrades to its websocket protocol: another token stays HTTP)
            await c.send(_upgrade_head(b"/declined", b"Content-Length: 0\r\n", b"echo"))
            r = await read_response(c.reader)
            assert r.status == 200
            assert "content-length" not in app.seen[0]["headers"]
            assert "transfer-encoding" not in app.seen[0]["headers"]
            r = await c.request(path="/after")
            assert r.status == 200
            await c.close()
            assert app.paths() == ["/declined", "/after"]
            # The upstream connection of the declined upgrade was closed, not reused.
            assert app.seen[0]["client_port"] != app.seen[1]["client_port"]

    run(scenario)
