"""The REST routes of routing: an app's custom domains, its HTTPS settings (redirect, HSTS) and
how the proxy treats its requests, and static routes to services lbsolo does not run.

A thin layer over core_routing.Routing (through the Platform), like the rest of the API: parse,
call one use case, render. The proxy and the DNS follow each change at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from lbsolo.core import Platform
from lbsolo.core_sleep import parse_sleep_after
from lbsolo.models import APP_NAME_PATTERN


class DomainsChange(BaseModel):
    add: list[str] = []
    remove: list[str] = []


class StaticRouteCreate(BaseModel):
    name: str = Field(
        pattern=APP_NAME_PATTERN,
        description="Served at <name>.<domain>; the same rules as an app name, and not an app's.",
    )
    to: str = Field(
        max_length=64,
        pattern=r"^(?:\[[0-9A-Za-z:.%]+\]|[0-9A-Za-z.]+):[0-9]{1,5}$",
        description="HOST:PORT on this machine: an IP literal or localhost, e.g. 127.0.0.1:9000 or [::1]:9000.",
    )
    domains: list[str] = Field(
        default=[], max_length=50, description="Extra hosts routed to it, e.g. grafana.example.com."
    )


class StaticRouteOut(BaseModel):
    name: str
    to: str
    domains: list[str]
    url: str
    created_at: float


class HttpsChange(BaseModel):
    redirect: bool | None = Field(default=None, description="Answer plain-HTTP requests with 308 to https://.")
    hsts: bool | None = Field(default=None, description="Send Strict-Transport-Security over HTTPS (never over HTTP).")
    hsts_max_age: int | None = Field(default=None, description="HSTS max-age in seconds, 1 to 63072000 (two years).")
    hsts_subdomains: bool | None = Field(default=None, description="HSTS includeSubDomains.")


class ProxyChange(BaseModel):
    request_buffering: bool | None = Field(
        default=None,
        description="Read each request body whole before passing it to the app (on by default); "
        "off streams bodies through as they arrive (large uploads, long polls).",
    )


class ProxyOut(BaseModel):
    name: str
    request_buffering: bool


class SleepChange(BaseModel):
    after: str | None = Field(
        max_length=16,
        description="Stop the app's replicas after this long without a request (30m, 2h, 1d, or seconds); "
        "the next request is held while one starts. null: never sleep (and wake it now).",
    )
    with_workers: bool = Field(default=False, description="Let an app with worker processes or cron jobs sleep too.")


class SleepOut(BaseModel):
    name: str
    sleep_after: float | None = Field(description="Seconds without a request before it sleeps; null: never.")
    asleep: bool
    idle_seconds: float | None = Field(description="Since its last request (null: none since the daemon started).")


class HttpsOut(BaseModel):
    name: str
    redirect: bool
    redirect_chosen: bool = Field(description="Set by hand: a first ACME certificate does not turn the redirect on.")
    hsts: bool
    hsts_max_age: int = Field(description="seconds; 0 without HSTS")
    hsts_subdomains: bool
    active: bool = Field(description="Whether the proxy has an HTTPS listener (without one, no redirect happens).")


def create_routing_router(
    platform: Platform, require_token: Callable[..., Any], errors: dict[int | str, dict[str, Any]]
) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)])

    @router.patch("/api/apps/{name}/domains", tags=["domains"])
    async def domains(name: str, body: DomainsChange) -> list[str]:
        """Add or remove custom domains; the proxy routes them and the DNS answers for them at once."""
        return await platform.set_domains(name, body.add, body.remove)

    @router.get("/api/apps/{name}/https", tags=["domains"], responses=errors)
    async def get_https(name: str) -> HttpsOut:
        """The app's HTTPS settings."""
        return HttpsOut(**await platform.https(name))

    @router.patch("/api/apps/{name}/https", tags=["domains"], responses=errors)
    async def change_https(name: str, body: HttpsChange) -> HttpsOut:
        """Turn the HTTP -> HTTPS redirect on or off; the proxy follows at once."""
        return HttpsOut(
            **await platform.set_https(name, body.redirect, body.hsts, body.hsts_max_age, body.hsts_subdomains)
        )

    @router.get("/api/apps/{name}/proxy", tags=["apps"], responses=errors)
    async def get_proxy(name: str) -> ProxyOut:
        """How the proxy treats the app's requests."""
        return ProxyOut(**await platform.proxy_settings(name))

    @router.patch("/api/apps/{name}/proxy", tags=["apps"], responses=errors)
    async def change_proxy(name: str, body: ProxyChange) -> ProxyOut:
        """Turn request buffering on or off; the proxy follows at once (requests in flight keep their mode)."""
        return ProxyOut(**await platform.set_proxy_settings(name, body.request_buffering))

    @router.get("/api/apps/{name}/sleep", tags=["apps"], responses=errors)
    async def get_sleep(name: str) -> SleepOut:
        """Whether the app sleeps when idle, and whether it sleeps now."""
        return SleepOut(**await platform.sleep_settings(name))

    @router.put("/api/apps/{name}/sleep", tags=["apps"], responses=errors)
    async def change_sleep(name: str, body: SleepChange) -> SleepOut:
        """Sleep after a while without a request, or never (which wakes a sleeping app)."""
        after = None if body.after is None else parse_sleep_after(body.after)
        return SleepOut(**await platform.set_sleep(name, after, body.with_workers))

    @router.get("/api/routes", tags=["routes"])
    async def static_routes() -> list[StaticRouteOut]:
        """Static routes: <name>.<domain> (and extra hosts) to a service on this machine that lbsolo does not run."""
        return [StaticRouteOut(**r) for r in await platform.static_routes()]

    @router.post("/api/routes", tags=["routes"], status_code=201, responses=errors)
    async def add_static_route(body: StaticRouteCreate) -> StaticRouteOut:
        """Add a static route; the proxy routes it and the DNS answers for it at once."""
        return StaticRouteOut(**await platform.add_static_route(body.name, body.to, body.domains))

    @router.delete("/api/routes/{name}", tags=["routes"], responses=errors)
    async def remove_static_route(name: str) -> dict[str, str]:
        await platform.remove_static_route(name)
        return {"removed": name}

    return router
