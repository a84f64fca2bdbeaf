"""The web UI's add-on verbs beyond backups: Attach to another app, Detach, Promote (the app's
primary URL var), Expose on 127.0.0.1 / Unexpose, Rotate credentials, Upgrade.

Included by lbsolo.api.web_addons, whose `Pages` (sessions, CSRF checks, flashes) and job list it
uses. Each form calls the one use case its REST route calls (lbsolo.api.addons). Those that make
app releases (attach, detach, promote, rotate, upgrade) run in the background: the form goes back
at once with a flash saying it started, and the add-on's section shows the job running, then what
came of it (the page reloads itself once it ends). A refusal comes back as a red flash and changes
nothing. A public address is the CLI's only (`addons:expose --public`): the UI exposes on loopback.
It must not import jinja2, the engine, the state store or the CLI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lbsolo.core import DeployJob, Platform
from lbsolo.core_addons import Addons
from lbsolo.errors import Conflict, InvalidInput, LbsoloError
from lbsolo.models import validate_app_name

if TYPE_CHECKING:
    from lbsolo.api.web_addons import Pages, UiJobs

LOOPBACK = "127.0.0.1"


def create_web_addon_actions_router(platform: Platform, pages: Pages, jobs: UiJobs) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def addons_for(name: str) -> Addons:
        validate_app_name(name, "add-on name")
        if platform.addons is None:
            raise InvalidInput("this daemon runs without add-on support")
        return platform.addons

    def not_running(name: str) -> None:
        if (running := jobs.running(name)) is not None:
            raise Conflict(f"{name} is busy: its {running.what} is still running")

    async def posted(request: Request, name: str, change: Callable[[dict[str, str]], Awaitable[str]]) -> Response:
        """Check the session and CSRF token, run the form's change; back to the add-on with what it
        did, or why not (in red)."""
        checked = await pages.checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        try:
            kind, message = "ok", await change(form)
        except LbsoloError as e:
            kind, message = "error", e.message
        return pages.back_to(session, f"/ui/addons#manage-{quote(name)}", kind, message)

    def started(name: str, what: str, job: DeployJob | None, done: str, running: str, **detail: str) -> str:
        """Track a release-making job (None: nothing to roll out, done already); the flash's text."""
        if job is None:
            return done
        jobs.start(name, what, job, **detail)
        return running

    @router.post("/ui/addons/{name}/attach")
    async def attach(request: Request, name: str) -> Response:
        """Attach to another app: it gets the URL as a secret config var (its kind's, or `as`), in a release."""

        async def change(form: dict[str, str]) -> str:
            addons = addons_for(name)
            app, var = form.get("app", "").strip(), form.get("as", "").strip()
            if not app:
                raise InvalidInput(f"pick the app to attach {name} to")
            not_running(name)
            job = await addons.attach(name, app, var or None)
            done = f"attached {name} to {app}: its first deploy gets the URL"
            return started(name, "attach", job, done, f"attaching {name} to {app}: a release of {app} is rolling out",
                           app=app, var=var)  # fmt: skip

        return await posted(request, name, change)

    @router.post("/ui/addons/{name}/detach")
    async def detach(request: Request, name: str) -> Response:
        """Detach from an app: its config var is removed, in a release."""

        async def change(form: dict[str, str]) -> str:
            addons = addons_for(name)
            app = form.get("app", "").strip()
            not_running(name)
            job = await addons.detach(name, app)
            done = f"detached {name} from {app}"
            return started(name, "detach", job, done, f"detaching {name} from {app}: a release of {app} is rolling out",
                           app=app)  # fmt: skip

        return await posted(request, name, change)

    @router.post("/ui/addons/{name}/promote")
    async def promote(request: Request, name: str) -> Response:
        """Make it the app's DATABASE_URL (REDIS_URL): the add-on that held it takes this one's var."""

        async def change(form: dict[str, str]) -> str:
            addons = addons_for(name)
            app = form.get("app", "").strip()
            not_running(name)
            job = await addons.access.promote(name, app)
            done = f"{name} is now {app}'s primary URL: its first deploy gets it"
            return started(name, "promote", job, done, f"promoting {name} on {app}: a release of {app} is rolling out",
                           app=app)  # fmt: skip

        return await posted(request, name, change)

    @router.post("/ui/addons/{name}/expose")
    async def expose(request: Request, name: str) -> Response:
        """Publish its port on 127.0.0.1 (a free one, or `port`); it restarts once. Public: CLI only."""

        async def change(form: dict[str, str]) -> str:
            addons = addons_for(name)
            port_text = form.get("port", "").strip()
            if port_text and not port_text.isdigit():
                raise InvalidInput(f"the port is a number, got {port_text!r}")
            not_running(name)
            port = int(port_text) if port_text else None
            shown = await addons.access.expose(name, address=LOOPBACK, port=port, public=False)
            return f"{name} is exposed at {shown.get('exposed_url')}"

        return await posted(request, name, change)

    @router.post("/ui/addons/{name}/unexpose")
    async def unexpose(request: Request, name: str) -> Response:
        async def change(form: dict[str, str]) -> str:
            addons = addons_for(name)
            not_running(name)
            await addons.access.unexpose(name)
            return f"{name} is no longer exposed"

        return await posted(request, name, change)

    @router.post("/ui/addons/{name}/rotate")
    async def rotate(request: Request, name: str) -> Response:
        """Rotate credentials (the name typed to confirm): a new user, each app moved onto it, the old one dropped."""

        async def change(form: dict[str, str]) -> str:
            addons = addons_for(name)
            if form.get("confirm", "").strip() != name:
                raise InvalidInput(f"type {name} to confirm the rotation: every attached app gets a release")
            not_running(name)
            job = await addons.access.rotate(name)
            return started(name, "rotate", job, "", f"rotating the credentials of {name}: its apps are moved onto them")

        return await posted(request, name, change)

    @router.post("/ui/addons/{name}/upgrade")
    async def upgrade(request: Request, name: str) -> Response:
        """A new version: the same major in place; a new major only through a dump (into NAME-<major>)."""

        async def change(form: dict[str, str]) -> str:
            addons = addons_for(name)
            version, via_dump = form.get("version", "").strip(), form.get("via_dump") == "on"
            if not version:
                raise InvalidInput("the version to upgrade to is needed, e.g. 16 or 15.8")
            not_running(name)
            job = await addons.upgrades.upgrade(name, version, via_dump=via_dump)
            how = "through a dump into a new add-on" if via_dump else "in place"
            return started(name, "upgrade", job, "", f"upgrading {name} to {version} {how}", version=version)

        return await posted(request, name, change)

    return router
