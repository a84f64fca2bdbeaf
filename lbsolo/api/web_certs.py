"""The web UI's HTTPS forms on the app page: the Renew button of a custom domain's certificate and
the HSTS toggle (the redirect's is in lbsolo.api.web). Each calls the use case its REST route calls
and goes back to the app page with what it did, or why not (in red; nothing changed). Renew asks
the certificate loop and goes back at once: the section shows the try's result on the next load.
It must not import jinja2, the engine or the state store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lbsolo.api.web_session import on_off
from lbsolo.core import Platform
from lbsolo.core_certs import AcmeOff
from lbsolo.errors import NotFound

if TYPE_CHECKING:
    from lbsolo.api.web_addons import Pages

ACME_OFF = "ACME is off: set LBSOLO_ACME_EMAIL (a contact address for the CA) and restart lbsolo"


def create_web_certs_router(platform: Platform, pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.post("/ui/apps/{name}/certs/renew")
    async def renew(request: Request, name: str) -> Response:
        checked = await pages.checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        domain = form.get("domain", "").strip().lower().rstrip(".")

        async def change() -> str:
            app = await platform.get_app(name)
            if domain not in {d.split("/", 1)[0].lower() for d in app["domains"]}:
                raise NotFound(f"{domain or 'that name'} is not a domain of {name}")
            certs = getattr(platform, "certs", None)
            if certs is None:
                raise AcmeOff(ACME_OFF)
            await certs.request_renewal(domain)
            return f"a new certificate for {domain} is being asked for: its result shows here"

        return await pages.finish_change(session, name, change)

    @router.post("/ui/apps/{name}/hsts")
    async def hsts(request: Request, name: str) -> Response:
        async def change(form: dict[str, str]) -> str:
            state = await platform.set_https(name, None, on_off(form, "hsts"))
            if not state["hsts"]:
                return "HSTS off"
            return f"HSTS on (max-age={state['hsts_max_age']}), sent over HTTPS only"

        return await pages.form_change(request, name, change)

    return router
