"""lbsolo's own names cannot be taken (issue 11, item 7).

`lbsolo.<domain>` serves the UI and API and receives the admin's session cookie; custom domains
are matched before app names, so a custom domain `lbsolo.<domain>` took it over. No app name,
custom domain or static route may take lbsolo's host, anything under it, the bare domain, the
other reserved names, or another app's `<name>.<domain>`.
"""

from __future__ import annotations

import pytest

from lbsolo.errors import InvalidInput
from lbsolo.models import App, reserved_host, validate_app_name, validate_custom_domain
from lbsolo.proxy import RouteTable
from tests.unit.test_rollout import _platform

DOMAIN = "lbsolo.localhost"

RESERVED = [
    "lbsolo.lbsolo.localhost",
    "LBSOLO.lbsolo.localhost.",
    "x.lbsolo.lbsolo.localhost",
    "*.lbsolo.lbsolo.localhost",
    "lbsolo.localhost",
    "*.lbsolo.localhost",
    "www.lbsolo.localhost",
    "ns.lbsolo.localhost",
    "api.lbsolo.localhost",
    "admin.lbsolo.localhost",
]


@pytest.mark.parametrize("host", RESERVED)
def test_lbsolo_hosts_are_reserved(host):
    assert reserved_host(host, DOMAIN)
    with pytest.raises(InvalidInput, match="reserved for lbsolo"):
        validate_custom_domain(host, DOMAIN)


@pytest.mark.parametrize("host", ["shop.example.com", "*.example.com", "lbsolo.example.com", "a.b.lbsolo.localhost"])
def test_other_hosts_are_free(host):
    assert not reserved_host(host, DOMAIN)
    assert validate_custom_domain(host, DOMAIN) == host


def test_a_wildcard_over_the_domain_is_reserved():
    with pytest.raises(InvalidInput, match="reserved for lbsolo"):
        validate_custom_domain("*.example.com", "apps.example.com")  # it covers apps.example.com
    assert validate_custom_domain("*.shop.example.com", "apps.example.com") == "*.shop.example.com"


def test_an_app_host_is_not_a_custom_domain():
    with pytest.raises(InvalidInput, match="host of the app or route named 'shop'"):
        validate_custom_domain("shop.lbsolo.localhost", DOMAIN)


@pytest.mark.parametrize("name", ["lbsolo", "www", "api", "ns", "admin", "localhost"])
def test_reserved_app_names(name):
    with pytest.raises(InvalidInput, match="reserved"):
        validate_app_name(name)


def test_domains_add_and_static_routes_refuse_lbsolo_hosts(tmp_path, run):
    async def main() -> None:
        platform, _, _, state = await _platform(tmp_path, {})
        with pytest.raises(InvalidInput, match="reserved for lbsolo"):
            await platform.set_domains("web1", ["lbsolo.lbsolo.localhost"], [])
        with pytest.raises(InvalidInput, match="reserved for lbsolo"):
            await platform.set_domains("web1", ["*.lbsolo.localhost"], [])
        with pytest.raises(InvalidInput):
            await platform.set_domains("web1", ["other.lbsolo.localhost"], [])
        assert state.get_app("web1").domains == []
        with pytest.raises(InvalidInput, match="reserved for lbsolo"):
            await platform.add_static_route("grafana", "127.0.0.1:3000", ["lbsolo.lbsolo.localhost"])
        with pytest.raises(InvalidInput, match="reserved"):
            await platform.add_static_route("lbsolo", "127.0.0.1:3000")
        with pytest.raises(InvalidInput, match="reserved"):
            await platform.create_app("lbsolo")
        assert state.list_routes() == []

    run(main)


def test_a_reserved_domain_stored_before_is_never_routed(tmp_path, run):
    async def main() -> None:
        platform, _, ingress, state = await _platform(tmp_path, {})
        state.save_app(App("web1", domains=["lbsolo.lbsolo.localhost", "shop.example.com"]))
        await platform.reconcile()
        assert ingress.routes["web1"].domains == ("shop.example.com",)
        table = RouteTable(DOMAIN, ingress.routes)
        assert table.match("lbsolo.lbsolo.localhost") is None
        # and it can still be removed
        assert await platform.set_domains("web1", [], ["lbsolo.lbsolo.localhost"]) == ["shop.example.com"]

    run(main)
