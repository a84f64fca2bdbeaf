"""The app page's certificates (issuer, expiry red under 14 days, last attempt and error, Renew)
and its HSTS toggle, over the UI router with hand-written fakes (test_web's FakePlatform)."""

from __future__ import annotations

import html
import time
from typing import Any

import pytest
from fastapi import FastAPI

from lbsolo.api.web import create_web_router
from lbsolo.errors import InvalidInput, NotFound
from tests.unit.test_web import TOKEN, Client, FakePlatform, login

SHOP = "shop.example.com"


class FakeCerts:
    enabled = True

    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls
        soon = time.time() + 5 * 86400
        self.records = {
            SHOP: {"domain": SHOP, "status": "valid", "issuer": "Pebble Intermediate CA 1a2b", "not_after": soon,
                   "expires_soon": True, "last_attempt": time.time() - 60, "last_error": "the CA refused: <rate>"},
            "new.example.com": {"domain": "new.example.com", "status": "waiting", "issuer": "", "not_after": 0,
                                "expires_soon": False, "last_attempt": 0, "last_error": ""},
        }  # fmt: skip

    async def info(self, domain: str) -> dict[str, Any]:
        if domain not in self.records:
            raise NotFound(f"no app or route serves {domain}")
        return self.records[domain]

    async def request_renewal(self, domain: str) -> dict[str, Any]:
        self.calls.append(("renew", domain))
        return self.records[domain]


class CertPlatform(FakePlatform):
    def __init__(self) -> None:
        super().__init__()
        self.certs: FakeCerts | None = FakeCerts(self.calls)
        self.hsts = 0

    def _app(self) -> dict[str, Any]:
        return {**super()._app(), "domains": [SHOP, "new.example.com/api"]}

    async def https(self, name: str) -> dict[str, Any]:
        out = await super().https(name)
        return {**out, "hsts": bool(self.hsts), "hsts_max_age": self.hsts, "hsts_subdomains": False}

    async def set_https(self, name: str, redirect: bool | None, hsts: bool | None = None) -> dict[str, Any]:
        await self.get_app(name)
        if hsts and not self.https_port:
            raise InvalidInput(f"{name} has no HTTPS listener to send HSTS on: start lbsolo with --https-port (443)")
        self.calls.append(("hsts", hsts))
        if hsts is not None:
            self.hsts = 31536000 if hsts else 0
        return await self.https(name)


@pytest.fixture
def platform() -> CertPlatform:
    return CertPlatform()


@pytest.fixture
def client(platform):
    app = FastAPI()
    app.include_router(create_web_router(platform, TOKEN, bus=None, notifier=None, sampler=None))  # type: ignore[arg-type]
    c = Client(app)
    yield c
    c.close()


def test_the_app_page_shows_each_domains_certificate_and_renews_it_with_the_csrf_token(client, platform):
    csrf = login(client)
    page = client.get("/ui/apps/hello").text
    row = page[page.index(f'data-cert="{SHOP}"') :].split("</tr>", 1)[0]
    assert "Pebble Intermediate CA 1a2b" in row and 'class="bad" data-expiry' in row  # under 14 days: red
    assert html.escape("the CA refused: <rate>") in row and "<rate>" not in row
    waiting = page[page.index('data-cert="new.example.com"') :].split("</tr>", 1)[0]
    assert "none yet" in waiting and "never" in waiting
    assert client.post("/ui/apps/hello/certs/renew", data={"domain": SHOP}).status_code == 403  # no CSRF token
    r = client.post("/ui/apps/hello/certs/renew", data={"domain": SHOP, "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/apps/hello"
    assert f"a new certificate for {SHOP} is being asked for" in client.get("/ui/apps/hello").text
    assert platform.calls == [("renew", SHOP)]


def test_renew_refuses_a_domain_of_another_app_and_says_when_acme_is_off(client, platform):
    csrf = login(client)
    client.post("/ui/apps/hello/certs/renew", data={"domain": "other.example.com", "csrf": csrf})
    assert "other.example.com is not a domain of hello" in client.get("/ui/apps/hello").text
    platform.certs = None
    page = client.get("/ui/apps/hello").text
    assert 'id="certs"' not in page and 'id="acme-off"' in page
    client.post("/ui/apps/hello/certs/renew", data={"domain": SHOP, "csrf": csrf})
    assert "ACME is off: set LBSOLO_ACME_EMAIL" in client.get("/ui/apps/hello").text
    assert platform.calls == []


def test_hsts_is_toggled_beside_the_redirect_and_refused_without_an_https_listener(client, platform):
    csrf = login(client)
    page = client.get("/ui/apps/hello").text
    assert 'id="hsts-state">off' in page and 'name="hsts" value="on" disabled' in page
    client.post("/ui/apps/hello/hsts", data={"hsts": "on", "csrf": csrf})
    assert "no HTTPS listener to send HSTS on: start lbsolo with --https-port" in client.get("/ui/apps/hello").text
    platform.https_port = 8443
    client.post("/ui/apps/hello/hsts", data={"hsts": "on", "csrf": csrf})
    page = client.get("/ui/apps/hello").text
    assert "HSTS on (max-age=31536000), sent over HTTPS only" in page and 'id="hsts-state">on' in page
    client.post("/ui/apps/hello/hsts", data={"hsts": "off", "csrf": csrf})
    client.post("/ui/apps/hello/hsts", data={"hsts": "maybe", "csrf": csrf})
    assert "hsts must be on or off" in client.get("/ui/apps/hello").text
    assert platform.hsts == 0 and platform.calls == [("hsts", True), ("hsts", False)]
