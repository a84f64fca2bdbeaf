"""What a client says about itself is not believed, and an unknown host learns nothing (issue 11, items 8, 9).

Forwarding headers (`Forwarded`, `X-Real-IP`, `X-Forwarded-*`) from a client are replaced or
dropped unless the peer is a trusted proxy; absolute-form targets reach the app in origin form,
with a Host that matches the route; the 404 page of an unknown host names no app.
"""

from __future__ import annotations

import pytest

from lbsolo.proxy import Route
from tests.unit.proxy_harness import Conn, read_response, stack

FORGED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Prefix": "/admin",
    "Forwarded": "for=6.6.6.6;proto=https",
    "X-Real-IP": "6.6.6.6",
}


@pytest.mark.parametrize("method", ["GET", "POST"])  # GET takes the fast path when it can
@pytest.mark.parametrize("name", sorted(FORGED))
def test_a_clients_forwarding_headers_are_replaced(run, method, name):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            body = b"x" if method == "POST" else b""
            r = await c.request(method=method, path="/", headers={name: FORGED[name]}, body=body)
            assert r.status == 200
            [seen] = app.seen
            assert seen.header("X-Forwarded-For") == "127.0.0.1"
            assert seen.header("X-Forwarded-Proto") == "http"
            assert seen.header("X-Forwarded-Host") == "hello.lbsolo.localhost"
            for dropped in ("X-Forwarded-Port", "X-Forwarded-Prefix", "Forwarded", "X-Real-IP"):
                assert seen.header(dropped) is None, dropped
            await c.close()

    run(scenario)


def test_a_trusted_proxys_forwarding_headers_are_passed_on(run):
    async def scenario():
        async with stack(trusted_proxies=["127.0.0.0/8"]) as (proxy, app):
            c = await Conn.open(proxy.port)
            r = await c.request(path="/", headers=FORGED)
            assert r.status == 200
            [seen] = app.seen
            assert seen.header("X-Forwarded-For") == "6.6.6.6, 127.0.0.1"
            assert seen.header("X-Forwarded-Proto") == "https"
            assert seen.header("Forwarded") == "for=6.6.6.6;proto=https"
            assert seen.header("X-Real-IP") == "6.6.6.6"
            assert seen.header("X-Forwarded-Port") == "443"
            assert seen.header("X-Forwarded-Host") == "hello.lbsolo.localhost"  # the proxy's own view
            await c.close()
        async with stack(trusted_proxies=["10.0.0.0/8"]) as (proxy, app):  # 127.0.0.1 is not in it
            c = await Conn.open(proxy.port)
            assert (await c.request(path="/", headers=FORGED)).status == 200
            assert app.seen[0].header("X-Forwarded-For") == "127.0.0.1"
            await c.close()

    run(scenario)


def test_absolute_form_targets_reach_the_app_in_origin_form(run):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            r = await c.request(path="http://hello.lbsolo.localhost/p?q=1")
            assert r.status == 200 and r.json()["target"] == "/p?q=1"
            r = await c.request(path="HTTP://Hello.lbsolo.localhost:8080?q")
            assert r.status == 200 and r.json()["target"] == "/?q"
            await c.close()
            # HTTP/1.0 may leave Host out: the URL's host routes it
            c = await Conn.open(proxy.port)
            r = await c.request(path="http://hello.lbsolo.localhost/ten", host=None, version="1.0")
            assert r.status == 200 and r.json()["target"] == "/ten"
            assert app.seen[-1].header("Host") == "hello.lbsolo.localhost"
            await c.close()

    run(scenario)


@pytest.mark.parametrize(
    "target",
    ["http://other.lbsolo.localhost/", "http://user@hello.lbsolo.localhost/", "ftp://hello.lbsolo.localhost/", "x"],
)
def test_absolute_form_targets_that_disagree_with_the_host_are_refused(run, target):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            await c.send(f"GET {target} HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n\r\n".encode())
            r = await read_response(c.reader)
            assert r.status == 400
            await c.close()
            assert app.seen == []

    run(scenario)


def test_the_404_of_an_unknown_host_names_no_app(run):
    async def scenario():
        async with stack() as (proxy, _app):
            proxy.set_routes({**proxy.table.routes, "billing-internal": Route(app="billing-internal")})
            c = await Conn.open(proxy.port)
            for accept in ("text/html", "application/json"):
                r = await c.request(host="random.example", headers={"Accept": accept})
                assert r.status == 404
                assert b"hello" not in r.body and b"billing-internal" not in r.body
            await c.close()

    run(scenario)
