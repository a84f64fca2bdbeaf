"""The UI and API route (lbsolo.<domain>) can send plain HTTP to HTTPS, as apps can (issue 11, item 13).

The admin's token and session cookie cross that route: with LBSOLO_UI_HTTPS_REDIRECT on and an
HTTPS listener, a plain-HTTP request gets a 308 to https:// instead of being answered in clear.
Through the real proxy (port 0, the local CA) and the daemon's own ingress.
"""

from __future__ import annotations

from pathlib import Path

from lbsolo.config import Settings
from lbsolo.daemon_ingress import ProxyIngress, own_route
from lbsolo.dns import DNSServer
from lbsolo.proxy import ProxyServer, Target
from lbsolo.proxy_tls import CertStore, LocalCA
from tests.unit.proxy_harness import App, Conn

DOMAIN = "lbsolo.localhost"
API = Target("127.0.0.1", 7780)


def test_the_own_route_redirects_only_when_asked_and_https_is_on():
    assert own_route(Settings(ui_https_redirect=True, proxy_https_port=8443), API).https_redirect
    assert not own_route(Settings(ui_https_redirect=True, proxy_https_port=0), API).https_redirect
    assert not own_route(Settings(proxy_https_port=8443), API).https_redirect
    route = own_route(Settings(), API)
    assert route.app == "lbsolo" and route.targets == (API,)


def test_plain_http_to_the_ui_is_sent_to_https_when_the_setting_is_on(tmp_path: Path, run):
    async def answer(redirect: bool) -> tuple[int, str | None, int]:
        api = await App().start()  # stands in for the daemon's API
        tls = CertStore(DOMAIN, LocalCA(tmp_path / "ca")).server_context()
        proxy = ProxyServer(port=0, domain=DOMAIN, https_port=0, tls=tls)
        await proxy.start()
        try:
            settings = Settings(domain=DOMAIN, proxy_https_port=proxy.https_port or 0, ui_https_redirect=redirect)
            ingress = ProxyIngress(proxy, DNSServer(port=0), own_route(settings, Target("127.0.0.1", api.port)))
            ingress.publish({})
            c = await Conn.open(proxy.port)
            r = await c.request(path="/ui/login", host=f"lbsolo.{DOMAIN}:{proxy.port}")
            await c.close()
            return r.status, r.header("Location"), proxy.https_port or 0
        finally:
            await proxy.stop(1)
            await api.close()

    async def scenario() -> None:
        status, location, https_port = await answer(redirect=True)
        assert (status, location) == (308, f"https://lbsolo.{DOMAIN}:{https_port}/ui/login")
        status, location, _ = await answer(redirect=False)
        assert status == 200 and location is None

    run(scenario)
