"""The web UI's add-on routes: the Add-ons page, Add database on an app page, Destroy, and each
add-on's backups (Backup now, Restore, Download, the schedule, the bucket they also go to). The
other verbs (attach, detach, promote, expose, rotate, upgrade) are lbsolo.api.web_addon_actions',
included from here.

Included by lbsolo.api.web, whose sessions, CSRF checks, rendering and flash messages it uses
through `Pages`. A backup or a restore runs in the background (core's job); the form goes back
at once with a flash saying it started, and the add-on's section shows the job running, then
what came of it. Like web.py it routes, checks and renders: each form calls one use case, what
the page shows is gathered in lbsolo.api.web_views. It must not import jinja2, the engine, the
state store or the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from lbsolo.api import web_views as views
from lbsolo.api.web_addon_actions import create_web_addon_actions_router
from lbsolo.api.web_session import Session, local_time
from lbsolo.core import DeployJob, Platform
from lbsolo.core_addon_backups import AddonBackups
from lbsolo.errors import Conflict, InvalidInput, LbsoloError
from lbsolo.models import validate_app_name

ADDONS = "/ui/addons"
DOWNLOAD_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


@dataclass(frozen=True)
class Pages:
    """What the web UI's main router shares with this one."""

    current: Callable[[Request], Session | None]
    to_login: Callable[[Request], RedirectResponse]
    page: Callable[..., HTMLResponse]  # (request, template, session, status=200, **context)
    checked_post: Callable[[Request], Awaitable[tuple[Session, dict[str, str]] | Response]]
    back_to: Callable[[Session, str, str, str], RedirectResponse]  # (session, path, kind, message)
    finish_change: Callable[[Session, str, Callable[[], Awaitable[str]]], Awaitable[Response]]  # back to an app
    # (request, app, change(form)): a checked form's change, back to the app (web.form_change)
    form_change: Callable[[Request, str, Callable[[dict[str, str]], Awaitable[str]]], Awaitable[Response]]


@dataclass
class UiJob:
    what: str  # "backup", "restore", or a verb making app releases: "attach", "rotate", "upgrade", …
    job: DeployJob
    started: float
    detail: dict[str, str] = field(default_factory=dict)  # the app, var or version it is about

    @property
    def running(self) -> bool:
        return self.job.task is not None and not self.job.task.done()

    def view(self) -> dict[str, Any]:
        return views.job_view(self.what, None if self.running else self.job.result, self.started, self.detail)


class UiJobs:
    """The latest job of one sort the UI started per add-on (kept after it ends, to show its outcome)."""

    def __init__(self) -> None:
        self._by_addon: dict[str, UiJob] = {}

    def running(self, name: str) -> UiJob | None:
        job = self._by_addon.get(name)
        return job if job is not None and job.running else None

    def start(self, name: str, what: str, job: DeployJob, **detail: str) -> None:
        self._by_addon[name] = UiJob(what, job, time.time(), detail)

    def views(self) -> dict[str, dict[str, Any]]:
        return {name: job.view() for name, job in self._by_addon.items()}

    def forget(self, name: str) -> None:
        self._by_addon.pop(name, None)


