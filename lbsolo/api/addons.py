"""The add-ons' REST routes: databases for apps (create, list, info, logs, attach, detach, destroy,
expose, unexpose, credentials/rotate, promote, shell, upgrade).

A thin layer over core_addons.Addons, like the rest of the API: parse, call one use case, render.
Creating, attaching, promoting, rotating and upgrading make releases of apps, so they stream like a deploy
(NDJSON lines, then the result). The shell is one exchange both ways at once (ShellExchange).
A daemon built without the engine's Services part answers 501, saying so.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from lbsolo.api.jobs import ndjson, stream_job
from lbsolo.core_addon_access import ShellSession
from lbsolo.core_addons import Addons
from lbsolo.errors import LbsoloError

Message = MutableMapping[str, Any]


class AddonsAbsent(LbsoloError):
    status = 501
    code = "not_implemented"


class HasAddons(Protocol):
    addons: Addons | None


class AddonCreate(BaseModel):
    kind: str = Field(description="postgres, redis or mariadb")
    app: str = Field(description="the app it is created for and attached to")
    name: str | None = Field(None, description="default: <app>-<kind>")
    version: str | None = Field(None, description="a major version; default: LBSOLO_ADDON_<KIND>_VERSION")
    as_var: str | None = Field(None, alias="as", description="the app's config var for its URL")


class AddonAttach(BaseModel):
    app: str
    as_var: str | None = Field(None, alias="as")


class AddonDetach(BaseModel):
    app: str


class AddonExpose(BaseModel):
    address: str = Field("127.0.0.1", description="an IP address of this machine; not a loopback one only with public")
    port: int | None = Field(None, description="the port on this machine; default: a free one")
    public: bool = Field(False, description="yes, other machines may reach it")


class AddonPromote(BaseModel):
    app: str


class AddonUpgrade(BaseModel):
    version: str = Field(description="the version to run: the same major upgrades in place")
    via_dump: bool = Field(False, description="a new major: through a dump into a new add-on")
    name: str | None = Field(None, description="the new add-on's name (a major upgrade); default: <name>-<major>")


class ShellExchange(Response):
    """The shell's one HTTP exchange, both ways at once.

    The request body (chunked, sent as it is typed or piped) is the session's input, read as
    it arrives while the answer streams: NDJSON lines {"out": base64} and {"err": base64} as
    the client prints, then {"exit": code} (null: it was left running) or {"error": message}.
    A client that goes away ends the session (its input ends, then it is hung up).
    """

    media_type = "application/x-ndjson"

    def __init__(self, session: ShellSession) -> None:
        super().__init__(media_type=self.media_type)
        self.session = session

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        session = self.session
        headers = [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def pump() -> None:
            try:
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away
                    session.feed(message.get("body", b""))
                    if not message.get("more_body"):
                        return
            finally:
                session.end_input()

        reader = asyncio.create_task(pump())
        try:
            async for stream, data in session.output():
                line = ndjson({"out" if stream == 1 else "err": base64.b64encode(data).decode()})
                await send({"type": "http.response.body", "body": line, "more_body": True})
            end = {"error": session.error} if session.error else {"exit": session.exit_code}
            await send({"type": "http.response.body", "body": ndjson(end)})
        finally:
            reader.cancel()
            session.close()


def create_addons_router(platform: HasAddons, require_token: Callable[..., Any]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["add-ons"])

    def addons() -> Addons:
        if platform.addons is None:
            raise AddonsAbsent("this daemon runs without add-on support (no Services part in its engine)")
        return platform.addons

    @router.get("/api/addons")
    async def list_addons() -> list[dict[str, Any]]:
        return await addons().list()

    @router.post("/api/addons")
    async def create_addon(body: AddonCreate) -> StreamingResponse:
        """Start the add-on, wait until it takes connections, attach it to the app (a release)."""
        job = await addons().create(body.kind, body.app, name=body.name, version=body.version, as_var=body.as_var)
        return stream_job(job)

    @router.get("/api/addons/{name}")
    async def addon_info(name: str) -> dict[str, Any]:
        return await addons().info(name)

    @router.get("/api/addons/{name}/logs", response_model=None)
    async def addon_logs(
        name: str,
        tail: Annotated[int, Query(ge=1, le=100000)] = 200,
        since: float | None = None,
        grep: str | None = None,
        follow: bool = False,
    ) -> list[dict[str, Any]] | StreamingResponse:
        """The add-on container's output (the engine's log, lines shaped like an app's: `process`
        is the kind, `release` the version): the last `tail` lines from `since` (epoch seconds)
        containing `grep`; `follow` streams them, then new ones as they come, as NDJSON."""
        observe = addons().observe
        read = await observe.read_logs(name, tail=tail, since=since, grep=grep or None)
        if not follow:
            return read.lines
        following = observe.follow_logs(name, after=read, since=since, grep=grep or None)

        async def body() -> AsyncIterator[bytes]:
            for line in read.lines:
                yield ndjson(line)
            async for line in following:
                yield ndjson(line)

        return StreamingResponse(body(), media_type="application/x-ndjson")

    @router.post("/api/addons/{name}/attach")
    async def attach(name: str, body: AddonAttach) -> StreamingResponse:
        return stream_job(await addons().attach(name, body.app, body.as_var))

    @router.post("/api/addons/{name}/detach")
    async def detach(name: str, body: AddonDetach) -> StreamingResponse:
        return stream_job(await addons().detach(name, body.app))

    @router.post("/api/addons/{name}/expose")
    async def expose(name: str, body: AddonExpose) -> dict[str, Any]:
        """Publish the add-on's port on this machine (it restarts once); not on loopback only with `public`."""
        return await addons().access.expose(name, address=body.address, port=body.port, public=body.public)

    @router.post("/api/addons/{name}/unexpose")
    async def unexpose(name: str) -> dict[str, Any]:
        """Take the published port away (it restarts once)."""
        return await addons().access.unexpose(name)

    @router.post("/api/addons/{name}/credentials/rotate")
    async def rotate(name: str) -> StreamingResponse:
        """A new user (Redis: password), every attached app rolled onto it, then the old one removed."""
        return stream_job(await addons().access.rotate(name))

    @router.post("/api/addons/{name}/promote")
    async def promote(name: str, body: AddonPromote) -> StreamingResponse:
        """Make the add-on the app's DATABASE_URL (REDIS_URL); the one that was takes its old var."""
        return stream_job(await addons().access.promote(name, body.app))

    @router.post("/api/addons/{name}/shell", response_class=ShellExchange, status_code=200)
    async def shell(name: str, tty: bool = False, rows: int = 0, cols: int = 0) -> ShellExchange:
        """psql, redis-cli or mariadb in the add-on's container: the request body is its input,
        the answer its output (NDJSON), both streamed at once."""
        size = (rows, cols) if rows > 0 and cols > 0 else None
        return ShellExchange(await addons().access.shell(name, tty=tty, size=size))

    @router.post("/api/addons/{name}/upgrade")
    async def upgrade(name: str, body: AddonUpgrade) -> StreamingResponse:
        """A new version: the same major in place; a new major only with `via_dump` (dump, restore
        into a new add-on, verify, move the attached apps, keep the old one stopped)."""
        job = await addons().upgrades.upgrade(name, body.version, via_dump=body.via_dump, new_name=body.name)
        return stream_job(job)

    @router.delete("/api/addons/{name}")
    async def destroy(name: str, confirm: str = "", detach: bool = False, backup: bool = True) -> dict[str, Any]:
        """Remove the add-on and its data; `confirm` must repeat its name. A final backup is taken
        and verified first (kept under the backups directory) unless `backup` is false."""
        return await addons().destroy(name, confirm=confirm, detach=detach, backup=backup)

    return router
