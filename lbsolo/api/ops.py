"""The API's operations routes: events (list and SSE stream), app metrics over time, webhooks
and extra API tokens.

Like api.py, a thin layer: it parses, calls the EventBus, StatsSampler, WebhookNotifier or
TokenStore, and renders JSON. Errors are lbsolo's (the app's exception handler shapes them);
every route sits behind the `require_token` dependency the API passes in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal, Protocol, get_args

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from lbsolo.api.audit import note
from lbsolo.api.guard import caller_of
from lbsolo.api.scopes import covers, limited_to, validate_role
from lbsolo.api.tokens import TokenStore
from lbsolo.errors import Forbidden, NotFound
from lbsolo.events import Event, EventBus
from lbsolo.notify import WebhookNotifier
from lbsolo.run_stats import StatsSampler

KEEPALIVE_SECONDS = 15.0
Metric = Literal["cpu", "mem", "net_rx", "net_tx", "rps", "latency_ms"]
Window = Literal["10m", "1h", "24h"]


class AppLookup(Protocol):
    """What these routes need of core.Platform: raise NotFound for an unknown app."""

    async def get_app(self, name: str) -> dict[str, Any]: ...


class WebhookCreate(BaseModel):
    url: str = Field(max_length=2048)
    app: str | None = None
    kinds: list[str] | None = Field(default=None, max_length=50)
    slack: bool = False
    secret: str | None = Field(default=None, max_length=256)


class TokenCreate(BaseModel):
    name: str = Field(max_length=40)
    role: str = Field(
        default="admin", description="admin, deploy or read (admin: what every token could do before roles)."
    )
    apps: list[str] = Field(default=[], max_length=100, description="Limit the token to these apps (none: all).")


def sse(event: Event) -> bytes:
    return f"id: {event.id}\ndata: {json.dumps(event.to_dict(), separators=(',', ':'), default=str)}\n\n".encode()


async def event_stream(
    bus: EventBus, app: str | None, after: int | None, keepalive: float = KEEPALIVE_SECONDS
) -> AsyncIterator[bytes]:
    """SSE bytes: events newer than `after` still buffered, then live ones; a comment line when idle."""
    sub = bus.subscribe(app, after=after)
    try:
        yield b": connected\n\n"  # lets clients (and proxies) see the stream is open before any event
        it = aiter(sub)
        while True:
            try:
                event = await asyncio.wait_for(anext(it), keepalive)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            except StopAsyncIteration:
                return
            yield sse(event)
    finally:
        sub.close()


def create_ops_router(
    platform: AppLookup,
    bus: EventBus,
    notifier: WebhookNotifier,
    sampler: StatsSampler,
    tokens: TokenStore,
    require_token: Callable[..., Any],
    keepalive: float = KEEPALIVE_SECONDS,
) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)])

    @router.get("/api/events", tags=["events"])
    async def events(
        app: str | None = None,
        n: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[int | None, Query(ge=0)] = None,
    ) -> list[dict[str, Any]]:
        """Recent events (deploys, releases, crashes, config and scale changes), oldest first."""
        return [e.to_dict() for e in bus.recent(n, app, after)]

    @router.get(
        "/api/events/stream",
        tags=["events"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
    )
    async def events_stream(
        app: str | None = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Live events as server-sent events (`data: <json>`); a reconnect with Last-Event-ID resumes."""
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
        return StreamingResponse(
            event_stream(bus, app, after, keepalive),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/api/apps/{name}/stats", tags=["metrics"])
    async def app_stats(name: str, metric: Metric | None = None, window: Window = "10m") -> dict[str, Any]:
        """Resource and request metrics over time: cpu (%), mem (bytes), net_rx/net_tx (bytes/s),
        rps, latency_ms; `[ts, value]` points. Without `metric`, every metric and the latest values."""
        await platform.get_app(name)
        if metric is not None:
            points = sampler.series(name, metric, window)
            return {"app": name, "metric": metric, "window": window, "points": [list(p) for p in points]}
        series = {m: [list(p) for p in sampler.series(name, m, window)] for m in get_args(Metric)}
        return {"app": name, "window": window, "series": series, "latest": sampler.latest(name)}

    @router.get("/api/webhooks", tags=["webhooks"])
    async def list_webhooks(app: str | None = None) -> list[dict[str, Any]]:
        """Registered webhooks (secrets masked); with `app`, only that app's own."""
        return [h.public() for h in notifier.webhooks(app)]

    @router.post("/api/webhooks", tags=["webhooks"], status_code=201)
    async def create_webhook(body: WebhookCreate) -> dict[str, Any]:
        """Register a webhook, for one app or (without `app`) all. The secret is shown only now."""
        if body.app is not None:
            await platform.get_app(body.app)
        hook = await notifier.create(body.url, body.app, body.kinds, body.slack, body.secret)
        return hook.to_dict()

    @router.delete("/api/webhooks/{webhook_id}", tags=["webhooks"])
    async def delete_webhook(webhook_id: str) -> dict[str, Any]:
        await notifier.delete(webhook_id)
        return {"ok": True, "id": webhook_id}

    @router.get("/api/webhooks/{webhook_id}/deliveries", tags=["webhooks"])
    async def deliveries(webhook_id: str) -> list[dict[str, Any]]:
        """Recent delivery attempts, newest last: status code or error, attempt number."""
        return [d.to_dict() for d in notifier.deliveries(webhook_id)]

    @router.post("/api/webhooks/{webhook_id}/ping", tags=["webhooks"], status_code=202)
    async def ping_webhook(webhook_id: str) -> dict[str, Any]:
        """Send a `webhook.ping` event to this webhook; see its deliveries for the outcome."""
        return notifier.ping(webhook_id).to_dict()

    @router.get("/api/tokens", tags=["tokens"])
    async def list_tokens() -> list[dict[str, Any]]:
        """Extra API tokens: name, prefix, when created and last used. The tokens themselves are not kept."""
        return await asyncio.to_thread(tokens.list)

    @router.post("/api/tokens", tags=["tokens"], status_code=201)
    async def create_token(body: TokenCreate, request: Request) -> dict[str, Any]:
        """A new API token with a role (admin, deploy, read), optionally limited to apps; it is shown in this
        answer only. An unknown role or app, or more rights than the creating token has, changes nothing."""
        role, apps = validate_role(body.role), sorted(set(body.apps))
        for app in apps:
            await platform.get_app(app)  # 404 for an app that does not exist
        caller = caller_of(request.scope)
        if caller is not None and not covers(caller.role, caller.apps, role, apps):
            raise Forbidden(
                f"a token can't create one with more rights than its own ({caller.role}{limited_to(caller.apps)})"
            )
        note(token=body.name, role=role, apps=apps)
        token_id, token = await asyncio.to_thread(tokens.create, body.name, role, apps)
        row = next((t for t in await asyncio.to_thread(tokens.list) if t["id"] == token_id), None)
        if row is None:  # revoked in between
            raise NotFound(f"token {body.name!r} was revoked while being created")
        return {**row, "token": token}

    @router.delete("/api/tokens/{id_or_name}", tags=["tokens"])
    async def revoke_token(id_or_name: str) -> dict[str, Any]:
        """Revoke a token by id or name; requests with it fail from now on. The admin token is not one of these."""
        note(token=id_or_name)
        return {"ok": True, **await asyncio.to_thread(tokens.revoke, id_or_name)}

    return router
