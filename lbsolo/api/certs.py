"""The certificates' REST routes: ACME certificates of the custom domains (list, info, issue, renew).

A thin layer over core_certs.Certificates: parse, call one use case, render. Issuing and renewing
answer once the try is over (a preflight and, if it passes, an order: seconds, at most a few
minutes); a failed try is a 200 carrying `last_error`, since the record is what changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from lbsolo.core_certs import AcmeOff, Certificates


class HasCerts(Protocol):
    certs: Certificates | None


class CertOut(BaseModel):
    domain: str
    status: str = Field(description="valid (a certificate is served), waiting (none yet; next_try), issuing (now)")
    issuer: str = Field(description="the issuing CA's name; empty before the first certificate")
    not_before: float = Field(description="unix time; 0 without a certificate")
    not_after: float = Field(description="unix time the certificate expires; 0 without one")
    renew_at: float = Field(description="unix time a renewal starts (a third of the lifetime left)")
    next_try: float = Field(description="unix time of the next try (after backoff and the hourly cap)")
    last_attempt: float
    last_success: float
    last_error: str = Field(description="why the last try failed (preflight or CA); empty after a success")
    failures: int = Field(description="tries failed in a row")
    ca_attempts_last_hour: int = Field(description="orders sent to the CA for this domain in the last hour")
    expires_soon: bool = Field(description="under 14 days left (or expired) and not renewed: shown red, warned daily")
    ca: str = Field(description="where the next order goes: production, or staging while authorizations fail")
    challenge: str = Field(
        default="", description="the challenge the next try uses: http-01 or tls-alpn-01 (empty: http-01 first)"
    )
    validated_by: str = Field(default="", description="the challenge that last worked for this domain")
    order_url: str = Field(
        default="", description="the order in flight at the CA, taken up again after a restart; empty: none"
    )


def _out(record: dict[str, Any]) -> CertOut:
    return CertOut(**{k: record[k] for k in CertOut.model_fields})


def create_certs_router(platform: HasCerts, require_token: Callable[..., Any]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["certificates"])

    def certs() -> Certificates:
        if platform.certs is None:
            raise AcmeOff("ACME is off: set LBSOLO_ACME_EMAIL (a contact address for the CA) and restart lbsolo")
        return platform.certs

    @router.get("/api/certs")
    async def list_certs() -> list[CertOut]:
        """Every domain with an ACME certificate, or waiting for one."""
        return [_out(r) for r in await certs().list()]

    @router.get("/api/certs/{domain}")
    async def cert_info(domain: str) -> CertOut:
        return _out(await certs().info(domain))

    @router.post("/api/certs/{domain}/issue")
    async def issue_cert(domain: str) -> CertOut:
        """Try now: the preflight (the name points here and reaches this proxy), then an order at the CA."""
        return _out(await certs().issue(domain))

    @router.post("/api/certs/{domain}/renew")
    async def renew_cert(domain: str) -> CertOut:
        """A new certificate now, whatever the expiry of the one served (the hourly cap still holds)."""
        return _out(await certs().renew(domain))

    return router
