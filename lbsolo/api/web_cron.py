"""The web UI's scheduled jobs: the forms of the app page's Scheduled jobs section (Add, Run now,
Remove). Each calls the use case its REST route calls (lbsolo.api.cron) and goes back to the app
page with what it did, or why not (in red; nothing changed). Run now starts the run and goes back
at once: the section shows it running, then its result. It must not import jinja2, the engine or
the state store.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lbsolo.build import LogBuffer
from lbsolo.core import Platform
from lbsolo.errors import LbsoloError

if TYPE_CHECKING:
    from lbsolo.api.web_addons import Pages


def create_web_cron_router(platform: Platform, pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    runs: set[asyncio.Task[Any]] = set()  # runs started from the UI, held until they end

    @router.post("/ui/apps/{name}/cron")
    async def add(request: Request, name: str) -> Response:
        async def change(form: dict[str, str]) -> str:
            job = await platform.cron.add(
                name, form.get("schedule", ""), form.get("command", ""), form.get("name", "").strip() or None,
                form.get("overlap", "skip"),
            )  # fmt: skip
            return f"added job {job['name'] or job['id']}: next run {job['next_run_local']}"

        return await pages.form_change(request, name, change)

    @router.post("/ui/apps/{name}/cron/{job}/remove")
    async def remove(request: Request, name: str, job: str) -> Response:
        async def change(_form: dict[str, str]) -> str:
            return f"removed job {await platform.cron.remove(name, job)}"

        return await pages.form_change(request, name, change)

    @router.post("/ui/apps/{name}/cron/{job}/run")
    async def run_now(request: Request, name: str, job: str) -> Response:
        async def change(_form: dict[str, str]) -> str:
            found = await platform.cron.job(name, job)

            async def run() -> None:
                with contextlib.suppress(LbsoloError):  # recorded in the job's history either way
                    await platform.cron.run_now(name, found.id, LogBuffer())

            task = asyncio.create_task(run())
            runs.add(task)
            task.add_done_callback(runs.discard)
            await asyncio.sleep(0.05)  # its record saved: the page shows it running
            return f"started job {found.name or found.id}: its result shows below when it ends"

        return await pages.form_change(request, name, change)

    return router
