"""Static routes (services on this machine lbsolo does not run) and the per-app HTTPS redirect flag:
the pure decisions, the state's shared app/route namespace, and what core pushes to the ingress."""

from __future__ import annotations

import pytest

from lbsolo.core import Platform
from lbsolo.core_plan import Desired, routes_for, static_routes_for
from lbsolo.errors import Conflict, InvalidInput, NotFound
from lbsolo.models import App, StaticRoute, parse_address
from lbsolo.proxy import Route, Target
from lbsolo.state import State
from tests.unit.test_rollout import FakeEngine, FakeIngress, _platform


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        (" 10.0.0.5:1 ", ("10.0.0.5", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("LOCALHOST:80", ("localhost", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("[0:0:0:0:0:0:0:1]:80", ("::1", 80)),
    ],
)
def test_addresses_an_ip_literal_or_localhost_with_a_port(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:",
        ":9000",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:\uff19\uff10",  # fullwidth digits: str.isdigit() says yes
        "example.com:80",
        "127.1:80",
        "::1:80",  # IPv6 needs brackets
        "[127.0.0.1]:80",
        "[localhost]:80",
        "[::1]",
        "[::1]80",
        "http://127.0.0.1:80",
    ],
)
def test_bad_addresses_are_refused(text):
    with pytest.raises(InvalidInput, match="invalid address"):
        parse_address(text)


def test_a_static_route_is_validated_like_an_app_and_normalized():
    r = StaticRoute.create("grafana", "[0::1]:3000", ["Grafana.Example.com.", "grafana.example.com"])
    assert (r.name, r.to, r.domains) == ("grafana", "[::1]:3000", ["grafana.example.com"])
    assert StaticRoute.from_dict(r.to_dict()) == r
    with pytest.raises(InvalidInput, match="invalid route name"):
        StaticRoute.create("Bad_Name", "127.0.0.1:1")
    with pytest.raises(InvalidInput, match="reserved"):
        StaticRoute.create("lbsolo", "127.0.0.1:1")
    with pytest.raises(InvalidInput, match="invalid domain"):
        StaticRoute.create("ok", "127.0.0.1:1", ["nodot"])


def test_static_routes_become_proxy_routes_with_one_address_target():
    routes = static_routes_for(
        [StaticRoute.create("a", "localhost:81"), StaticRoute.create("b", "[::1]:82", ["b.example.com"])]
    )
    assert routes == {
        "a": Route(app="a", targets=(Target("127.0.0.1", 81),)),  # never a name the proxy would resolve
        "b": Route(app="b", targets=(Target("::1", 82),), domains=("b.example.com",)),
    }


def test_the_https_redirect_flag_reaches_the_route():
    routes = routes_for({"x": Desired(None, https_redirect=True), "y": Desired(None)}, [])
    assert routes["x"].https_redirect and not routes["y"].https_redirect


def test_apps_and_static_routes_share_one_namespace_in_state(tmp_path):
    state = State(tmp_path / "state.json")
    state.create_app(App("shop"))
    with pytest.raises(Conflict, match="is an app"):
        state.add_route(StaticRoute.create("shop", "127.0.0.1:1"))
    state.add_route(StaticRoute.create("grafana", "127.0.0.1:3000"))
    with pytest.raises(Conflict, match="already exists"):
        state.add_route(StaticRoute.create("grafana", "127.0.0.1:3001"))
    with pytest.raises(Conflict, match="static route"):
        state.create_app(App("grafana"))
    state.close()
    state = State(tmp_path / "state.json")  # stored, not just in memory
    assert [r.to for r in state.list_routes()] == ["127.0.0.1:3000"]
    state.delete_route("grafana")
    with pytest.raises(NotFound):
        state.delete_route("grafana")
    assert App.from_dict({"name": "old"}).https_redirect is False  # apps stored before the flag existed


def test_core_pushes_static_routes_with_the_app_routes_and_keeps_them_across_reconciles(run, tmp_path):
    async def main() -> None:
        platform, _, ingress, _ = await _platform(tmp_path, {})
        out = await platform.add_static_route("grafana", "127.0.0.1:3000", ["grafana.example.com"])
        assert out["url"].startswith("http://grafana.")
        assert ingress.routes["grafana"].targets == (Target("127.0.0.1", 3000),)
        assert "web1" in ingress.routes  # one table: apps and static routes swap together

        with pytest.raises(Conflict, match="is an app"):
            await platform.add_static_route("web1", "127.0.0.1:1")
        with pytest.raises(Conflict, match="static route"):
            await platform.create_app("grafana")
        with pytest.raises(Conflict, match=r"grafana\.example\.com already belongs to static route grafana"):
            await platform.set_domains("web1", ["grafana.example.com"], [])
        await platform.set_domains("web1", ["shop.example.com"], [])
        with pytest.raises(Conflict, match="already belongs to web1"):
            await platform.add_static_route("other", "127.0.0.1:1", ["shop.example.com"])
        with pytest.raises(InvalidInput):
            await platform.add_static_route("other", "db.internal:5432")

        await platform.reconcile()
        assert "grafana" in ingress.routes

        # A restarted daemon loads them before its first reconcile.
        ingress2 = FakeIngress(FakeEngine({}))
        platform2 = Platform(
            platform.settings, State(tmp_path / "state.json"), FakeEngine({}), platform.builder, ingress2
        )  # type: ignore[arg-type]
        await platform2.load_static_routes()
        assert ingress2.routes["grafana"].domains == ("grafana.example.com",)

        await platform.remove_static_route("grafana")
        assert "grafana" not in ingress.routes
        with pytest.raises(NotFound):
            await platform.remove_static_route("grafana")
        assert await platform.static_routes() == []

    run(main)


def test_core_sets_the_https_redirect_and_the_route_follows_at_once(run, tmp_path):
    async def main() -> None:
        platform, _, ingress, state = await _platform(tmp_path, {})
        assert (await platform.https("web1"))["redirect"] is False
        out = await platform.set_https("web1", True)
        assert out["redirect"] is True and ingress.routes["web1"].https_redirect
        assert state.get_app("web1").https_redirect and (await platform.get_app("web1"))["https_redirect"]
        await platform.reconcile()
        assert ingress.routes["web1"].https_redirect  # the desired state carries it, not only the last push
        await platform.set_https("web1", False)
        assert not ingress.routes["web1"].https_redirect
        with pytest.raises(NotFound):
            await platform.set_https("nosuch", True)

    run(main)


def test_core_switches_request_buffering_and_the_route_follows_at_once(run, tmp_path):
    async def main() -> None:
        platform, _, ingress, state = await _platform(tmp_path, {})
        assert await platform.proxy_settings("web1") == {"name": "web1", "request_buffering": True}
        assert ingress.routes["web1"].request_buffering
        out = await platform.set_proxy_settings("web1", False)
        assert out["request_buffering"] is False and not ingress.routes["web1"].request_buffering
        assert state.get_app("web1").request_buffering is False
        assert (await platform.get_app("web1"))["request_buffering"] is False
        await platform.reconcile()
        assert not ingress.routes["web1"].request_buffering  # the desired state carries it
        assert (await platform.set_proxy_settings("web1", None))["request_buffering"] is False
        await platform.set_proxy_settings("web1", True)
        assert ingress.routes["web1"].request_buffering
        with pytest.raises(NotFound):
            await platform.set_proxy_settings("nosuch", False)
        assert App.from_dict({"name": "old"}).request_buffering is True  # apps stored before the switch

    run(main)


def test_the_request_buffering_switch_reaches_the_route():
    routes = routes_for({"x": Desired(None, request_buffering=False), "y": Desired(None)}, [])
    assert not routes["x"].request_buffering and routes["y"].request_buffering
