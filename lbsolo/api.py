"""The REST API: the only way the CLI (and later the web UI) reaches the daemon.

A thin layer over core.Platform: it authenticates, parses, calls one use case and renders JSON.
Errors come out in one shape, `{"error": {"code", "message"}}`, with the status of the
LbsoloError behind them. OpenAPI is served at /openapi.json and browsable at /docs.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from lbsolo import __version__
from lbsolo.core import Platform
from lbsolo.errors import InvalidInput, LbsoloError, TooLarge, Unauthorized
from lbsolo.models import validate_app_name


class AppCreate(BaseModel):
    name: str


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def create_api(platform: Platform, token: str) -> FastAPI:
    settings = platform.settings

    def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("missing or wrong API token (see `lbsolo` on the daemon's machine: ~/.lbsolo/token)")

    api = FastAPI(
        title="lbsolo",
        version=__version__,
        description="A one-server Platform-as-a-Service. Every route needs `Authorization: Bearer <token>`.",
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

    @api.get("/api/info", dependencies=auth, tags=["daemon"])
    async def info() -> dict[str, Any]:
        return {"version": __version__, "domain": settings.domain}

    @api.get("/api/apps", dependencies=auth, tags=["apps"])
    async def list_apps() -> list[dict[str, Any]]:
        return await platform.list_apps()

    @api.post("/api/apps", dependencies=auth, tags=["apps"], status_code=201)
    async def create_app(body: AppCreate) -> dict[str, Any]:
        await platform.create_app(body.name)
        return await platform.get_app(body.name)

    @api.get("/api/apps/{name}", dependencies=auth, tags=["apps"])
    async def get_app(name: str) -> dict[str, Any]:
        return await platform.get_app(name)

    @api.delete("/api/apps/{name}", dependencies=auth, tags=["apps"])
    async def destroy_app(name: str, images: bool = False) -> dict[str, Any]:
        return await platform.destroy_app(name, images=images)

    @api.get("/api/apps/{name}/releases", dependencies=auth, tags=["releases"])
    async def releases(name: str) -> list[dict[str, Any]]:
        return [r.to_dict() for r in await platform.releases(name)]

    @api.get("/api/apps/{name}/ps", dependencies=auth, tags=["processes"])
    async def ps(name: str) -> list[dict[str, Any]]:
        return [r.to_dict() for r in await platform.replicas(name)]

    @api.get("/api/apps/{name}/logs", dependencies=auth, tags=["logs"])
    async def logs(name: str, tail: Annotated[int, Query(ge=1, le=10000)] = 200) -> list[dict[str, str]]:
        return await platform.logs(name, tail)

    @api.post(
        "/api/apps/{name}/deploy",
        dependencies=auth,
        tags=["deploy"],
        summary="Upload a tar of the source; the response streams NDJSON build and rollout output.",
    )
    async def deploy(name: str, request: Request) -> StreamingResponse:
        validate_app_name(name)
        await platform.get_app(name)  # 404 before reading a possibly large body
        context = await receive_upload(request, settings.uploads_dir, settings.max_upload_bytes)
        job = await platform.deploy(name, context)

        async def stream() -> AsyncIterator[bytes]:
            async for line in job.output.follow():
                yield json.dumps({"line": line}).encode() + b"\n"
            if job.task is not None:
                await job.task
            yield json.dumps({"result": job.result}).encode() + b"\n"

        return StreamingResponse(stream(), media_type="application/x-ndjson")

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
