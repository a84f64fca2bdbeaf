"""The log drains' REST routes: /api/apps/{name}/drains (list with delivery counts, add, remove).

A thin layer over core_drains.Drains: parse, call one use case, render. Listings show a drain's
URL with its secret parts cut and its token shortened; the full values are never sent back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from lbsolo.core_drains import Drains


class HasDrains(Protocol):
    drains: Drains


class DrainIn(BaseModel):
    url: str = Field(
        description="syslog+tls://host:port, syslog://host:port (RFC 5424, octet-counted) or https://... "
        "(logplex batches); http:// only to loopback or with LBSOLO_DRAINS_ALLOW_HTTP",
        max_length=2048,
    )


class DrainOut(BaseModel):
    app: str
    id: str
    url: str = Field(description="the URL with its secret parts (password, query values, token-like path) cut")
    token: str = Field(description="the drain token (Logplex-Drain-Token, the syslog HOSTNAME), shortened")
    kind: str = Field(description="syslog, syslog+tls, https or http")
    created_at: float
    state: str = Field(description="waiting (nothing sent yet), ok, failing or stopped")
    delivered: int = Field(description="messages delivered since the daemon started")
    dropped: int = Field(description="messages dropped (buffer and spill full) since the daemon started")
    failed_attempts: int
    last_error: str | None
    last_error_at: float | None
    last_delivered_at: float | None
    buffered: int = Field(description="messages waiting in memory")
    spilled: int = Field(description="messages waiting on disk")


def create_drains_router(platform: HasDrains, require_token: Callable[..., Any]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["drains"])

    @router.get("/api/apps/{name}/drains")
    async def list_drains(name: str) -> list[DrainOut]:
        """The app's log drains with what each delivered, dropped and its last error."""
        return [DrainOut(**d) for d in await platform.drains.listing(name)]

    @router.post("/api/apps/{name}/drains", status_code=201)
    async def add_drain(name: str, body: DrainIn) -> DrainOut:
        """Send the app's logs (its processes, builds, releases, cron runs) to a drain. A bad URL,
        a duplicate (409) or a host that does not resolve changes nothing."""
        return DrainOut(**await platform.drains.add(name, body.url))

    @router.delete("/api/apps/{name}/drains/{drain}")
    async def remove_drain(name: str, drain: str) -> dict[str, str]:
        """Stop and remove a drain (what it still held is dropped)."""
        return {"removed": await platform.drains.remove(name, drain)}

    return router
