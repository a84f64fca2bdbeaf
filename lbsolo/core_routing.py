"""How an app is reached: custom domains, the HTTPS redirect, request buffering, static routes.

A part of the core that Platform composes over the CoreContext; it must not run the reconcile loop
or roll releases out itself (Rollouts does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from lbsolo.core_context import CoreContext
from lbsolo.core_plan import (
    static_routes_for,
)
from lbsolo.errors import Conflict, NotFound
from lbsolo.models import (
    App,
    StaticRoute,
    validate_custom_domain,
    validate_domain,
)
from lbsolo.proxy import Route

log = logging.getLogger("lbsolo.core")


class Routing:
    """How an app is reached: custom domains, the HTTPS redirect, request buffering, static routes."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self.static_lock = asyncio.Lock()  # static routes change one at a time

    async def set_domains(self, name: str, add: list[str], remove: list[str]) -> list[str]:
        """Custom domains: routed by the proxy and answered by the DNS as soon as they change."""
        added = [validate_custom_domain(d, self.ctx.settings.domain) for d in add]
        removed = {validate_domain(d) for d in remove}  # one stored before a name was reserved can go
        async with self.ctx.lock(name):
            app = await self.ctx.app(name)
            for other in await asyncio.to_thread(self.ctx.state.list_apps):
                clash = set(added) & set(other.domains)
                if other.name != name and clash:
                    raise Conflict(f"{', '.join(sorted(clash))} already belongs to {other.name}")
            for static in await asyncio.to_thread(self.ctx.state.list_routes):
                clash = set(added) & set(static.domains)
                if clash:
                    raise Conflict(f"{', '.join(sorted(clash))} already belongs to static route {static.name}")
            missing = removed - set(app.domains)
            if missing:
                raise NotFound(f"{name} has no domain {', '.join(sorted(missing))}")
            app.domains = sorted((set(app.domains) | set(added)) - removed)
            await self.ctx.save(app)
            route = self.ctx.routes.get(name, Route(app=name))
            self.ctx.publish_route(name, replace(route, domains=tuple(app.domains)))
        if added or removed:  # certificates (core_certs) follow the domains
            self.ctx.bus.emit("domains.changed", name, f"domains of {name}: {', '.join(app.domains) or 'none'}",
                              added=sorted(added), removed=sorted(removed))  # fmt: skip
        return app.domains

    async def https(self, name: str) -> dict[str, Any]:
        return self._https(await self.ctx.app(name))

    async def set_https(self, name: str, redirect: bool | None) -> dict[str, Any]:
        """`redirect` sends the app's plain-HTTP requests to https:// (308) from now on; None changes nothing."""
        if redirect is None:
            return await self.https(name)
        # Under the app's lock: a rollout in progress saves the app and its route when it ends.
        async with self.ctx.lock(name):
            app = await self.ctx.app(name)
            if redirect != app.https_redirect:
                app.https_redirect = redirect
                await self.ctx.save(app)
                route = self.ctx.routes.get(name, Route(app=name))
                self.ctx.publish_route(name, replace(route, https_redirect=redirect))
        return self._https(app)

    async def proxy_settings(self, name: str) -> dict[str, Any]:
        return self._proxy_settings(await self.ctx.app(name))

    async def set_proxy_settings(self, name: str, request_buffering: bool | None) -> dict[str, Any]:
        """`request_buffering` off streams the app's request bodies to it as they arrive; None changes nothing."""
        if request_buffering is None:
            return await self.proxy_settings(name)
        async with self.ctx.lock(name):  # as set_https: a rollout in progress publishes the saved app's route
            app = await self.ctx.app(name)
            if request_buffering != app.request_buffering:
                app.request_buffering = request_buffering
                await self.ctx.save(app)
                route = self.ctx.routes.get(name, Route(app=name))
                self.ctx.publish_route(name, replace(route, request_buffering=request_buffering))
        return self._proxy_settings(app)

    @staticmethod
    def _proxy_settings(app: App) -> dict[str, Any]:
        return {"name": app.name, "request_buffering": app.request_buffering}

    def _https(self, app: App) -> dict[str, Any]:
        # Without an HTTPS listener the flag is kept but has no effect; say so instead of hiding it.
        return {"name": app.name, "redirect": app.https_redirect, "active": bool(self.ctx.settings.proxy_https_port)}

    async def load_static_routes(self) -> None:
        """At startup: put the stored static routes into the proxy and DNS."""
        statics = await asyncio.to_thread(self.ctx.state.list_routes)
        self.ctx.static = static_routes_for(statics)
        self.ctx.push()

    async def static_routes(self) -> list[dict[str, Any]]:
        return [self._describe_static(r) for r in await asyncio.to_thread(self.ctx.state.list_routes)]

    def _describe_static(self, route: StaticRoute) -> dict[str, Any]:
        return {**route.to_dict(), "url": self.ctx.settings.app_url(route.name)}

    async def add_static_route(self, name: str, to: str, domains: Iterable[str] = ()) -> dict[str, Any]:
        """Route `<name>.<domain>` (and `domains`) to `to`; the name must not be an app's (state checks it)."""
        route = StaticRoute.create(name, to, domains)
        for domain in route.domains:
            validate_custom_domain(domain, self.ctx.settings.domain)
        async with self.static_lock:
            taken = {d: a.name for a in await asyncio.to_thread(self.ctx.state.list_apps) for d in a.domains}
            taken |= {
                d: f"static route {r.name}"
                for r in await asyncio.to_thread(self.ctx.state.list_routes)
                for d in r.domains
            }
            clash = sorted(d for d in route.domains if d in taken)
            if clash:
                raise Conflict(f"{', '.join(clash)} already belongs to {taken[clash[0]]}")
            await asyncio.to_thread(self.ctx.state.add_route, route)
            self.ctx.static = {**self.ctx.static, **static_routes_for([route])}
            self.ctx.push()
        return self._describe_static(route)

    async def remove_static_route(self, name: str) -> None:
        async with self.static_lock:
            await asyncio.to_thread(self.ctx.state.delete_route, name)
            self.ctx.static = {k: v for k, v in self.ctx.static.items() if k != name}
            self.ctx.push()
