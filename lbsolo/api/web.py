"""The web UI: server-rendered pages over core.Platform, served by the API's process under /ui/.

Login takes the admin token or an extra token and hands out a session cookie (HttpOnly,
SameSite=Strict) that is signed with a key derived from the admin token, so sessions survive a
daemon restart and die with the token (an extra token's, when that token is revoked). A session
of a scoped token may do what its token may (the API guard refuses the rest, scopes.UI_AS_API),
and its pages show only that: its apps on the dashboard, only the forms it may post. Every
state-changing form carries a per-session CSRF token. Templates autoescape, and a strict
Content-Security-Policy allows only lbsolo's own script file, so a value such as `<script>` in a
config var can only ever show up as text.

This module routes, checks sessions and forms, renders and redirects; it decides nothing about
apps: each form calls one Platform use case, and what each page shows is gathered in
lbsolo.api.web_views (sessions, CSRF and form parsing are in lbsolo.api.web_session; the add-on
pages' routes in lbsolo.api.web_addons). It must not import the engine, the state store or the CLI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from lbsolo.api import web_views as views
from lbsolo.api.audit import AuditLog, note
from lbsolo.api.auth import Authenticator, Caller
from lbsolo.api.scopes import ui_allowed
from lbsolo.api.web_addons import Pages, create_web_addons_router
from lbsolo.api.web_alerts import create_web_alerts_router
from lbsolo.api.web_certs import create_web_certs_router
from lbsolo.api.web_cron import create_web_cron_router
from lbsolo.api.web_drains import create_web_drains_router
from lbsolo.api.web_jobs import UiDeploys
from lbsolo.api.web_nodes import create_web_nodes_router
from lbsolo.api.web_render import CONTENT_TYPES, SECURITY_HEADERS, static_versions, template_env
from lbsolo.api.web_session import (
    COOKIE,
    RevokedSessions,
    Session,
    Sessions,
    job_outcome,
    on_off,
    parse_form,
    safe_next,
    same_origin,
    sparkline,
    split_domains,
    sse_event,
)
from lbsolo.core import Platform
from lbsolo.errors import InvalidInput, LbsoloError
from lbsolo.models import WEB, parse_formation, validate_app_name

__all__ = [  # with the helpers tests use from here
    "COOKIE", "Session", "Sessions", "create_web_router", "job_outcome", "parse_form", "safe_next",
    "same_origin", "sparkline", "split_domains", "sse_event",
]  # fmt: skip

if TYPE_CHECKING:
    from lbsolo.events import EventBus
    from lbsolo.notify import WebhookNotifier
    from lbsolo.run_stats import StatsSampler

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # a proxy in front must not buffer the stream
MAX_FORM_BYTES = 256 * 1024  # a config value may be 32 KiB; anything far beyond is not a form of ours

# ---- the router ----------------------------------------------------------------------------


def create_web_router(
    platform: Platform,
    token: str,
    revoked: RevokedSessions | None = None,
    *,
    bus: EventBus | None,
    notifier: WebhookNotifier | None,
    sampler: StatsSampler | None,
    audit: AuditLog | None = None,
    auth: Authenticator | None = None,
    sessions: Sessions | None = None,
) -> APIRouter:
    """The web UI. `bus`, `notifier` and `sampler` feed its event list, webhook deliveries and
    graphs; None (a UI tested without them) shows those parts as not available. Without `auth`,
    only the admin token logs in."""
    router = APIRouter(include_in_schema=False)
    sessions = sessions or Sessions(token, store=revoked)
    auth = auth or Authenticator(token)
    static = static_versions()
    templates = template_env(static)
    flashes: dict[str, tuple[str, str]] = {}  # session id -> the message the next page shows
    deploys = UiDeploys(platform)  # first deploys the New app form started, streamed on the app page

    def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def page(request: Request, name: str, session: Session, status: int = 200, **context: Any) -> HTMLResponse:
        flash = flashes.pop(session.id, None)
        who = auth.session_caller(session.token_id) or Caller("gone", "", "read", ("",))

        def can(path: str, method: str = "POST") -> bool:
            return ui_allowed(who.role, who.apps, method, path)

        return render(name, status, csrf=sessions.csrf_token(session), flash=flash, can=can, who=who, **context)

    def current(request: Request) -> Session | None:
        """The request's live session: its cookie checks out and its token (if not the admin's) still exists."""
        session = sessions.verify(request.cookies.get(COOKIE))
        if session is None or auth.session_caller(session.token_id) is None:
            return None
        return session

    def to_login(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target, safe='/')}", status_code=303)

    def forbidden(reason: str) -> HTMLResponse:
        return render("error.html", 403, title="Forbidden", message=reason)

    async def form_of(request: Request) -> dict[str, str] | Response:
        """The posted form, or the response that refuses it (wrong origin or type, too big)."""
        if not same_origin(request.headers.get("origin"), request.headers.get("host")):
            return forbidden("This form was posted from another site.")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("", "application/x-www-form-urlencoded"):
            return render("error.html", 415, title="Unsupported form", message="Post the UI's own forms.")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return render("error.html", 413, title="Too large", message="The form is too large.")
        try:
            return parse_form(body)
        except InvalidInput as e:
            return render("error.html", 400, title="Bad form", message=e.message)

    async def checked_post(request: Request) -> tuple[Session, dict[str, str]] | Response:
        session = current(request)
        if session is None:
            return to_login(request)
        note(actor=ui_actor(session, auth))
        form = await form_of(request)
        if isinstance(form, Response):
            return form
        if not sessions.check_csrf(session, form.get("csrf")):
            return forbidden("The form's CSRF token is missing or stale: reload the page and try again.")
        return session, form

    def back_to(session: Session, path: str, kind: str, message: str) -> RedirectResponse:
        flashes[session.id] = (kind, message)
        return RedirectResponse(path, status_code=303)

    def back_to_app(session: Session, name: str, kind: str, message: str) -> RedirectResponse:
        return back_to(session, f"/ui/apps/{quote(name)}", kind, message)

    # ---- login, logout, static
    @router.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @router.get("/ui")
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @router.get("/ui/static/{name}")
    async def static_file(name: str) -> Response:
        if name not in static:
            return Response("not found\n", status_code=404, media_type="text/plain")
        body, _ = static[name]
        content_type = CONTENT_TYPES[Path(name).suffix]
        # Pages ask for ?v=<hash of the file>: a new version is a new URL, so caching forever is safe.
        headers = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}
        return Response(body, media_type=content_type, headers=headers)

    @router.get("/ui/login")
    async def login_page(request: Request, next: str = "/ui/") -> Response:
        if current(request) is not None:
            return RedirectResponse(safe_next(next), status_code=303)
        return render("login.html", next=safe_next(next), error=None)

    @router.post("/ui/login")
    async def login(request: Request) -> Response:
        form = await form_of(request)
        if isinstance(form, Response):
            return form
        target = safe_next(form.get("next"))
        given = form.get("token", "").strip()
        caller = None if sessions.check_token(given) else await auth.verify(given)
        if caller is None and not sessions.check_token(given):
            return render("login.html", 401, next=target, error="That is not a token of this lbsolo.")
        _, cookie = sessions.issue(caller.token_id if caller is not None else None)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=sessions.max_age,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/ui/logout")
    async def logout(request: Request) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, _ = checked
        await asyncio.to_thread(sessions.revoke, session)
        flashes.pop(session.id, None)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # ---- pages
    @router.get("/ui/")
    async def dashboard(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_login(request)
        shown = await views.dashboard(platform, bus, sampler)
        who = auth.session_caller(session.token_id)
        return page(request, "dashboard.html", session, **(views.only_apps(shown, who.apps) if who else shown))

    @router.get("/ui/apps/{name}")
    async def app_page(request: Request, name: str) -> Response:
        session = current(request)
        if session is None:
            return to_login(request)
        try:
            shown = await views.app_page(platform, sampler, name)
        except LbsoloError as e:
            return page(request, "error.html", session, e.status, title="Not available", message=e.message)
        git_remote = f"{str(request.base_url).rstrip('/')}/git/{quote(name)}.git"
        return page(request, "app.html", session, deploy=deploys.get(name), git_remote=git_remote, **shown)

    @router.get("/ui/apps/{name}/deploy/stream")
    async def deploy_stream(request: Request, name: str) -> Response:
        """Server-sent events: the output of the deploy the New app form started, from its first line."""
        if current(request) is None:
            return Response("log in first\n", status_code=401, media_type="text/plain")
        return StreamingResponse(
            deploys.events(name), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @router.get("/ui/webhooks")
    async def webhooks_page(request: Request) -> Response:
        """Outbound webhooks and their recent delivery attempts."""
        session = current(request)
        if session is None:
            return to_login(request)
        return page(request, "webhooks.html", session, **views.webhooks(notifier))

    @router.get("/ui/audit")
    async def audit_page(request: Request, app: str = "", actor: str = "", since: str = "", n: int = 200) -> Response:
        """The audit log, newest first, filtered by app (or add-on), actor and age."""
        session = current(request)
        if session is None:
            return to_login(request)
        ages = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}
        start = time.time() - ages[since] if since in ages else None
        rows = [] if audit is None else await asyncio.to_thread(audit.read, app or None, start, actor or None, n)
        return page(
            request, "audit.html", session, entries=rows[::-1], app=app, actor=actor, since=since if start else ""
        )

    @router.get("/ui/routes")
    async def routes_page(request: Request) -> Response:
        """Static routes: hosts the proxy sends to services on this machine that lbsolo does not run."""
        session = current(request)
        if session is None:
            return to_login(request)
        return page(request, "routes.html", session, routes=await platform.static_routes())

    @router.get("/ui/apps/{name}/logs/stream")
    async def log_stream(request: Request, name: str) -> Response:
        """Server-sent events: the recent lines, then new ones as they arrive; keep-alives between."""
        if current(request) is None:
            return Response("log in first\n", status_code=401, media_type="text/plain")
        try:
            await platform.get_app(name)
        except LbsoloError as e:
            return Response(e.message + "\n", status_code=e.status, media_type="text/plain")
        since = views.last_event_id(request.headers.get("last-event-id"))
        stream = views.log_events(platform, name, since)
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)

    # ---- forms: each calls one use case, waits for it and goes back to the app page
    async def finish_job(session: Any, name: str, start: Callable[[], Awaitable[Any]], what: str) -> Response:
        """Start a release-making job, wait for it, and go back to the app page with its outcome."""
        try:
            validate_app_name(name)
            job = await start()
            if job is not None and job.task is not None:
                await job.task
            if job is not None:
                note(release=job.result.get("release"), failed=(job.result.get("error") or {}).get("code"))
            return back_to_app(session, name, *job_outcome(job, what))
        except LbsoloError as e:
            note(failed=e.code)  # the form answers 303 either way: the audit line says how it ended
            return _flash_error(session, name, e, flashes)

    async def finish_change(session: Any, name: str, change: Callable[[], Awaitable[str]]) -> Response:
        """Apply a change that makes no release; back to the app page with what it did, or why not."""
        try:
            validate_app_name(name)
            return back_to_app(session, name, "ok", await change())
        except LbsoloError as e:
            note(failed=e.code)
            return _flash_error(session, name, e, flashes)

    async def form_change(request: Request, name: str, change: Callable[[dict[str, str]], Awaitable[str]]) -> Response:
        """A form that changes an app without a release: session and CSRF checked, then finish_change."""
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        return await finish_change(session, name, lambda: change(form))

    @router.post("/ui/apps/{name}/config")
    async def config_set(request: Request, name: str) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        key = form.get("key", "").strip()
        values, secret = {key: form.get("value", "")}, form.get("secret") == "on"
        note(set=[key], secret=secret or None)
        return await finish_job(session, name, lambda: platform.set_config(name, values, [], secret), f"set {key}")

    @router.post("/ui/apps/{name}/config/unset")
    async def config_unset(request: Request, name: str) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        key = form.get("key", "").strip()
        note(unset=[key])
        return await finish_job(session, name, lambda: platform.set_config(name, {}, [key], False), f"unset {key}")

    @router.post("/ui/apps/{name}/rollback")
    async def rollback(request: Request, name: str) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        version = form.get("version", "").strip().lstrip("v")

        async def start() -> Any:
            if not version.isdigit():
                raise InvalidInput(f"not a release version: {version!r}")
            return await platform.rollback(name, int(version))

        return await finish_job(session, name, start, f"rollback to v{version}")

    @router.post("/ui/apps/{name}/scale")
    async def scale(request: Request, name: str) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        count = form.get("web", "").strip()
        note(formation={WEB: count})

        async def change() -> str:
            app = await platform.scale(name, parse_formation([f"{WEB}={count}"]))
            return f"scaled web to {app['formation'].get(WEB, 0)}"

        return await finish_change(session, name, change)

    @router.post("/ui/apps/{name}/domains")
    async def domains(request: Request, name: str) -> Response:
        async def change(form: dict[str, str]) -> str:
            domain = form.get("domain", "").strip()
            remove = form.get("action") == "remove"
            await platform.set_domains(name, [] if remove else [domain], [domain] if remove else [])
            return f"{'removed' if remove else 'added'} {domain}"

        return await form_change(request, name, change)

    @router.post("/ui/apps/{name}/https")
    async def https_redirect(request: Request, name: str) -> Response:
        async def change(form: dict[str, str]) -> str:
            state = await platform.set_https(name, on_off(form, "redirect"))
            done = f"HTTPS redirect {'on' if state['redirect'] else 'off'}"
            return done if state["active"] else f"{done} (no effect until the proxy has an HTTPS listener)"

        return await form_change(request, name, change)

    @router.post("/ui/apps/{name}/proxy")
    async def proxy_settings(request: Request, name: str) -> Response:
        async def change(form: dict[str, str]) -> str:
            state = await platform.set_proxy_settings(name, on_off(form, "request_buffering"))
            return f"request buffering {'on' if state['request_buffering'] else 'off'}"

        return await form_change(request, name, change)

    # ---- new apps (add-ons: lbsolo.api.web_addons)
    @router.post("/ui/apps")
    async def app_create(request: Request) -> Response:
        """The New app form: create the app; with a git URL, start its first deploy, streamed on its page."""
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        name, url, ref = (form.get(k, "").strip() for k in ("name", "git_url", "ref"))
        try:
            validate_app_name(name)
            await platform.create_app(name)
        except LbsoloError as e:
            return back_to(session, "/ui/", "error", e.message)
        if not url:
            return back_to_app(session, name, "ok", f"created {name}: deploy it as shown below")
        deploys.start_git(name, url, ref or None)
        return back_to_app(session, name, "ok", f"created {name}; its first deploy is running")

    # ---- static routes: their forms go back to the routes page, whose flash says what happened
    async def finish_route_change(session: Session, change: Callable[[], Awaitable[str]]) -> Response:
        try:
            return back_to(session, "/ui/routes", "ok", await change())
        except LbsoloError as e:
            return back_to(session, "/ui/routes", "error", e.message)

    @router.post("/ui/routes")
    async def route_add(request: Request) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked

        async def change() -> str:
            name, to, domains = form.get("name", "").strip(), form.get("to", ""), split_domains(form.get("domains", ""))
            route = await platform.add_static_route(name, to, domains)
            return f"added route {route['name']} to {route['to']}"

        return await finish_route_change(session, change)

    @router.post("/ui/routes/remove")
    async def route_remove(request: Request) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        name = form.get("name", "").strip()

        async def change() -> str:
            await platform.remove_static_route(name)
            return f"removed route {name}"

        return await finish_route_change(session, change)

    pages = Pages(current, to_login, page, checked_post, back_to, finish_change, form_change)
    parts = (create_web_addons_router, create_web_cron_router, create_web_drains_router, create_web_certs_router,
             create_web_nodes_router, create_web_alerts_router)  # fmt: skip
    for part in parts:
        router.include_router(part(platform, pages))
    return router


def _flash_error(session: Session, name: str, e: LbsoloError, flashes: dict[str, tuple[str, str]]) -> RedirectResponse:
    flashes[session.id] = ("error", e.message)
    try:
        validate_app_name(name)
    except InvalidInput:
        return RedirectResponse("/ui/", status_code=303)
    return RedirectResponse(f"/ui/apps/{quote(name)}", status_code=303)


def ui_actor(session: Session, auth: Authenticator) -> str:
    """The audit log's name for a UI session (a prefix of its id, not the cookie), with its token's name."""
    who = auth.session_caller(session.token_id)
    return f"ui:{session.id[:8]}" if who is None or who.admin else f"ui:{who.name}:{session.id[:8]}"
