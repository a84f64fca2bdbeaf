"""The add-ons' REST routes: databases for apps (create, list, info, attach, detach, destroy).

A thin layer over core_addons.Addons, like the rest of the API: parse, call one use case, render.
Creating and attaching make a release of the app, so they stream like a deploy (NDJSON lines,
then the result). A daemon built without the engine's Services part answers 501, saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from lbsolo.api.jobs import stream_job
from lbsolo.core_addons import Addons
from lbsolo.errors import LbsoloError


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

    @router.post("/api/addons/{name}/attach")
    async def attach(name: str, body: AddonAttach) -> StreamingResponse:
        return stream_job(await addons().attach(name, body.app, body.as_var))

    @router.post("/api/addons/{name}/detach")
    async def detach(name: str, body: AddonDetach) -> StreamingResponse:
        return stream_job(await addons().detach(name, body.app))

    @router.delete("/api/addons/{name}")
    async def destroy(name: str, confirm: str = "", detach: bool = False) -> dict[str, Any]:
        """Remove the add-on and its data; `confirm` must repeat its name."""
        return await addons().destroy(name, confirm=confirm, detach=detach)

    return router
