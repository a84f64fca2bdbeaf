"""The alerts' REST routes: /api/alerts (incidents, channels, rules) and /api/alerts/rules/{rule}.

A thin layer over core_alerts.Alerts: parse, call one use case, render. Reading is for any token
that reads the platform (scopes: GET); changing a rule is the admin's (scopes' default for
changes). The email channel is shown by its server and recipients: the SMTP URL's user and
password are never sent back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from lbsolo.api.audit import note
from lbsolo.errors import LbsoloError


class AlertsOff(LbsoloError):
    status = 503
    code = "alerts_off"


class IncidentOut(BaseModel):
    id: str
    rule: str
    title: str
    key: str = Field(description="what the incident is about: the app, app/job, add-on, domain, path or engine")
    app: str | None
    state: str = Field(description="open or resolved")
    message: str
    value: float | None = Field(description="the measure that crossed the threshold, when there is one")
    opened_at: float
    resolved_at: float | None
    resolution: str


class ChannelOut(BaseModel):
    channel: str
    state: str = Field(description="off (no LBSOLO_SMTP_URL), invalid, waiting (nothing sent yet), ok or failing")
    problem: str | None = Field(description="why LBSOLO_SMTP_URL is not used")
    server: str | None
    to: list[str]
    sent: int
    failed_attempts: int
    dropped: int = Field(description="messages given up on (after their tries, or the queue full)")
    waiting: int
    last_error: str | None
    last_error_at: float | None
    last_sent_at: float | None
    retry_at: float | None


class RuleOut(BaseModel):
    rule: str
    title: str
    kind: str = Field(description="event (opened and resolved by events) or observed (looked at every few seconds)")
    enabled: bool
    threshold: float | None
    unit: str
    window: float | None = Field(description="seconds")
    window_is: str = Field(description="hold (the condition must hold this long), measure (rates over it) or none")
    default_threshold: float | None
    default_window: float | None


class AlertsOut(BaseModel):
    open: list[IncidentOut]
    resolved: list[IncidentOut]
    channels: list[ChannelOut]
    rules: list[RuleOut]


class RuleIn(BaseModel):
    enabled: bool | None = None
    threshold: float | None = Field(default=None, description="in the rule's unit (see GET /api/alerts/rules)")
    window: float | str | None = Field(default=None, description='seconds, or "90s", "5m", "1h"')
    reset: bool = Field(default=False, description="back to the defaults first")


def create_alerts_router(platform: Any, require_token: Callable[..., Any]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["alerts"])

    def alerts() -> Any:
        found = getattr(platform, "alerts", None)
        if found is None:
            raise AlertsOff("alerts are not running in this daemon")
        return found

    @router.get("/api/alerts")
    async def list_alerts(limit: int = Query(50, ge=0, le=1000)) -> AlertsOut:
        """Open incidents, the most recent resolved ones (up to `limit`), the email channel's status and the rules."""
        return AlertsOut(**await alerts().listing(limit))

    @router.get("/api/alerts/rules")
    async def list_rules() -> list[RuleOut]:
        """Every rule with its threshold and window (the defaults, or what was set)."""
        await alerts().load()
        return [RuleOut(**r) for r in alerts().rules()]

    @router.put("/api/alerts/rules/{rule}")
    async def set_rule(rule: str, body: RuleIn) -> RuleOut:
        """Turn a rule on or off, or change its threshold or window; a value that does not fit changes nothing."""
        given = {
            "enabled": body.enabled,
            "threshold": body.threshold,
            "window": body.window,
            "reset": body.reset or None,
        }
        note(set=[f"{rule}.{k}" for k, v in given.items() if v is not None])
        out = await alerts().set_rule(
            rule, enabled=body.enabled, threshold=body.threshold, window=body.window, reset=body.reset
        )
        return RuleOut(**out)

    @router.post("/api/alerts/test", status_code=202)
    async def test_alert() -> dict[str, Any]:
        """Send a test notification: the event alert.test to the webhooks that want alerts, and an email
        (queued: its outcome shows in the email channel's status, GET /api/alerts)."""
        return dict(alerts().test())

    @router.get("/api/alerts/{incident}")
    async def get_incident(incident: str) -> IncidentOut:
        """One incident, open or resolved."""
        return IncidentOut(**await alerts().incident(incident))

    return router
