"""The scheduled jobs' REST routes: /api/apps/{name}/cron (list, add, remove, run now, history, logs).

A thin layer over core_cron.CronJobs: parse, call one use case, render. Running a job now
streams its output as NDJSON lines, then its result with the exit code, like /run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from lbsolo.api.jobs import ndjson
from lbsolo.build import LogBuffer
from lbsolo.core_cron import CronJobs
from lbsolo.errors import LbsoloError


class HasCron(Protocol):
    cron: CronJobs


class CronJobIn(BaseModel):
    schedule: str = Field(description='five cron fields (minute hour day month weekday), e.g. "0 3 * * *", or @daily')
    command: str = Field(description="run with /bin/sh -c in a one-off container of the current release")
    name: str | None = Field(default=None, description="optional; lowercase letters, digits, - and _")
    overlap: str = Field(default="skip", description="skip (a run due while the previous runs is skipped) or allow")


class CronRunOut(BaseModel):
    id: str
    app: str
    job: str
    trigger: str = Field(description="scheduled, manual or missed")
    status: str = Field(description="running, succeeded, failed, timeout, skipped or not_run")
    started: float
    due: float | None = Field(description="the schedule's time the run stands for (null: manual)")
    finished: float | None
    duration: float | None
    exit_code: int | None
    error: str | None
    command: str


class CronJobOut(BaseModel):
    app: str
    id: str
    name: str | None
    schedule: str
    command: str
    source: str = Field(description="toml (lbsolo.toml's [[cron]], with the release) or cli (cron:add)")
    overlap: str
    created_at: float
    next_run: float = Field(description="unix time")
    next_run_local: str = Field(description="the next run in the time zone setting (LBSOLO_CRON_TZ)")
    last_run: CronRunOut | None


def create_cron_router(platform: HasCron, require_token: Callable[..., Any]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["cron"])
    cron = platform.cron

    @router.get("/api/apps/{name}/cron")
    async def list_jobs(name: str) -> list[CronJobOut]:
        """The app's scheduled jobs (lbsolo.toml's and cron:add's) with their next and last run."""
        return [CronJobOut(**j) for j in await cron.listing(name)]

    @router.post("/api/apps/{name}/cron", status_code=201)
    async def add_job(name: str, body: CronJobIn) -> CronJobOut:
        """Add a job; a bad schedule, an empty command or one job too many changes nothing."""
        return CronJobOut(**await cron.add(name, body.schedule, body.command, body.name, body.overlap))

    @router.delete("/api/apps/{name}/cron/{job}")
    async def remove_job(name: str, job: str) -> dict[str, str]:
        """Remove a cron:add job (lbsolo.toml's go with their entry at the next deploy)."""
        return {"removed": await cron.remove(name, job)}

    @router.get("/api/apps/{name}/cron-runs")
    async def runs(name: str, job: str | None = None) -> list[CronRunOut]:
        """The runs of the app's jobs (or of one), newest first."""
        return [CronRunOut(**r) for r in await cron.runs(name, job)]

    @router.get("/api/apps/{name}/cron-runs/{run}/logs")
    async def run_logs(name: str, run: str) -> list[str]:
        """A run's output (kept for the newest runs of each job)."""
        return await cron.run_log(name, run)

    @router.post("/api/apps/{name}/cron/{job}/run")
    async def run_now(name: str, job: str) -> StreamingResponse:
        """Run the job now; streams its output (NDJSON `line`s), then `result` with its exit code."""
        await cron.job(name, job)  # unknown app or job: an error status, not a stream
        out = LogBuffer()

        async def work() -> int:
            try:
                return await cron.run_now(name, job, out)
            finally:
                out.close()

        task = asyncio.create_task(work())

        async def body() -> AsyncIterator[bytes]:
            async for line in out.follow():
                yield ndjson({"line": line})
            try:
                code = await task
                yield ndjson({"result": {"ok": code == 0, "exit_code": code}})
            except LbsoloError as e:
                yield ndjson({"result": {"ok": False, "exit_code": 1, "error": {"code": e.code, "message": e.message}}})

        return StreamingResponse(body(), media_type="application/x-ndjson")

    return router
