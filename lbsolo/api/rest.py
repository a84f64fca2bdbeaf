"""The REST API: the only way the CLI (and later the web UI) reaches the daemon.

A thin layer over core.Platform: it authenticates, parses, calls one use case and renders JSON.
Errors come out in one shape, `{"error": {"code", "message"}}`, with the status of the
LbsoloError behind them. OpenAPI is served at /openapi.json and browsable at /docs.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lbsolo import __version__
from lbsolo.api.addon_backups import create_addon_backups_router
from lbsolo.api.addons import create_addons_router
from lbsolo.api.alerts import create_alerts_router
from lbsolo.api.audit import AuditLog, note
from lbsolo.api.auth import Authenticator, Caller
from lbsolo.api.certs import create_certs_router
from lbsolo.api.cluster import create_cluster_router
from lbsolo.api.cron import create_cron_router
from lbsolo.api.drains import create_drains_router
from lbsolo.api.git import create_git_router
from lbsolo.api.guard import UNAUTHORIZED, ApiGuard, BodyLimits, caller_of, error_body
from lbsolo.api.jobs import ndjson, stream_job
from lbsolo.api.ops import create_ops_router
from lbsolo.api.platform_backup import create_platform_backup_router
from lbsolo.api.previews import create_previews_router
from lbsolo.api.route_index import RouteIndex
from lbsolo.api.routing import create_routing_router
from lbsolo.api.tokens import TokenStore
from lbsolo.api.web import create_web_router
from lbsolo.api.web_session import Sessions, session_cookie
from lbsolo.build import LogBuffer
from lbsolo.core import Platform
from lbsolo.errors import InvalidInput, LbsoloError, TooLarge, Unauthorized
from lbsolo.events import EventBus
from lbsolo.models import parse_formation, validate_app_name
from lbsolo.notify import WebhookNotifier
from lbsolo.run_logs import matches
from lbsolo.run_stats import StatsSampler


class AppCreate(BaseModel):
    name: str


class ConfigChange(BaseModel):
    set: dict[str, str] = {}
    unset: list[str] = []
    secret: bool = False


class RollbackRequest(BaseModel):
    version: int | None = None


class ScaleRequest(BaseModel):
    formation: dict[str, int]


class ResourcesRequest(BaseModel):
    memory: str | None = None
    cpus: float | None = None


class VolumeRequest(BaseModel):
    name: str
    path: str


class HealthRequest(BaseModel):
    path: str | None = "/"
    interval: float | None = None
    timeout: float | None = None
    retries: int | None = None
    grace: float | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The one error shape of the API."""

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in ((404, "Not found"), (409, "Conflict"), (422, "Invalid input"))
}


class GitDeploy(BaseModel):
    url: str
    ref: str | None = None


class HookRepo(BaseModel):
    repo: str = Field(max_length=2048, description="https://, ssh:// or git:// URL (or user@host:path) to deploy.")


class RunRequest(BaseModel):
    command: str


