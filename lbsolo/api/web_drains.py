"""The web UI's log drains: the forms of the app page's Log drains section (Add, Remove). Each
calls the use case its REST route calls (lbsolo.api.drains) and goes back to the app page with
what it did, or why not (in red; nothing changed). It must not import jinja2, the engine or the
state store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lbsolo.core import Platform

if TYPE_CHECKING:
    from lbsolo.api.web_addons import Pages


def create_web_drains_router(platform: Platform, pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.post("/ui/apps/{name}/drains")
    async def add(request: Request, name: str) -> Response:
        async def change(form: dict[str, str]) -> str:
            drain = await platform.drains.add(name, form.get("url", ""))
            return f"added drain {drain['id']}: {drain['url']}"

        return await pages.form_change(request, name, change)

    @router.post("/ui/apps/{name}/drains/{drain}/remove")
    async def remove(request: Request, name: str, drain: str) -> Response:
        async def change(_form: dict[str, str]) -> str:
            return f"removed drain {await platform.drains.remove(name, drain)}"

        return await pages.form_change(request, name, change)

    return router
