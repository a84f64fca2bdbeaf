"""The add-on backups' REST routes: back up now, list, verify, restore, schedule, target, download, export, import.

A thin layer over core_addon_backups.AddonBackups, like the rest of the API: parse, call one use
case, render. Backing up, verifying, restoring and importing run in the background and stream
like a deploy (NDJSON lines, then the result). An export streams a fresh dump as it is made; an
import streams the request body to a file, capped (LBSOLO_MAX_UPLOAD_BYTES, which the API's
guard also applies) and sniffed from its first bytes, so a dump of another kind or a newer
major is refused before the rest is read and before anything is touched. A daemon built without
the engine's Services part answers 501, saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from lbsolo.api.jobs import stream_job
from lbsolo.config import Settings
from lbsolo.core_addon_backups import AddonBackups
from lbsolo.errors import LbsoloError

BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


class BackupsAbsent(LbsoloError):
    status = 501
    code = "not_implemented"


class HasBackups(Protocol):
    backups: AddonBackups | None
    settings: Settings


class ScheduleChange(BaseModel):
    schedule: str | None = Field(
        None, max_length=200, description='Cron, five fields ("0 3 * * *") or @daily and its kin; null: none.'
    )
    keep: int | None = Field(None, ge=1, le=1000, description="How many scheduled backups to keep (default: as is).")


class TargetChange(BaseModel):
    url: str | None = Field(None, max_length=1000, description="s3://BUCKET/PREFIX; null: back up here only.")
    endpoint: str | None = Field(None, max_length=500, description="The S3 API's http(s):// URL.")
    region: str | None = Field(None, max_length=100)
    access_key_id: str | None = Field(None, max_length=512, description="Kept on the add-on, never shown again.")
    secret_access_key: str | None = Field(None, max_length=512, description="Kept on the add-on, never shown again.")
    encrypt: bool = Field(False, description="Seal uploads with a new 256-bit key (returned once).")
    key: str | None = Field(None, max_length=200, description="Seal uploads with this key: 64 hex characters.")


class TargetShown(BaseModel):
    url: str
    endpoint: str
    region: str | None
    access_key_id: str = Field(description="Always masked.")
    secret_access_key: str = Field(description="Always masked.")


class TargetOut(BaseModel):
    addon: str
    target: TargetShown | None
    encrypt: bool = False
    key_id: str | None = Field(None, description="The key's id (a hash), as manifests record it.")
    key_file: str | None = Field(None, description="Where the daemon keeps the key (0600).")
    key: str | None = Field(None, description="A generated key, in hex: shown this once, keep it.")


class ScheduleOut(BaseModel):
    addon: str
    schedule: str | None
    keep: int
    next_run: float | None = Field(description="When the next scheduled backup is due (epoch seconds).")


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


def create_addon_backups_router(platform: HasBackups, require_token: Callable[..., Any]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["add-on backups"])

    def backups() -> AddonBackups:
        if platform.backups is None:
            raise BackupsAbsent("this daemon runs without add-on support (no Services part in its engine)")
        return platform.backups

    @router.get("/api/addons/{name}/backups")
    async def list_backups(name: str) -> dict[str, Any]:
        """The add-on's backups, newest first, with its schedule and the next scheduled run."""
        return await backups().list(name)

    @router.post("/api/addons/{name}/backups")
    async def backup_now(name: str) -> StreamingResponse:
        """Dump the add-on now, then verify the dump by restoring it into a throw-away container."""
        return stream_job(await backups().backup(name))

    @router.put("/api/addons/{name}/backups/schedule")
    async def set_schedule(name: str, body: ScheduleChange) -> ScheduleOut:
        """Back the add-on up on a cron schedule, keeping the newest `keep` scheduled backups."""
        return ScheduleOut(**await backups().schedules.set(name, body.schedule, body.keep))

    @router.put("/api/addons/{name}/backups/target")
    async def set_target(name: str, body: TargetChange) -> TargetOut:
        """Keep the add-on's backups in an S3-compatible bucket too (checked at once: a small object
        written and deleted), optionally sealed client-side with AES-256-GCM; url null: here only."""
        out = await backups().remote.set_target(
            name, body.url, endpoint=body.endpoint, region=body.region, access_key_id=body.access_key_id,
            secret_access_key=body.secret_access_key, encrypt=body.encrypt, key_hex=body.key,
        )  # fmt: skip
        return TargetOut(**out)

    @router.get("/api/addons/{name}/backups/{backup_id}")
    async def backup_info(name: str, backup_id: str) -> dict[str, Any]:
        """One backup's manifest: kind, major, size, checksum, counts at dump time, verification."""
        return await backups().info(name, backup_id)

    @router.delete("/api/addons/{name}/backups/{backup_id}")
    async def delete_backup(name: str, backup_id: str) -> dict[str, Any]:
        await backups().delete(name, backup_id)
        return {"addon": name, "deleted": backup_id}

    @router.post("/api/addons/{name}/backups/{backup_id}/verify")
    async def verify_backup(name: str, backup_id: str) -> StreamingResponse:
        """Restore the backup into a throw-away container and check it against the counts at dump time."""
        return stream_job(await backups().verify(name, backup_id))

    @router.post("/api/addons/{name}/backups/{backup_id}/restore")
    async def restore_backup(name: str, backup_id: str) -> StreamingResponse:
        """Put the backup's data back into the add-on: refused (untouched) if of another kind, a newer
        major, or changed since it was made."""
        return stream_job(await backups().restore(name, backup_id))

    @router.get(
        "/api/addons/{name}/backups/{backup_id}/download",
        response_class=FileResponse,
        responses={200: {"content": BINARY, "description": "The backup's dump file."}},
    )
    async def download_backup(name: str, backup_id: str) -> FileResponse:
        path, filename = await backups().dump_file(name, backup_id)
        return FileResponse(path, media_type="application/octet-stream", filename=filename)

    @router.get(
        "/api/addons/{name}/export",
        response_class=StreamingResponse,
        responses={200: {"content": BINARY, "description": "A fresh dump, streamed as it is made."}},
    )
    async def export(name: str) -> StreamingResponse:
        """A fresh dump of the add-on (pg_dump -Fc, an RDB, or mariadb-dump SQL), nothing kept.
        A dump that fails midway cuts the answer short (no clean end)."""
        filename, body = await backups().export(name)
        return StreamingResponse(body, media_type="application/octet-stream", headers=_attachment(filename))

    @router.post(
        "/api/addons/{name}/import",
        openapi_extra={"requestBody": {"content": BINARY, "required": True}},
    )
    async def import_dump(name: str, request: Request) -> StreamingResponse:
        """Load a dump sent as the body into the add-on: checked first (kind, major, whole, and a load
        into a throw-away container), so a dump that is refused leaves the add-on untouched."""
        b = backups()
        received = await b.receive(name, request.stream(), platform.settings.max_upload_bytes)
        return stream_job(await b.import_dump(name, received))

    return router
