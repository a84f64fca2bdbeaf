"""The daemon's wiring between the core and the edge: `ProxyIngress` is the core's Ingress (routes
to the proxy, app names and domains to the DNS zone, the proxy's metrics and sleeping apps' wake
outcomes back), and `own_route` is the route to lbsolo's own UI and API at lbsolo.<domain>.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from lbsolo.config import Settings
from lbsolo.dns import DNSServer
from lbsolo.proxy import ProxyServer, Route, Target


def own_route(settings: Settings, api: Target) -> Route:
    """The proxy's route to lbsolo's own UI and API at lbsolo.<domain>; to HTTPS if asked and possible."""
    redirect = settings.ui_https_redirect and bool(settings.proxy_https_port)
    # Not buffered: the API authenticates a request before it reads the body (and refuses early),
    # which buffering here would defeat (an anonymous upload would be taken in whole first).
    return Route(app="lbsolo", targets=(api,), https_redirect=redirect, request_buffering=False)


class ProxyIngress:
    """Core's Ingress: routes go to the proxy, app names to the DNS zone."""

    def __init__(self, proxy: ProxyServer, dns: DNSServer, own: Route) -> None:
        self.proxy = proxy
        self.dns = dns
        self.own = own  # lbsolo's own UI and API at lbsolo.<domain>

    def publish(self, routes: dict[str, Route]) -> None:
        routes = {**routes, self.own.app: self.own}
        self.proxy.set_routes(routes)
        domains = frozenset(d.split("/", 1)[0] for r in routes.values() for d in r.domains)
        self.dns.set_zone(replace(self.dns.zone, apps=frozenset(routes), domains=domains))

    async def drain(self, targets: Iterable[Target], timeout: float) -> bool:
        return await self.proxy.wait_drained(targets, timeout)

    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.proxy.metrics()

    def prometheus(self) -> str:
        return self.proxy.prometheus()

    def last_requests(self) -> dict[str, float]:
        return self.proxy.last_requests

    def wake_failed(self, app: str, message: str) -> None:
        self.proxy.wake_failed(app, message)
