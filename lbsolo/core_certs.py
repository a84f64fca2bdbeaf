"""Certificates from an ACME CA for the domains lbsolo serves: issued, stored, renewed, served.

`Certificates` holds the use cases (`certs`, `certs:info`, `certs:issue`, `certs:renew`) and the
loop the daemon supervises: every public custom domain of an app or static route gets a
certificate in the background (the domain is served with the local CA's certificate meanwhile),
and so does each app's `<app>.<domain>` when the lbsolo domain is itself a public name (a laptop's
`lbsolo.localhost` keeps the local CA's); renewed when a third of its lifetime remains. The pure
decisions (when, backoff, the hourly cap) are `lbsolo.acme_plan`'s; the CA is spoken to through
`lbsolo.acme_client`, imported only when ACME is on, and run in a thread.

Before an order, a preflight that costs the CA nothing (lbsolo.acme_preflight): the name must
resolve to this server, and the challenge the order will use must reach this proxy through it.
A failed preflight is retried with the same backoff as a failed order, and sends no order. Each
domain is validated by HTTP-01 or, in a daemon with an HTTPS listener, TLS-ALPN-01: the one that
worked last; a failure that may be the challenge's makes the next try use the other
(`acme_plan.challenge_for`, `after_challenge`), and the record keeps which one works.

An order in flight is kept with the record (its URL, challenge and CA) and its certificate's key
in `<domain>.order.key`, written as soon as the CA has made the order, before its challenge is
answered: a daemon killed mid-order (`kill -9`) takes the same order up again on start, so no
second order is sent; one the CA has ended meanwhile is replaced by a new one (counted as usual).

Stored under $LBSOLO_HOME/acme/ (0700): the account key, and per domain `<domain>.pem` (chain),
`<domain>.key` and `<domain>.json` (the record), all 0600. A new certificate is pushed into the
proxy's TLS store at once (`install`); a user-supplied certificate keeps priority there.

What it must not do: import the proxy (challenges go through the `ChallengeBoard` it is
given), block the loop (files and the CA in threads), or send an order past the hourly cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbsolo.acme_board import BoardResponder
from lbsolo.acme_plan import (
    Ca,
    CertRecord,
    Challenge,
    Step,
    after_attempt,
    after_challenge,
    attempts_in_window,
    ca_for,
    challenge_for,
    expires_soon,
    expiry_alert,
    is_public_name,
    next_try,
    renew_at,
)
from lbsolo.acme_preflight import ChallengeBoard, Preflight
from lbsolo.config import Settings
from lbsolo.errors import Conflict, InvalidInput, LbsoloError, NotFound
from lbsolo.events import EventBus
from lbsolo.state import State

if TYPE_CHECKING:
    from lbsolo.acme_client import AcmeAccount, Issued, PendingOrder

__all__ = ["AcmeOff", "Certificates", "ChallengeBoard"]

log = logging.getLogger("lbsolo.certs")

_LOOP_MAX_SLEEP = 60.0  # the loop looks again at least this often (new domains, a changed clock)
_ORDER_DEADLINE = 90.0


class AcmeOff(LbsoloError):
    status = 409
    code = "acme_off"


Installer = Callable[[str, bytes, bytes], None]  # (domain, chain PEM, key PEM): serve it from now on


def _write_private(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Certificates:
    """ACME certificates for the served domains. `board`: the proxy's challenge tables; `install`:
    hands a new certificate to the TLS store (None without an HTTPS listener: stored only, and
    HTTP-01 is the only challenge)."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        bus: EventBus,
        board: ChallengeBoard | None,
        install: Installer | None = None,
        *,
        account: AcmeAccount | None = None,
        staging: AcmeAccount | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state
        self.bus = bus
        self.board = board
        self.install = install
        self.clock = clock
        self.dir = settings.acme_dir
        self._account = account
        self._staging = staging
        self._records: dict[str, CertRecord] = {}
        self._running: dict[str, asyncio.Task[CertRecord]] = {}
        self._wake = asyncio.Event()
        self._loaded = False

    # ---- whether it is on
    @property
    def enabled(self) -> bool:
        return self.settings.acme_on and self.board is not None

    def off_reason(self) -> str:
        if not self.settings.acme_on:
            return "ACME is off: set LBSOLO_ACME_EMAIL (a contact address for the CA) and restart lbsolo"
        return "ACME is off: the proxy answers no HTTP-01 challenges in this daemon"

    @property
    def challenges(self) -> tuple[Challenge, ...]:
        """The challenges this daemon answers, preferred first: TLS-ALPN-01 needs the HTTPS listener."""
        if self.install is None:
            return (Challenge.HTTP01,)
        return (Challenge.HTTP01, Challenge.TLS_ALPN01)

    def _require(self) -> None:
        if not self.enabled:
            raise AcmeOff(self.off_reason())

    def account(self) -> AcmeAccount:
        if self._account is None:
            from lbsolo.acme_client import AcmeAccount  # acme, josepy, requests: only when ACME is on

            s = self.settings
            self._account = AcmeAccount(s.acme_directory_url, s.acme_email, self.dir, ca_bundle=s.acme_ca_bundle)
        return self._account

    def staging_account(self) -> AcmeAccount:
        """The account at the staging CA (its own key, under acme/staging/), for retries."""
        if self._staging is None:
            from lbsolo.acme_client import AcmeAccount

            s = self.settings
            home = self.dir / "staging"
            self._staging = AcmeAccount(s.acme_staging_url, s.acme_email, home, ca_bundle=s.acme_ca_bundle)
        return self._staging

    # ---- records on disk
    def _paths(self, domain: str) -> tuple[Path, Path, Path]:
        base = self.dir / "certs"
        return base / f"{domain}.json", base / f"{domain}.pem", base / f"{domain}.key"

    def _order_key(self, domain: str) -> Path:
        return self.dir / "certs" / f"{domain}.order.key"

    def _save(self, record: CertRecord, issued: Issued | None = None, order_key: bytes | None = None) -> None:
        """Write the record (and a new certificate, its key first, or an order's key) 0600; runs in a thread."""
        (self.dir / "certs").mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        meta, chain, key = self._paths(record.domain)
        if issued is not None:
            _write_private(key, issued.key_pem)
            _write_private(chain, issued.chain_pem)
        if order_key is not None:
            _write_private(self._order_key(record.domain), order_key)
        _write_private(meta, json.dumps(record.to_dict(), indent=1).encode())

    def _pending(self, record: CertRecord) -> PendingOrder | None:
        """The order a previous run left in flight for `record`'s domain, if any (in a thread)."""
        key = self._order_key(record.domain)
        if not record.order_url or not key.exists():
            return None
        from lbsolo.acme_client import PendingOrder

        return PendingOrder(record.order_url, record.order_challenge, key.read_bytes())

    def _forget_order(self, record: CertRecord, issued: Issued | None = None) -> None:
        """The order in flight is over (done, or dead at the CA): the record says none (in a thread)."""
        had = bool(record.order_url)
        record.order_url = record.order_challenge = record.order_ca = ""
        if had or issued is not None:
            self._save(record, issued)
        self._order_key(record.domain).unlink(missing_ok=True)

    def _read_all(self) -> list[tuple[CertRecord, bytes | None, bytes | None]]:
        base = self.dir / "certs"
        out = []
        for meta in sorted(base.glob("*.json")) if base.is_dir() else []:
            try:
                record = CertRecord.from_dict(json.loads(meta.read_text()))
            except (OSError, ValueError, TypeError) as e:
                log.warning("ignoring %s: %s", meta, e)
                continue
            _, chain, key = self._paths(record.domain)
            pems = (chain.read_bytes(), key.read_bytes()) if chain.exists() and key.exists() else (None, None)
            out.append((record, *pems))
        return out

    async def load(self) -> int:
        """Read the stored records and serve their certificates (the daemon's start); how many."""
        served = 0
        for record, chain, key in await asyncio.to_thread(self._read_all):
            self._records[record.domain] = record
            if chain and key and record.not_after > self.clock() and self.install is not None:
                self.install(record.domain, chain, key)
                served += 1
        self._loaded = True
        return served

    # ---- which domains
    async def served_domains(self) -> set[str]:
        """Every custom domain (host part) of an app or a static route, and `<app>.<domain>` for
        each app when the lbsolo domain is a public name (not so on a laptop's `lbsolo.localhost`)."""
        apps = await asyncio.to_thread(self.state.list_apps)
        routes = await asyncio.to_thread(self.state.list_routes)
        entries = [d for a in apps for d in a.domains] + [d for r in routes for d in r.domains]
        domain = self.settings.domain.lower().rstrip(".")
        if is_public_name(domain):
            entries += [f"{a.name}.{domain}" for a in apps]
        return {e.split("/", 1)[0].lower().rstrip(".") for e in entries}

    async def wanted(self) -> set[str]:
        """Domains that get a certificate without being asked: the public ones, and those that have one."""
        served = await self.served_domains()
        return {d for d in served if is_public_name(d)} | {d for d, r in self._records.items() if d in served}

    # ---- use cases
    def describe(self, record: CertRecord) -> dict[str, Any]:
        now = self.clock()
        running = record.domain in self._running
        step = Step.ISSUING if running else Step.VALID if record.not_after > now else Step.WAITING
        return {
            **record.to_dict(),
            "status": str(step),
            "expires_soon": expires_soon(record, now),
            "ca_attempts_last_hour": len(attempts_in_window(record.ca_attempts, now)),
            "renew_at": renew_at(record.domain, record.not_before, record.not_after) if record.has_certificate else 0,
            "next_try": max(now, next_try(record, now, self.settings.acme_attempts_per_hour)),
        }

    async def list(self) -> list[dict[str, Any]]:
        wanted = await self.wanted() if self.enabled else set()
        names = sorted(wanted | set(self._records))
        return [self.describe(self._records.get(d) or CertRecord(d)) for d in names]

    async def info(self, domain: str) -> dict[str, Any]:
        domain = domain.lower().rstrip(".")
        record = self._records.get(domain)
        if record is None:
            if domain not in await self.served_domains():
                raise NotFound(f"no app or route serves {domain}")
            record = CertRecord(domain)
        return self.describe(record)

    async def issue(self, domain: str, *, renew: bool = False) -> dict[str, Any]:
        """Try now (preflight, then an order unless the hourly cap is reached) and wait for the result.

        `renew`: a domain that has a valid certificate gets a new one (`certs:renew`)."""
        self._require()
        domain = domain.lower().rstrip(".")
        if domain not in await self.served_domains():
            raise NotFound(f"no app or route serves {domain}: add it first (lbsolo domains:add APP {domain})")
        if not is_public_name(domain):
            raise InvalidInput(f"{domain} is not a name a public CA issues for over HTTP-01 (wildcards need DNS-01)")
        record = self._records.setdefault(domain, CertRecord(domain))
        now = self.clock()
        if record.not_after > now and not renew:
            until = time.ctime(record.not_after)
            raise Conflict(f"{domain} has a certificate until {until} (a new one: lbsolo certs:renew {domain})")
        record.wanted_at = now
        record.failures = 0  # asked by hand: no backoff; the hourly cap on orders still holds
        result = await self._start(domain)
        if result.staging_passed:  # the staging CA validated it: production at once, as the loop would
            result = await self._start(domain)
        return self.describe(result)

    async def renew(self, domain: str) -> dict[str, Any]:
        return await self.issue(domain, renew=True)

    async def request_renewal(self, domain: str) -> dict[str, Any]:
        """As `renew`, but in the background (the UI's Renew button): the loop tries at once."""
        self._require()
        domain = domain.lower().rstrip(".")
        if domain not in await self.served_domains():
            raise NotFound(f"no app or route serves {domain}")
        if not is_public_name(domain):
            raise InvalidInput(f"{domain} is not a name a public CA issues for over HTTP-01 (wildcards need DNS-01)")
        record = self._records.setdefault(domain, CertRecord(domain))
        record.wanted_at, record.failures = self.clock(), 0  # the hourly cap on orders still holds
        self.wake()
        return self.describe(record)

    def wake(self) -> None:
        self._wake.set()

    def on_event(self, event: Any) -> None:
        """A bus listener: a domain or an app added (a name that may want a certificate) wakes the loop."""
        kind = str(getattr(event, "kind", ""))
        if kind.startswith("domains.") or kind == "app.created":
            self._wake.set()

    # ---- the loop
    async def run_forever(self) -> None:
        if not self._loaded:
            await self.load()
        while True:
            self._wake.clear()
            sleep = _LOOP_MAX_SLEEP
            now = self.clock()
            await self._alerts(now)
            for domain in sorted(await self.wanted()):
                record = self._records.get(domain) or CertRecord(domain)
                due = next_try(record, now, self.settings.acme_attempts_per_hour)
                if due <= now and domain not in self._running:
                    self._records.setdefault(domain, record)
                    asyncio.create_task(self._start(domain))  # noqa: RUF006  (kept in self._running)
                else:
                    sleep = min(sleep, max(1.0, due - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), sleep)

    async def _alerts(self, now: float) -> None:
        """Raise cert.expiring / cert.expired for each certificate that needs it (once a day each)."""
        for record in list(self._records.values()):
            alert = expiry_alert(record, now)
            if alert is None:
                continue
            kind, record.alerted = alert
            await asyncio.to_thread(self._save, record)
            days = (record.not_after - now) / 86400
            when = f"expired {time.ctime(record.not_after)}" if days <= 0 else f"expires in {days:.1f} days"
            why = f" (last error: {record.last_error})" if record.last_error else ""
            self.bus.emit(kind, None, f"certificate for {record.domain} {when}{why}",
                          domain=record.domain, not_after=record.not_after)  # fmt: skip

    async def _start(self, domain: str) -> CertRecord:
        """One try for `domain`, or the one running already."""
        task = self._running.get(domain)
        if task is None:
            task = asyncio.create_task(self._attempt(domain), name=f"acme-{domain}")
            self._running[domain] = task
            task.add_done_callback(lambda _t: self._running.pop(domain, None))
        return await asyncio.shield(task)

    async def _attempt(self, domain: str) -> CertRecord:
        record = self._records.setdefault(domain, CertRecord(domain))
        now = self.clock()
        record.last_attempt = now
        record.ca_attempts = attempts_in_window(record.ca_attempts, now)
        record.staging_attempts = attempts_in_window(record.staging_attempts, now)
        resume = await asyncio.to_thread(self._pending, record)
        if resume is not None:  # an order a killed daemon left: the same CA, the same challenge
            ca, challenge = Ca(record.order_ca or ca_for(record)), Challenge(resume.challenge)
        else:
            ca, challenge = ca_for(record), challenge_for(record, self.challenges)
        loop = asyncio.get_running_loop()
        try:
            await self.preflight(domain, challenge)
            account = self.staging_account() if ca == Ca.STAGING else self.account()
            issued = None
            if resume is not None:
                try:
                    issued = await asyncio.to_thread(self._order, account, record, challenge, ca, loop, resume)
                except LbsoloError as e:
                    if e.code != "order_gone":
                        raise
                    log.info("certificate for %s: %s; a new order", domain, e.message)
                    await asyncio.to_thread(self._forget_order, record)
            if issued is None:
                await self._count_order(record, ca, now)
                issued = await asyncio.to_thread(self._order, account, record, challenge, ca, loop, None)
        except LbsoloError as e:
            record.failures += 1
            error = f"{e.message} ({challenge})" if e.code != "error" else e.message
            record.last_error = error if ca == Ca.PRODUCTION else f"(staging CA) {error}"
            after_attempt(record, ca, ok=False, authorization_failed=e.code == "authorization_failed")
            after_challenge(record, challenge, ok=False, failure=e.code, available=self.challenges)
            if e.code in ("authorization_failed", "challenge_unavailable"):  # the order is dead at the CA
                await asyncio.to_thread(self._forget_order, record)
            await asyncio.to_thread(self._save, record)
            log.warning("certificate for %s: %s", domain, record.last_error)
            self.bus.emit("cert.failed", None, f"certificate for {domain}: {record.last_error}", domain=domain, ca=ca)
            return record
        after_attempt(record, ca, ok=True, authorization_failed=False)
        after_challenge(record, challenge, ok=True, failure="", available=self.challenges)
        if ca == Ca.STAGING:  # a test certificate, thrown away: production is tried next, at once
            record.last_error = "validated by the staging CA: production is asked next"
            await asyncio.to_thread(self._forget_order, record)
            await asyncio.to_thread(self._save, record)
            log.info("certificate for %s: the staging CA validated it, production next", domain)
            self.wake()
            return record
        first = not record.has_certificate
        record.issuer, record.not_before, record.not_after = issued.issuer, issued.not_before, issued.not_after
        record.last_success, record.failures, record.last_error = self.clock(), 0, ""
        await asyncio.to_thread(self._forget_order, record, issued)
        if self.install is not None:
            self.install(domain, issued.chain_pem, issued.key_pem)
        self.bus.emit("cert.issued", None, f"certificate for {domain} from {issued.issuer}", domain=domain, first=first)
        self.wake()  # the loop may sleep past the renewal now due (an order asked by hand, a short-lived certificate)
        return record

    async def _count_order(self, record: CertRecord, ca: Ca, now: float) -> None:
        """Count a new order about to be sent to `ca`, or raise if the production hourly cap is reached."""
        cap = self.settings.acme_attempts_per_hour
        if ca == Ca.STAGING:  # not counted against the production cap
            record.staging_attempts.append(now)
        elif cap > 0 and len(record.ca_attempts) >= cap:
            raise LbsoloError(f"{cap} orders for {record.domain} in the last hour: the next waits for the hour to pass")
        else:
            record.ca_attempts.append(now)
        await asyncio.to_thread(self._save, record)

    def _order(
        self,
        account: AcmeAccount,
        record: CertRecord,
        challenge: Challenge,
        ca: Ca,
        loop: asyncio.AbstractEventLoop,
        resume: PendingOrder | None,
    ) -> Issued:
        """The order (new, or `resume`d), in a worker thread; its challenges are put on the board
        from the loop. A new order is kept with the record before its challenge is answered."""
        assert self.board is not None
        responder = BoardResponder(self.board, loop)

        def created(pending: PendingOrder) -> None:
            record.order_url, record.order_challenge, record.order_ca = pending.url, pending.challenge, str(ca)
            self._save(record, order_key=pending.key_pem)

        return account.order(
            record.domain, responder, challenge=str(challenge), deadline=_ORDER_DEADLINE,
            resume=resume, created=created, hold=self._hold,
        )  # fmt: skip

    def _hold(self, step: str) -> None:
        """Fault injection for tests (LBSOLO_HOLD_AT_STEP=acme_ordered|acme_answered): an order that
        has done `step` waits there forever (in its thread), so that a test can kill the daemon there."""
        if self.settings.hold_at_step == step:
            log.warning("acme order held after %s (LBSOLO_HOLD_AT_STEP)", step)
            threading.Event().wait()

    # ---- preflight
    async def preflight(self, domain: str, challenge: Challenge = Challenge.HTTP01) -> None:
        """Raise PreflightFailed (saying why) unless `domain` points here and `challenge` reaches this proxy."""
        assert self.board is not None
        await Preflight(self.settings, self.board)(domain, challenge)
