"""Custom domains and path-prefix routes: the pure table, then once over real sockets."""

from __future__ import annotations

from lbsolo.proxy import Route, RouteTable, Target
from tests.unit.proxy_harness import App, Conn, stack

WEB = Route(app="web", domains=("Example.COM", "www.example.com."))
API = Route(app="api", domains=("example.com/api/", "example.com/api/v2"))
V2 = Route(app="v2", domains=("example.com/api/v2",))
TABLE = RouteTable("lbsolo.localhost", {"web": WEB, "api": API, "v2": V2})


def test_custom_domains_route_to_their_app_case_insensitively():
    assert TABLE.match("example.com") is WEB
    assert TABLE.match("www.example.com") is WEB
    assert TABLE.match_raw(b"EXAMPLE.com:8080") is WEB
    assert TABLE.match("web.lbsolo.localhost") is WEB  # the app's own host still works
    assert TABLE.match("other.example.com") is None


def test_path_prefixes_pick_the_longest_match_on_whole_segments():
    assert TABLE.match("example.com", "/api") is API
    assert TABLE.match("example.com", "/api/users?x=1") is API
    assert TABLE.match_raw(b"example.com", b"/api?q") is API
    assert TABLE.match("example.com", "/apiary") is WEB  # not a segment boundary
    assert TABLE.match("example.com", "/") is WEB
    # "api" and "v2" both claim /api/v2: the first app by name keeps it; longest prefix wins.
    assert TABLE.match_raw(b"example.com", b"/api/v2/x") is API
    assert TABLE.match("api.lbsolo.localhost", "/anything") is API


def test_the_first_app_by_name_keeps_a_contested_domain():
    a = Route(app="a", domains=("same.example",))
    b = Route(app="b", domains=("same.example",))
    assert RouteTable("d", {"b": b, "a": a}).match("same.example") is a


def test_route_domains_given_as_a_list_are_stored_as_a_tuple():
    table = RouteTable("d", {"x": Route(app="x", domains=["x.example"])})  # type: ignore[arg-type]
    assert table.routes["x"].domains == ("x.example",)
    assert table.match("x.example") is table.routes["x"]


def test_custom_domain_and_prefix_over_sockets(run):
    async def scenario():
        async with stack() as (proxy, web):
            api = await App().start()
            try:
                proxy.set_routes(
                    {
                        "web": Route(app="web", targets=(Target("127.0.0.1", web.port),), domains=("shop.test",)),
                        "api": Route(app="api", targets=(Target("127.0.0.1", api.port),), domains=("shop.test/api",)),
                    }
                )
                c = await Conn.open(proxy.port)
                assert (await c.request(path="/", host="SHOP.test:8080")).status == 200
                assert (await c.request(path="/api/items", host="shop.test")).status == 200
                assert (await c.request(path="/other", host="nope.test")).status == 404
                await c.close()
                assert [s.target for s in web.seen] == ["/"]
                assert [s.target for s in api.seen] == ["/api/items"]
            finally:
                await api.close()

    run(scenario)