def create_api(
    platform: Platform,
    token: str,
    api_url: str = "",
    *,
    bus: EventBus,
    notifier: WebhookNotifier,
    sampler: StatsSampler,
    tokens: TokenStore,
    audit: AuditLog | None = None,
) -> FastAPI:
    """The whole API: REST, git, the web UI and the ops routes (events, metrics, webhooks, tokens).

    Every part is required: an API without one of them is not lbsolo's API. The audit log is
    the settings' file unless one is handed in.
    """
    settings = platform.settings
    authenticator = Authenticator(token, tokens)
    audit = audit or AuditLog(settings.audit_path, settings.audit_max_bytes, settings.audit_keep)

    async def require_token(request: Request) -> None:
        # The guard in front has checked it already (before any body was read); this holds for
        # an app run without the guard too.
        if caller_of(request.scope) is not None:
            return
        if await authenticator.bearer(request.headers.get("authorization", "")) is None:
            raise Unauthorized(UNAUTHORIZED)

    api = FastAPI(
        title="lbsolo",
        version=__version__,
        description="A one-server Platform-as-a-Service. Every route needs `Authorization: Bearer <token>`.",
    )
    api.state.audit = audit

    sessions = Sessions(token, store=platform.state)

    def ui_caller(cookies: str) -> Caller | None:
        session = sessions.verify(session_cookie(cookies))
        return None if session is None else authenticator.session_caller(session.token_id)

    api.add_middleware(
        ApiGuard,
        auth=authenticator,
        limits=BodyLimits.from_settings(settings),
        paused=lambda: platform.pause_note,
        audit=audit,
        route_of=RouteIndex(api),
        ui_caller=ui_caller,
    )
    auth = [Depends(require_token)]

    @api.exception_handler(LbsoloError)
    async def _lbsolo_error(request: Request, exc: LbsoloError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid", str(exc.errors())), status_code=422)

    @api.get("/healthz", tags=["daemon"])
    async def healthz() -> dict[str, Any]:
        """Liveness only: says nothing about apps, so it needs no token."""
        return {"ok": True}

    @api.get("/metrics", dependencies=auth, tags=["metrics"], response_class=PlainTextResponse)
    async def metrics() -> str:
        """Per-app proxy counters and latency histograms, in Prometheus text format."""
        return platform.ingress.prometheus()

    @api.get("/api/apps/{name}/metrics", dependencies=auth, tags=["metrics"])
    async def app_metrics(name: str) -> dict[str, Any]:
        """One app's request counters, bytes and latency histogram since the daemon started."""
        return await platform.request_metrics(name)

    @api.get("/api/audit", dependencies=auth, tags=["audit"])
    async def read_audit(
        app: str | None = None,
        since: float | None = None,
        actor: str | None = None,
        n: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> list[dict[str, Any]]:
        """The audit log, oldest first: time, actor, source address, action, app or add-on, status, what changed
        (config keys, never values). `actor` "ci" also finds "git:ci"; "ui" every UI session. Admin only."""
        return await asyncio.to_thread(audit.read, app, since, actor, n)

    @api.get("/api/info", dependencies=auth, tags=["daemon"])
    async def info() -> dict[str, Any]:
        return {"version": __version__, "domain": settings.domain}

    @api.get("/api/apps", dependencies=auth, tags=["apps"])
    async def list_apps() -> list[dict[str, Any]]:
        return await platform.list_apps()

    @api.post("/api/apps", dependencies=auth, tags=["apps"], status_code=201)
    async def create_app(body: AppCreate) -> dict[str, Any]:
        note(app=body.name)
        await platform.create_app(body.name)
        return await platform.get_app(body.name)

    @api.get("/api/apps/{name}", dependencies=auth, tags=["apps"])
    async def get_app(name: str) -> dict[str, Any]:
        return await platform.get_app(name)

    @api.delete("/api/apps/{name}", dependencies=auth, tags=["apps"])
    async def destroy_app(name: str, images: bool = False, volumes: bool = False) -> dict[str, Any]:
        return await platform.destroy_app(name, images=images, volumes=volumes)

    @api.post("/api/gc", dependencies=auth, tags=["disk"])
    async def gc(app: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Remove images beyond each app's last releases (settings.keep_releases) and build leftovers."""
        return await platform.gc(app, dry_run)

    @api.get("/api/disk", dependencies=auth, tags=["disk"])
    async def disk() -> dict[str, int]:
        """Bytes of lbsolo-built images per app."""
        return await platform.disk_usage()

    @api.get("/api/apps/{name}/builds", dependencies=auth, tags=["builds"])
    async def builds(name: str) -> list[dict[str, Any]]:
        return [b.to_dict() for b in await platform.builds(name)]

    @api.post("/api/apps/{name}/builds/cancel", dependencies=auth, tags=["builds"])
    async def cancel_builds(name: str, build_id: str | None = None) -> dict[str, list[str]]:
        """Cancel the app's queued or running builds (or one of them); a running build stops at its next step."""
        return {"cancelled": await platform.cancel_builds(name, build_id)}

    @api.get("/api/apps/{name}/builds/{build_id}/log", dependencies=auth, tags=["builds"])
    async def build_log(name: str, build_id: str) -> list[str]:
        """A stored build log; `latest` for the newest build."""
        return await platform.build_log(name, None if build_id == "latest" else build_id)

    @api.get("/api/apps/{name}/releases", dependencies=auth, tags=["releases"])
    async def releases(name: str) -> list[dict[str, Any]]:
        return await platform.releases(name)

    @api.get("/api/apps/{name}/export/k8s", dependencies=auth, tags=["releases"])
    async def export_k8s(name: str, registry: str | None = None, volume_size: str = "1Gi") -> list[dict[str, Any]]:
        """The current release as Kubernetes manifests (Deployments, Service, Ingress, ConfigMap, Secret,
        PVCs), the image named `<registry>/<app>:v<N>`. Secret values are in the Secret: admin only."""
        return await platform.export_k8s(name, registry, volume_size)

    @api.post("/api/apps/{name}/rollback", dependencies=auth, tags=["releases"])
    async def rollback(name: str, body: RollbackRequest) -> StreamingResponse:
        """Roll out an earlier release's image and config as a new release, without rebuilding."""
        note(version=body.version)
        return stream_job(await platform.rollback(name, body.version))

    @api.post("/api/apps/{name}/promote", dependencies=auth, tags=["releases"])
    async def promote(name: str, to: str) -> StreamingResponse:
        """Roll out this app's current image on app `to`, with `to`'s own config."""
        return stream_job(await platform.promote(name, to))

    @api.get("/api/apps/{name}/config", dependencies=auth, tags=["config"])
    async def get_config(name: str) -> dict[str, str]:
        """Config vars; secret values are masked."""
        return await platform.config(name)

    @api.patch("/api/apps/{name}/config", dependencies=auth, tags=["config"])
    async def change_config(name: str, body: ConfigChange) -> StreamingResponse:
        """Set and unset config vars; a deployed app gets a new release rolled out."""
        # keys only: a value never reaches the audit log, secret or not
        note(set=sorted(body.set), unset=sorted(body.unset), secret=body.secret or None)
        return stream_job(await platform.set_config(name, body.set, body.unset, body.secret))

    @api.post("/api/apps/{name}/scale", dependencies=auth, tags=["processes"])
    async def scale(name: str, body: ScaleRequest) -> dict[str, Any]:
        formation = parse_formation(f"{k}={v}" for k, v in body.formation.items())
        note(formation=dict(formation))
        return await platform.scale(name, formation)

    @api.put("/api/apps/{name}/resources/{process}", dependencies=auth, tags=["processes"])
    async def resources(name: str, process: str, body: ResourcesRequest) -> StreamingResponse:
        return stream_job(await platform.set_resources(name, process, body.memory, body.cpus))

    @api.post("/api/apps/{name}/volumes", dependencies=auth, tags=["processes"])
    async def add_volume(name: str, body: VolumeRequest) -> StreamingResponse:
        return stream_job(await platform.add_volume(name, body.name, body.path))

    @api.patch("/api/apps/{name}/health", dependencies=auth, tags=["processes"])
    async def health(name: str, body: HealthRequest) -> dict[str, Any]:
        """Health check settings; they apply from the next release on."""
        values = {k: v for k, v in body.model_dump().items() if v is not None or k == "path"}
        return await platform.set_health(name, values)

    @api.get("/api/apps/{name}/ps", dependencies=auth, tags=["processes"])
    async def ps(name: str) -> list[dict[str, Any]]:
        return [r.to_dict() for r in await platform.replicas(name)]

    @api.post("/api/apps/{name}/run", dependencies=auth, tags=["processes"])
    async def run_command(name: str, body: RunRequest) -> StreamingResponse:
        """Run a one-off command in a container of the current release; streams output, then the exit code."""
        await platform.get_app(name)
        out = LogBuffer()

        async def work() -> int:
            try:
                return await platform.run_command(name, body.command, out)
            finally:
                out.close()

        task = asyncio.create_task(work())

        async def body_stream() -> AsyncIterator[bytes]:
            async for line in out.follow():
                yield ndjson({"line": line})
            try:
                code = await task
                yield ndjson({"result": {"ok": code == 0, "exit_code": code}})
            except LbsoloError as e:
                yield ndjson({"result": {"ok": False, "exit_code": 1, "error": {"code": e.code, "message": e.message}}})

        return StreamingResponse(body_stream(), media_type="application/x-ndjson")

    @api.get("/api/apps/{name}/logs", dependencies=auth, tags=["logs"], response_model=None)
    async def logs(
        name: str,
        tail: Annotated[int, Query(ge=1, le=100000)] = 200,
        process: str | None = None,
        release: str | None = None,
        since: float | None = None,
        grep: str | None = None,
        follow: bool = False,
    ) -> list[dict[str, Any]] | StreamingResponse:
        """Stored log lines of every replica, old releases included; `follow` streams new ones as NDJSON."""
        filters = {"process": process, "release": release, "since": since, "grep": grep}
        lines = await platform.read_logs(name, tail=tail, **filters)
        if not follow:
            return [ln.to_dict() for ln in lines]

        async def body() -> AsyncIterator[bytes]:
            for ln in lines:
                yield ndjson(ln.to_dict())
            async for ln in platform.follow_logs(name):
                if matches(ln, process, release, since, grep):
                    yield ndjson(ln.to_dict())

        return StreamingResponse(body(), media_type="application/x-ndjson")

    @api.post(
        "/api/apps/{name}/deploy",
        dependencies=auth,
        tags=["deploy"],
        summary="Upload a tar of the source; the response streams NDJSON build and rollout output.",
    )
    async def deploy(
        name: str, request: Request, build_arg: Annotated[list[str] | None, Query()] = None
    ) -> StreamingResponse:
        validate_app_name(name)
        await platform.get_app(name)  # 404 before reading a possibly large body
        args = {}
        for item in build_arg or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InvalidInput(f"build args are KEY=VALUE, got {item!r}")
            args[key] = value
        context = await receive_upload(request, settings.uploads_dir, settings.max_upload_bytes)
        return stream_job(await platform.deploy(name, context, args))

    api.include_router(create_git_router(platform, token, api_url, authenticator))

    @api.post("/api/apps/{name}/deploy/git", dependencies=auth, tags=["deploy"])
    async def deploy_git(name: str, body: GitDeploy) -> StreamingResponse:
        """Clone an https, ssh or git URL at a ref, then build and roll it out (local paths: LBSOLO_GIT_ALLOW_LOCAL)."""
        return stream_job(await platform.deploy_git(name, body.url, body.ref))

    @api.get("/api/apps/{name}/hook", dependencies=auth, tags=["git"])
    async def hook(name: str) -> dict[str, str]:
        """The app's inbound push webhook: URL, secret (GitHub/Gitea HMAC, or GitLab token), repository it deploys."""
        return {"url": f"{api_url}/hooks/{name}", **await platform.hook(name)}

    @api.put("/api/apps/{name}/hook", dependencies=auth, tags=["git"])
    async def set_hook_repo(name: str, body: HookRepo) -> dict[str, str]:
        """Set the git URL the push webhook deploys (the payload's own URL is never cloned)."""
        await platform.set_repo(name, body.repo)
        return {"url": f"{api_url}/hooks/{name}", **await platform.hook(name)}

    @api.get("/api/apps/{name}/git", dependencies=auth, tags=["git"])
    async def git_remote(name: str) -> dict[str, str]:
        """The app's git remote: push to it with the API token as the password."""
        await platform.get_app(name)
        return {"url": f"{api_url}/git/{name}.git"}

    api.include_router(
        create_web_router(
            platform, token, bus=bus, notifier=notifier, sampler=sampler, audit=audit, auth=authenticator,
            sessions=sessions,
        )
    )
    api.include_router(create_ops_router(platform, bus, notifier, sampler, tokens, require_token))
    api.include_router(create_addons_router(platform, require_token))
    api.include_router(create_addon_backups_router(platform, require_token))
    api.include_router(create_routing_router(platform, require_token, ERRORS))
    api.include_router(create_certs_router(platform, require_token))
    api.include_router(create_cron_router(platform, require_token))
    api.include_router(create_drains_router(platform, require_token))
    api.include_router(create_previews_router(platform, require_token))
    api.include_router(create_alerts_router(platform, require_token))
    api.include_router(create_platform_backup_router(platform, require_token))
    api.include_router(create_cluster_router(platform, require_token))
    return api


async def receive_upload(request: Request, directory: Path, limit: int) -> Path:
    """Stream the request body to a file under directory, refusing more than limit bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the upload is {int(declared)} bytes; the limit is {limit} (LBSOLO_MAX_UPLOAD_BYTES)")
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".tar", dir=directory)
    path = Path(name)
    size = 0
    try:
        with open(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the upload is over the limit of {limit} bytes (LBSOLO_MAX_UPLOAD_BYTES)")
                f.write(chunk)
        if size == 0:
            raise InvalidInput("the upload is empty: send a tar of the source as the request body")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