def create_web_addons_router(platform: Platform, pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    jobs = UiJobs()  # backups and restores, shown in each add-on's backups section
    actions = UiJobs()  # the verbs making app releases, shown in each add-on's own section

    def backups_of(name: str) -> AddonBackups:
        validate_app_name(name, "add-on name")
        backups = getattr(platform, "backups", None)
        if backups is None:
            raise InvalidInput("this daemon runs without add-on backups")
        return backups

    async def back_with(session: Session, name: str, change: Callable[[], Awaitable[tuple[str, str]]]) -> Response:
        """Run a form's change; back to the add-on's backups with what it did, or why not (in red)."""
        try:
            kind, message = await change()
        except LbsoloError as e:
            kind, message = "error", e.message
        return pages.back_to(session, f"{ADDONS}#backups-{quote(name)}", kind, message)

    @router.get(ADDONS)
    async def addons_page(request: Request) -> Response:
        """Every add-on: kind, version, status, attached apps, a Destroy that asks for the name, and its backups."""
        session = pages.current(request)
        if session is None:
            return pages.to_login(request)
        shown = await views.addons(platform)
        backups = await views.addon_backups(platform, [a["name"] for a in shown], time.time())
        apps = [a["name"] for a in await platform.list_apps()] if shown else []
        return pages.page(
            request,
            "addons.html",
            session,
            addons=shown,
            addons_on=views.has_addons(platform),
            backups_on=getattr(platform, "backups", None) is not None,
            backups=backups,
            jobs=jobs.views(),
            actions=views.addon_actions(shown, sorted(apps, key=views.natural_key)),
            action_jobs=actions.views(),
        )

    @router.post("/ui/apps/{name}/addons")
    async def addon_add(request: Request, name: str) -> Response:
        """Add database: create an add-on of the kind and version for this app, attach it, wait until done."""
        checked = await pages.checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        kind, version = form.get("kind", "").strip(), form.get("version", "").strip() or None

        async def change() -> str:
            if platform.addons is None:
                raise InvalidInput("this daemon runs without add-on support")
            job = await platform.addons.create(kind, name, version=version)
            if job.task is not None:
                await job.task
            result = job.result
            if not result.get("ok"):
                raise InvalidInput(f"add {kind} failed: {(result.get('error') or {}).get('message', 'unknown error')}")
            release = result.get("release")
            live = f"{release} is live" if release else "its first deploy gets the URL"
            return f"added {result.get('addon', kind)} ({kind} {version or 'default version'}): {live}"

        return await pages.finish_change(session, name, change)

    @router.post("/ui/addons/{name}/destroy")
    async def addon_destroy(request: Request, name: str) -> Response:
        checked = await pages.checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        try:
            if platform.addons is None:
                raise InvalidInput("this daemon runs without add-on support")
            validate_app_name(name, "add-on name")
            confirm, detach = form.get("confirm", "").strip(), form.get("detach") == "on"
            done = await platform.addons.destroy(name, confirm=confirm, detach=detach)
        except LbsoloError as e:
            return pages.back_to(session, ADDONS, "error", e.message)
        jobs.forget(name)
        actions.forget(name)
        detached = f" (detached from {', '.join(done['detached'])})" if done["detached"] else ""
        return pages.back_to(session, ADDONS, "ok", f"destroyed {name}{detached}")

    # ---- backups
    @router.post("/ui/addons/{name}/backups")
    async def backup_now(request: Request, name: str) -> Response:
        """Backup now: start a backup (dump, then verification) and go back at once; the page shows it run."""
        checked = await pages.checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, _ = checked

        async def change() -> tuple[str, str]:
            backups = backups_of(name)
            if (running := jobs.running(name)) is not None:
                raise Conflict(f"a {running.what} of {name} is running already")
            jobs.start(name, "backup", await backups.backup(name))
            return "ok", f"backup of {name} started: it is listed below once made and verified"

        return await back_with(session, name, change)

    @router.post("/ui/addons/{name}/backups/schedule")
    async def backup_schedule(request: Request, name: str) -> Response:
        """The schedule form: a cron expression (empty: none) and how many scheduled backups to keep."""
        checked = await pages.checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        schedule, keep_text = form.get("schedule", "").strip(), form.get("keep", "").strip()

        async def change() -> tuple[str, str]:
            backups = backups_of(name)
            if keep_text and not keep_text.isdigit():
                raise InvalidInput(f"keep must be a number of backups, got {keep_text!r}")
            done = await backups.schedules.set(name, schedule or None, int(keep_text) if keep_text else None)
            if not done["schedule"]:
                return "ok", f"{name} has no backup schedule now"
            when = local_time(done["next_run"])
            return "ok", f"{name} is backed up on {done['schedule']}, keeping {done['keep']}; next run {when}"

        return await back_with(session, name, change)

    @router.post("/ui/addons/{name}/backups/{backup_id}/restore")
    async def backup_restore(request: Request, name: str, backup_id: str) -> Response:
        """Restore: the add-on's name typed to confirm, then the backup's checks, then the restore in the background."""
        checked = await pages.checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked

        async def change() -> tuple[str, str]:
            backups = backups_of(name)
            if form.get("confirm", "").strip() != name:
                raise InvalidInput(f"type {name} to confirm the restore: it replaces the add-on's data")
            if (running := jobs.running(name)) is not None:
                raise Conflict(f"a {running.what} of {name} is running already")
            jobs.start(name, "restore", await backups.restore(name, backup_id))
            return "ok", f"restore of {name} from {backup_id} started"

        return await back_with(session, name, change)

    @router.post("/ui/addons/{name}/backups/target")
    async def backup_target(request: Request, name: str) -> Response:
        """The bucket the backups also go to (checked at once: a small object written and deleted),
        or back to local only. A key generated by Encrypt is in this answer's flash, and never again."""
        checked = await pages.checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked

        async def change() -> tuple[str, str]:
            backups = backups_of(name)
            if form.get("local"):
                await backups.remote.set_target(name, None)
                return "ok", f"backups of {name} are kept here only"
            url = form.get("url", "").strip()
            if not url:
                raise InvalidInput("the bucket's s3://BUCKET/PREFIX is needed (or press Local only)")
            field_of = {k: form.get(k, "").strip() or None for k in ("endpoint", "region", "access_key_id")}
            secret = form.get("secret_access_key", "").strip() or None
            done = await backups.remote.set_target(
                name, url, **field_of, secret_access_key=secret, encrypt=form.get("encrypt") == "on"
            )
            where = f"backups of {name} go to {done['target']['url']} too"
            if done.get("key"):
                return "key", (
                    f"{where}, encrypted. KEEP THIS KEY, it is shown only this once: {done['key']} "
                    f"(key id {done.get('key_id')}). Without it the uploaded backups cannot be read anywhere else; "
                    f"this server keeps its copy in {done.get('key_file')}."
                )
            return "ok", where + (" (encrypted)" if done.get("encrypt") else "")

        return await back_with(session, name, change)

    @router.get("/ui/addons/{name}/backups/{backup_id}/download")
    async def backup_download(request: Request, name: str, backup_id: str) -> Response:
        """The backup's dump file, as an attachment."""
        session = pages.current(request)
        if session is None:
            return pages.to_login(request)
        try:
            path, filename = await backups_of(name).dump_file(name, backup_id)
        except LbsoloError as e:
            return pages.page(request, "error.html", session, e.status, title="Not available", message=e.message)
        return FileResponse(path, media_type="application/octet-stream", filename=filename, headers=DOWNLOAD_HEADERS)

    router.include_router(create_web_addon_actions_router(platform, pages, actions))
    return router
