"""The per-app HTTP -> HTTPS redirect: the 308 it writes, and the proxy answering it over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest

from lbsolo.proxy import ProxyServer, Route, Target
from lbsolo.proxy_http import _https_redirect
from lbsolo.proxy_tls import CertStore, LocalCA
from tests.unit.proxy_harness import App, Conn, read_response

DOMAIN = "lbsolo.localhost"


@pytest.mark.parametrize(
    ("host", "target", "port", "location"),
    [
        ("shop.example.com", b"/cart?item=1&x=%20", 443, b"https://shop.example.com/cart?item=1&x=%20"),
        ("hello.lbsolo.localhost", b"/", 8443, b"https://hello.lbsolo.localhost:8443/"),
        ("shop.example.com", b"http://shop.example.com:80/a/b?q", 443, b"https://shop.example.com/a/b?q"),
        ("shop.example.com", b"http://shop.example.com", 443, b"https://shop.example.com/"),
        ("shop.example.com", b"*", 443, b"https://shop.example.com/"),
    ],
)
def test_the_location_keeps_host_path_and_query_and_names_the_port_unless_443(host, target, port, location):
    head = _https_redirect(host, target, port, b"rid", True, True)
    assert head.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n")
    assert b"\r\nLocation: " + location + b"\r\n" in head
    assert b"\r\nContent-Length: 0\r\n" in head and b"\r\nX-Request-Id: rid\r\n" in head
    assert head.endswith(b"\r\n\r\n") and b"Connection:" not in head


def test_the_redirect_says_when_the_connection_closes_or_stays_for_http10():
    assert b"\r\nConnection: close\r\n" in _https_redirect("h.test", b"/", 443, b"r", False, True)
    assert b"\r\nConnection: keep-alive\r\n" in _https_redirect("h.test", b"/", 443, b"r", True, False)


@contextlib.asynccontextmanager
async def redirect_stack(tmp_path: Path, https: bool = True):
    app = await App().start()
    ca = LocalCA(tmp_path / "ca")
    tls = CertStore(DOMAIN, ca).server_context() if https else None
    proxy = ProxyServer(port=0, domain=DOMAIN, https_port=0 if https else None, tls=tls)
    target = (Target("127.0.0.1", app.port),)
    proxy.set_routes(
        {
            "secure": Route(app="secure", targets=target, domains=("shop.test",), https_redirect=True),
            "plain": Route(app="plain", targets=target),
        }
    )
    await proxy.start()
    try:
        yield proxy, app, ca
    finally:
        await proxy.stop(1)
        await app.close()


def test_plain_http_gets_308_to_https_and_https_is_proxied(run, tmp_path: Path):
    async def scenario():
        async with redirect_stack(tmp_path) as (proxy, app, ca):
            c = await Conn.open(proxy.port)
            r = await c.request(path="/pay?amount=5", host=f"Secure.LBSOLO.localhost:{proxy.port}")
            assert r.status == 308
            assert r.header("Location") == f"https://secure.lbsolo.localhost:{proxy.https_port}/pay?amount=5"
            # A POST with its body keeps the connection (308: the client repeats method and body).
            r = await c.request("POST", "/form", host="shop.test", body=b"a=1")
            assert (r.status, r.header("Location")) == (308, f"https://shop.test:{proxy.https_port}/form")
            assert r.header("Connection") is None
            # Routes without the flag are proxied on the same connection.
            r = await c.request(path="/x", host="plain.lbsolo.localhost")
            assert r.status == 200 and [s.target for s in app.seen] == ["/x"]
            await c.close()
            assert proxy.metrics()["secure"]["responses"]["3xx"] == 2

            ctx = ssl.create_default_context(cafile=str(ca.cert_path))
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", proxy.https_port, ssl=ctx, server_hostname="secure.lbsolo.localhost"
            )
            writer.write(b"GET /pay HTTP/1.1\r\nHost: secure.lbsolo.localhost\r\nConnection: close\r\n\r\n")
            r = await read_response(reader)
            assert r.status == 200 and r.json()["target"] == "/pay"
            assert app.seen[-1].header("X-Forwarded-Proto") == "https"
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    run(scenario)


def test_a_body_still_arriving_is_not_read_the_connection_closes_after_the_redirect(run, tmp_path: Path):
    async def scenario():
        async with redirect_stack(tmp_path) as (proxy, app, _ca):
            c = await Conn.open(proxy.port)
            await c.send(b"PUT /big HTTP/1.1\r\nHost: secure.lbsolo.localhost\r\nContent-Length: 1000000\r\n\r\npart")
            r = await read_response(c.reader)
            assert (r.status, r.header("Connection")) == (308, "close")
            assert await c.at_eof()
            assert app.seen == []
            await c.close()

    run(scenario)


def test_without_an_https_listener_the_flag_changes_nothing(run, tmp_path: Path):
    async def scenario():
        async with redirect_stack(tmp_path, https=False) as (proxy, app, _ca):
            c = await Conn.open(proxy.port)
            r = await c.request(path="/", host="secure.lbsolo.localhost")
            assert r.status == 200 and len(app.seen) == 1
            await c.close()

    run(scenario)
