"""The web UI's Alerts page: open incidents, the recent resolved ones, the email channel's status and
the rules, each with a form that turns it on or off and changes its threshold or window.

Included by lbsolo.api.web, whose sessions, CSRF checks, rendering and flash messages it uses
through `Pages`. The form calls the use case its REST route calls (lbsolo.api.alerts) and goes
back to the page with what it did, or why not (in red; nothing changed). It must not import
jinja2, the engine or the state store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lbsolo.api.audit import note
from lbsolo.errors import InvalidInput, LbsoloError

if TYPE_CHECKING:
    from lbsolo.api.web_addons import Pages

PAGE = "/ui/alerts"


def _number(form: dict[str, str], name: str) -> float | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput(f"the {name} must be a number, not {raw!r}") from None


def create_web_alerts_router(platform: Any, pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(PAGE)
    async def alerts_page(request: Request) -> Response:
        session = pages.current(request)
        if session is None:
            return pages.to_login(request)
        alerts = getattr(platform, "alerts", None)
        shown = (
            await alerts.listing(50)
            if alerts is not None
            else {"open": [], "resolved": [], "channels": [], "rules": []}
        )
        return pages.page(request, "alerts.html", session, **shown)

    @router.post(PAGE + "/rules/{rule}")
    async def set_rule(request: Request, rule: str) -> Response:
        checked = await pages.checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        note(set=[f"{rule}.enabled", *(f"{rule}.{k}" for k in ("threshold", "window") if form.get(k, "").strip())])
        try:
            alerts = getattr(platform, "alerts", None)
            if alerts is None:
                raise InvalidInput("alerts are not running in this daemon")
            window = form.get("window", "").strip() or None
            out = await alerts.set_rule(
                rule, enabled=form.get("enabled") == "on", threshold=_number(form, "threshold"), window=window
            )
        except LbsoloError as e:
            note(failed=e.code)
            return pages.back_to(session, PAGE, "error", e.message)
        state = "on" if out["enabled"] else "off"
        limits = ", ".join(f"{k} {out[k]:g}" for k in ("threshold", "window") if out[k] is not None)
        return pages.back_to(session, PAGE, "ok", f"rule {rule} {state}" + (f" ({limits})" if limits else ""))

    return router
