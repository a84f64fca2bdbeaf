"""The whole-platform backup's REST route: `GET /api/backup` streams one archive as it is written.

A thin layer over core_platform_backup.PlatformBackup: everything is staged first (a failure
there is an ordinary error answer), then the archive streams; a failure while it streams cuts
the answer short (no clean end), which the CLI reports. Restoring has no route: it runs in the
CLI with no daemon (platform_restore.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from lbsolo.core import Platform
from lbsolo.core_platform_backup import PlatformBackup
from lbsolo.engine_docker import DockerBackend
from lbsolo.engine_docker_archive import DockerArchive
from lbsolo.errors import LbsoloError

BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


class BackupAbsent(LbsoloError):
    status = 501
    code = "not_implemented"


def create_platform_backup_router(platform: Platform, require_token: Callable[..., Any]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["platform backup"])

    @router.get(
        "/api/backup",
        response_class=StreamingResponse,
        responses={200: {"content": BINARY, "description": "The platform's archive (tar), streamed."}},
    )
    async def backup() -> StreamingResponse:
        """One archive of what brings the platform back on a new machine: state, tokens, TLS and ACME
        files, git repositories, app volumes, add-ons' fresh verified backups, release images."""
        if not isinstance(platform.engine, DockerBackend):
            raise BackupAbsent("this daemon's engine cannot save images and volumes")
        job = PlatformBackup(platform.ctx, DockerArchive(platform.engine), platform.backups)
        filename, body = await job.stream()
        headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
        return StreamingResponse(body, media_type="application/x-tar", headers=headers)

    return router
