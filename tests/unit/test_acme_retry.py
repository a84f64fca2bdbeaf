"""ACME part 3: expiry warnings and the staging detour while authorizations fail, as pure decisions
on a fake clock, then through core_certs with hand-written fake CAs (no network, no proxy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbsolo.acme_client import AcmeFailed, AuthorizationFailed, Issued, OrderGone, PendingOrder
from lbsolo.acme_plan import (
    DAY,
    EXPIRY_WARNING,
    Ca,
    CertRecord,
    after_attempt,
    ca_for,
    expires_soon,
    expiry_alert,
    next_try,
    redirect_by_default,
)
from lbsolo.config import Settings
from lbsolo.core_certs import Certificates
from lbsolo.events import EventBus

T0 = 1_800_000_000.0


def _valid(not_after: float, **kw: Any) -> CertRecord:
    return CertRecord("shop.example.com", issuer="R3", not_before=not_after - 90 * DAY, not_after=not_after, **kw)


def test_an_expiring_certificate_is_warned_about_once_per_day_and_an_expired_one_too():
    record = _valid(T0 + 20 * DAY)
    assert expiry_alert(record, T0) is None and not expires_soon(record, T0)
    now = T0 + 20 * DAY - EXPIRY_WARNING + 1  # 14 days left, less a second
    kind, key = expiry_alert(record, now)  # type: ignore[misc]
    assert kind == "cert.expiring" and expires_soon(record, now)
    record.alerted = key
    same_day = DAY * (now // DAY) + DAY - 1
    assert expiry_alert(record, same_day) is None  # once that day
    kind, key2 = expiry_alert(record, same_day + 2)  # type: ignore[misc]
    assert kind == "cert.expiring" and key2 != key  # again the next day
    kind, _ = expiry_alert(record, T0 + 21 * DAY)  # type: ignore[misc]
    assert kind == "cert.expired"
    # A renewal gives a new certificate: its own alerts, none while it has long to live.
    renewed = _valid(T0 + 110 * DAY, alerted=key2)
    assert expiry_alert(renewed, T0 + 21 * DAY) is None
    assert expiry_alert(CertRecord("none.example.com"), T0) is None  # no certificate: nothing to warn of


def test_a_failed_authorization_sends_the_retries_to_staging_until_one_passes_then_production_once():
    record = CertRecord("shop.example.com")
    assert ca_for(record) == Ca.PRODUCTION
    after_attempt(record, Ca.PRODUCTION, ok=False, authorization_failed=False)  # CA unreachable: no detour
    assert ca_for(record) == Ca.PRODUCTION
    after_attempt(record, Ca.PRODUCTION, ok=False, authorization_failed=True)
    assert ca_for(record) == Ca.STAGING
    after_attempt(record, Ca.STAGING, ok=False, authorization_failed=True)
    assert ca_for(record) == Ca.STAGING and not record.staging_passed
    after_attempt(record, Ca.STAGING, ok=True, authorization_failed=False)
    assert ca_for(record) == Ca.PRODUCTION and record.staging_passed
    # Production is tried at once, backoff or not; the hourly cap still holds.
    record.failures, record.last_attempt = 3, T0
    assert next_try(record, T0 + 1) == T0 + 1
    record.ca_attempts = [T0 - 100, T0 - 50, T0 - 10]
    assert next_try(record, T0 + 1) == T0 - 100 + 3600
    after_attempt(record, Ca.PRODUCTION, ok=False, authorization_failed=True)  # failed again: back to staging
    assert ca_for(record) == Ca.STAGING and not record.staging_passed
    assert next_try(record, T0 + 1) == T0 + 240  # backoff again (3 failures: 4 minutes)
    record.ca = Ca.PRODUCTION
    after_attempt(record, Ca.PRODUCTION, ok=True, authorization_failed=False)
    assert ca_for(record) == Ca.PRODUCTION
    again = CertRecord.from_dict(record.to_dict())
    assert again == record


def test_the_redirect_comes_by_default_for_public_names_only_and_never_over_a_choice():
    assert redirect_by_default(False, False, "shop.example.com")
    assert not redirect_by_default(False, True, "shop.example.com")  # --no-redirect said before
    assert not redirect_by_default(True, False, "shop.example.com")  # on already
    assert not redirect_by_default(False, False, "shop.test")


# ---- through core_certs, with fake CAs


@dataclass
class FakeCA:
    """A CA that answers each order with the next outcome: an Issued, or an exception to raise."""

    name: str
    outcomes: list[Any] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)

    challenges: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)  # the URLs of orders taken up again

    def order(
        self, domain: str, responder: Any, *, challenge: str, deadline: float,
        resume: PendingOrder | None = None, created: Any = None, hold: Any = None,
    ) -> Issued:  # fmt: skip
        outcome = self.outcomes.pop(0)
        if resume is not None:
            self.resumed.append(resume.url)
        else:
            self.orders.append(domain)
            self.challenges.append(challenge)
            if created is not None:  # the CA made the order: kept before its challenge is answered
                created(PendingOrder(f"https://ca/order/{len(self.orders)}", challenge, b"order key"))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _issued(not_after: float) -> Issued:
    return Issued(b"chain", b"key", "Fake CA", not_after - 90 * DAY, not_after)


class _Board:
    def put_challenge(self, token: str, key_authorization: str) -> None: ...

    def drop_challenge(self, token: str) -> None: ...


class _State:
    def list_apps(self) -> list[Any]:
        @dataclass
        class A:
            domains: list[str]

        return [A(["shop.example.com"])]

    def list_routes(self) -> list[Any]:
        return []


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _certs(tmp_path: Path, prod: FakeCA, staging: FakeCA, clock: Clock) -> tuple[Certificates, list]:
    bus = EventBus()
    events: list = []
    bus.add_listener(events.append)
    installed: list = []
    s = Settings(home=tmp_path, acme_email="ops@example.com")
    certs = Certificates(
        s, _State(), bus, _Board(), lambda d, c, k: installed.append(d),  # type: ignore[arg-type]
        account=prod, staging=staging, clock=clock,  # type: ignore[arg-type]
    )  # fmt: skip

    async def passes(domain: str, challenge: Any = None) -> None:  # the preflight has its own tests (test_acme_http01)
        return None

    certs.preflight = passes  # type: ignore[method-assign]
    return certs, events


def test_core_goes_through_staging_after_a_failed_authorization_and_serves_only_production(run, tmp_path: Path):
    clock = Clock()
    prod = FakeCA("production", [AuthorizationFailed("validation failed: connection refused"), _issued(T0 + 90 * DAY)])
    staging = FakeCA("staging", [AuthorizationFailed("validation failed: 404"), _issued(T0 + 30 * DAY)])

    async def scenario():
        certs, events = _certs(tmp_path, prod, staging, clock)
        out = await certs.issue("shop.example.com")
        assert out["failures"] == 1 and "connection refused" in out["last_error"]
        record = certs._records["shop.example.com"]
        assert record.ca == Ca.STAGING and (len(prod.orders), len(staging.orders)) == (1, 0)
        clock.now += 120
        out = await certs.issue("shop.example.com")  # staging fails: still staging, not capped
        assert out["last_error"].startswith("(staging CA)") and out["ca_attempts_last_hour"] == 1
        clock.now += 300
        out = await certs.issue("shop.example.com")  # staging passes, then production at once
        assert (len(prod.orders), len(staging.orders)) == (2, 2)
        assert out["status"] == "valid" and out["issuer"] == "Fake CA" and out["not_after"] == T0 + 90 * DAY
        assert out["ca_attempts_last_hour"] == 2 and record.staging_attempts  # staging counted apart
        issued = [e for e in events if e.kind == "cert.issued"]
        assert len(issued) == 1 and issued[0].data["first"] is True  # the staging one is never served

    run(scenario)


def test_core_raises_expiry_events_once_a_day_and_lbsolo_certs_shows_them_red(run, tmp_path: Path):
    clock = Clock()
    prod = FakeCA("production", [_issued(T0 + 20 * DAY), AcmeFailed("the CA refused: rate limited")])

    async def scenario():
        certs, events = _certs(tmp_path, prod, FakeCA("staging"), clock)
        await certs.issue("shop.example.com")
        await certs._alerts(clock())
        assert not [e for e in events if e.kind.startswith("cert.expir")]
        assert (await certs.list())[0]["expires_soon"] is False
        clock.now = T0 + 10 * DAY
        await certs.renew("shop.example.com")  # the renewal fails
        for _ in range(3):
            await certs._alerts(clock())
        expiring = [e for e in events if e.kind == "cert.expiring"]
        assert len(expiring) == 1 and "expires in 10.0 days" in expiring[0].message
        assert "rate limited" in expiring[0].message and expiring[0].data["domain"] == "shop.example.com"
        assert (await certs.list())[0]["expires_soon"] is True
        clock.now += DAY
        await certs._alerts(clock())
        assert len([e for e in events if e.kind == "cert.expiring"]) == 2
        clock.now = T0 + 21 * DAY
        await certs._alerts(clock())
        await certs._alerts(clock())
        assert len([e for e in events if e.kind == "cert.expired"]) == 1
        # Kept with the record: a restarted daemon does not send today's alert again.
        again, events2 = _certs(tmp_path, prod, FakeCA("staging"), clock)
        await again.load()
        await again._alerts(clock())
        assert not [e for e in events2 if e.kind.startswith("cert.expir")]

    run(scenario)


def test_an_order_left_in_flight_is_resumed_by_the_next_run_and_never_sent_twice(run, tmp_path: Path):
    """A daemon killed mid-order: the order's URL, challenge and key were kept when the CA made it;
    the next run takes that order up (no second order, no second CA attempt counted) and forgets
    it once the certificate is in. An order the CA has ended meanwhile is replaced by one new one."""
    clock = Clock()
    # The first run's order is cut short (the process dies: here, the CA unreachable mid-poll).
    prod = FakeCA("production", [AcmeFailed("connection reset"), _issued(T0 + 90 * DAY)])

    async def scenario():
        certs, _ = _certs(tmp_path, prod, FakeCA("staging"), clock)
        await certs.issue("shop.example.com")
        key = tmp_path / "acme" / "certs" / "shop.example.com.order.key"
        assert key.read_bytes() == b"order key" and key.stat().st_mode & 0o777 == 0o600
        again, _ = _certs(tmp_path, prod, FakeCA("staging"), clock)  # the next run, the same home
        await again.load()
        record = again._records["shop.example.com"]
        kept = (record.order_url, record.order_challenge, record.order_ca)
        assert kept == ("https://ca/order/1", "http-01", "production")
        clock.now += 600  # past the backoff, within the hour
        out = await again._start("shop.example.com")
        assert prod.orders == ["shop.example.com"] and prod.resumed == ["https://ca/order/1"]
        assert out.not_after == T0 + 90 * DAY and len(out.ca_attempts) == 1
        assert out.order_url == "" and not key.exists()

    run(scenario)


def test_an_order_the_ca_ended_meanwhile_is_replaced_by_one_new_order(run, tmp_path: Path):
    clock = Clock()
    prod = FakeCA("production", [AcmeFailed("timed out"), OrderGone("it is invalid"), _issued(T0 + 90 * DAY)])

    async def scenario():
        certs, _ = _certs(tmp_path, prod, FakeCA("staging"), clock)
        await certs.issue("shop.example.com")
        clock.now += 3600
        out = await certs._start("shop.example.com")
        assert prod.resumed == ["https://ca/order/1"] and len(prod.orders) == 2
        assert out.has_certificate and out.order_url == "" and out.failures == 0

    run(scenario)
