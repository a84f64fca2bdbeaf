"""The whole-platform backup's REST routes: `GET /api/backup` streams one archive as it is written;
its schedule, its S3-compatible target and the backups the daemon keeps.

A thin layer over core_platform_backup_runs.PlatformBackups: everything is staged first (a
failure there is an ordinary error answer), then the archive streams; a failure while it streams
cuts the answer short (no clean end), which the CLI reports. With a target, the streamed archive
is copied and uploaded too. Restoring has no route: it runs in the CLI with no daemon
(platform_restore.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from lbsolo.api.addon_backups import ScheduleChange, TargetChange, TargetShown
from lbsolo.core import Platform
from lbsolo.core_platform_backup_runs import PlatformBackups
from lbsolo.errors import LbsoloError

BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


class BackupAbsent(LbsoloError):
    status = 501
    code = "not_implemented"


class PlatformScheduleOut(BaseModel):
    schedule: str | None
    keep: int
    next_run: float | None = Field(description="When the next scheduled backup is due (epoch seconds).")


class PlatformTargetOut(BaseModel):
    target: TargetShown | None
    encrypt: bool = False
    key_id: str | None = Field(None, description="The key's id (a hash), as the uploads' records say.")
    key_file: str | None = Field(None, description="Where the daemon keeps the key (0600).")
    key: str | None = Field(None, description="A generated key, in hex: shown this once, keep it.")


class PlatformBackupOut(BaseModel):
    id: str
    file: str
    created: float
    source: str = Field(description="scheduled, manual or now")
    size: int
    seconds: float | None = Field(None, description="How long staging and writing it took here.")
    location: str | None = Field(None, description="local, remote or local+remote")
    remote: dict[str, Any] | None = Field(None, description="Where it was uploaded, or why it was not.")


class PlatformBackupsOut(BaseModel):
    schedule: str | None
    keep: int
    next_run: float | None
    folder: str
    target: dict[str, Any] | None = Field(description="The bucket (credentials masked), or null.")
    remote_error: str | None = None
    last_failure: dict[str, Any] | None = Field(None, description="The last failed run or upload: at, error.")
    backups: list[PlatformBackupOut]


def create_platform_backup_router(platform: Platform, require_token: Callable[..., Any]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["platform backup"])

    def runs() -> PlatformBackups:
        if platform.platform_backups is None:
            raise BackupAbsent("this daemon's engine cannot save images and volumes")
        return platform.platform_backups

    @router.get(
        "/api/backup",
        response_class=StreamingResponse,
        responses={200: {"content": BINARY, "description": "The platform's archive (tar), streamed."}},
    )
    async def backup() -> StreamingResponse:
        """One archive of what brings the platform back on a new machine: state, tokens, TLS and ACME
        files, git repositories, app volumes, add-ons' fresh verified backups, release images.
        With a target, a copy is uploaded once the archive is whole."""
        r = runs()
        filename, body = await r.backup.stream(await r.copy_folder(), r.copied)
        headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
        return StreamingResponse(body, media_type="application/x-tar", headers=headers)

    @router.get("/api/backup/status")
    async def backup_status() -> PlatformBackupsOut:
        """The schedule, keep, next run and target of the platform's backups, and those kept here
        and in the bucket, newest first."""
        return PlatformBackupsOut(**await runs().status())

    @router.post("/api/backup/now")
    async def backup_now() -> PlatformBackupOut:
        """Take a backup into the daemon's folder now (uploaded when a target is set), as a schedule would."""
        return PlatformBackupOut(**await runs().take("now"))

    @router.put("/api/backup/schedule")
    async def set_schedule(body: ScheduleChange) -> PlatformScheduleOut:
        """Back the platform up on a cron schedule into $LBSOLO_HOME/backups/platform/, keeping the
        newest `keep` scheduled backups (here and in the bucket); schedule null or "off": none."""
        return PlatformScheduleOut(**await runs().set_schedule(body.schedule, body.keep))

    @router.put("/api/backup/target")
    async def set_target(body: TargetChange) -> PlatformTargetOut:
        """Keep the platform's backups in an S3-compatible bucket too (checked at once), optionally
        sealed with AES-256-GCM (a key file `lbsolo restore --key-file` opens); url null: here only."""
        out = await runs().set_target(
            body.url, endpoint=body.endpoint, region=body.region, access_key_id=body.access_key_id,
            secret_access_key=body.secret_access_key, encrypt=body.encrypt, key_hex=body.key,
        )  # fmt: skip
        return PlatformTargetOut(**out)

    return router
