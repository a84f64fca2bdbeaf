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

from lbsolo.acme_plan import redirect_by_default
from lbsolo.core_context import CoreContext
from lbsolo.core_plan import (
    HSTS_DEFAULT_MAX_AGE,
    hsts_line,
    static_routes_for,
    validate_hsts_max_age,
)
from lbsolo.errors import Conflict, InvalidInput, NotFound
from lbsolo.events import Event
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

    async def set_https(
        self,
        name: str,
        redirect: bool | None,
        hsts: bool | None = None,
        hsts_max_age: int | None = None,
        hsts_subdomains: bool | None = None,
    ) -> dict[str, Any]:
        """`redirect` sends the app's plain-HTTP requests to https:// (308) from now on (and is the
        owner's choice: a first ACME certificate no longer changes it); `hsts` adds a
        Strict-Transport-Security header to its responses over HTTPS. None changes nothing.
        Everything is checked before anything changes."""
        if hsts_max_age is not None:
            validate_hsts_max_age(hsts_max_age)
        if hsts and not self.ctx.settings.proxy_https_port:
            raise InvalidInput(f"{name} has no HTTPS listener to send HSTS on: start lbsolo with --https-port (443)")
        # Under the app's lock: a rollout in progress saves the app and its route when it ends.
        async with self.ctx.lock(name):
            app = await self.ctx.app(name)
            on = bool(app.hsts_max_age) if hsts is None else hsts
            if not on and hsts is not False and (hsts_max_age is not None or hsts_subdomains is not None):
                raise InvalidInput(f"HSTS is off for {name}: turn it on with --hsts")
            if hsts is False and (hsts_max_age is not None or hsts_subdomains):
                raise InvalidInput("--no-hsts takes no max-age or subdomains")
            before = (app.https_redirect, app.redirect_chosen, app.hsts_max_age, app.hsts_subdomains)
            if redirect is not None:
                app.https_redirect, app.redirect_chosen = redirect, True
            if not on:
                app.hsts_max_age, app.hsts_subdomains = 0, False
            else:
                app.hsts_max_age = hsts_max_age or app.hsts_max_age or HSTS_DEFAULT_MAX_AGE
                if hsts_subdomains is not None:
                    app.hsts_subdomains = hsts_subdomains
            if before != (app.https_redirect, app.redirect_chosen, app.hsts_max_age, app.hsts_subdomains):
                await self._publish_https(app)
        return self._https(app)

    async def _publish_https(self, app: App) -> None:
        await self.ctx.save(app)
        route = self.ctx.routes.get(app.name, Route(app=app.name))
        hsts = hsts_line(app.hsts_max_age, app.hsts_subdomains)
        self.ctx.publish_route(app.name, replace(route, https_redirect=app.https_redirect, hsts=hsts))

    def on_event(self, event: Event) -> None:
        """A bus listener: a domain's first ACME certificate turns its app's HTTPS redirect on."""
        if event.kind == "cert.issued" and event.data.get("first"):
            domain = str(event.data.get("domain", ""))
            self.ctx.spawn(self.redirect_after_certificate(domain), f"redirect-{domain}")

    async def redirect_after_certificate(self, domain: str) -> str | None:
        """Turn on the HTTPS redirect of the app that serves `domain` (a public name that just got
        its first certificate), unless its owner chose the redirect already. The app's name, if changed."""
        own = self.ctx.settings.domain.lower().rstrip(".")
        for app in await asyncio.to_thread(self.ctx.state.list_apps):
            hosts = {d.split("/", 1)[0].lower() for d in app.domains} | {f"{app.name}.{own}"}
            if domain not in hosts or not redirect_by_default(app.https_redirect, app.redirect_chosen, domain):
                continue
            async with self.ctx.lock(app.name):
                app = await self.ctx.app(app.name)
                if not redirect_by_default(app.https_redirect, app.redirect_chosen, domain):
                    return None
                app.https_redirect = True
                await self._publish_https(app)
            note = f"{app.name}: HTTP -> HTTPS redirect on ({domain} has a certificate)"
            self.ctx.bus.emit("https.redirect", app.name, note, domain=domain)
            return app.name
        return None

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
        return {
            "name": app.name,
            "redirect": app.https_redirect,
            "redirect_chosen": app.redirect_chosen,
            "hsts": bool(app.hsts_max_age),
            "hsts_max_age": app.hsts_max_age,
            "hsts_subdomains": app.hsts_subdomains,
            "active": bool(self.ctx.settings.proxy_https_port),
        }

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
