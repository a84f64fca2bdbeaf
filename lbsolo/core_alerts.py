"""Alerts: the loop that looks, decides (lbsolo.alerts.decide) and notifies, and its use cases.

Every settings.alerts_interval seconds the loop gathers what the observed rules need — the
restart histories (crash loops), a health check of each serving web replica, the ACME
certificates' ends, the disks of the engine's data root and $LBSOLO_HOME, the proxy's per-app
counters (5xx share and p95 over a window), an engine ping — and hands it to `decide` with the
open incidents. Bus events of the event rules (deploy.failed, cron.failed, backups…) are
decided as they come. An incident that opens or resolves is saved first (so a restarted daemon
neither forgets nor re-sends it), then emitted on the bus as `alert.opened` / `alert.resolved`
(the webhooks deliver those to whoever asked, Slack included) and queued for email
(lbsolo.alerts_smtp). Rule settings are a document in the state's settings ("alerts").

Each look is guarded on its own: one that fails leaves its rule's incidents as they are. It
must not change apps, and must never wait on a receiver (webhook or SMTP) or block the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from lbsolo import alerts as rules
from lbsolo import run
from lbsolo.alerts import Incident, RuleSettings, Sample, Signal
from lbsolo.alerts_smtp import MailChannel
from lbsolo.core_context import CoreContext
from lbsolo.errors import LbsoloError, NotFound
from lbsolo.events import Event, EventKind
from lbsolo.models import HealthCheck

log = logging.getLogger("lbsolo.alerts")

TEST = "alert.test"  # an event kind: `alerts:test`
SETTING = "alerts"  # the state's settings document of the rules
MAX_QUEUED = 1000  # bus events waiting for a decision
PING_TIMEOUT = 5.0
CRASH_WARMUP = 60.0  # seconds after the start before an absent crash loop means it ended (histories start empty)
PROBES = 32  # apps health-checked at once (a hanging one takes its check's timeout, not the others')


class CertSource(Protocol):
    """The ACME certificates (core_certs.Certificates): each with its domain and not_after."""

    async def list(self) -> list[dict[str, Any]]: ...


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _used(path: Path) -> tuple[int, float, int] | None:
    """(device, percent used as df counts it, bytes free) of the filesystem holding `path`; None if
    it is not on this machine (an engine reached over the network keeps its data elsewhere)."""
    try:
        st = os.statvfs(path)
        device = os.stat(path).st_dev
    except OSError:
        return None
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    free = st.f_bavail * st.f_frsize
    return device, (100.0 * used / (used + free) if used + free else 0.0), free


class Alerts:
    """The alert rules at work: `on_event` (a bus listener), `run_forever` (the daemon's task)."""

    def __init__(
        self,
        ctx: CoreContext,
        certs: CertSource | None = None,
        mail: MailChannel | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        s = ctx.settings
        self.ctx = ctx
        self.certs = certs
        self.mail = mail or MailChannel(
            s.smtp_url, timeout=s.smtp_timeout, backoff_base=s.alerts_smtp_backoff, ca_bundle=s.smtp_ca_bundle
        )
        if self.mail.problem:
            log.error("%s; alert email is off until it is fixed (the daemon runs on)", self.mail.problem)
        self.clock = clock
        self.incidents: dict[str, Incident] = {}  # open ones and the recent resolved, by id
        self.doc: dict[str, Any] = {}  # the rules' stored settings
        self.pending: dict[tuple[str, str], float] = {}
        self.samples: dict[str, list[Sample]] = {}  # per app, the proxy's counters now and then
        self._sampled_at: float | None = None
        self._counted: set[str] = set()  # the apps the proxy had counters of at the last look
        self._queue: deque[tuple[list[Signal], str | None]] = deque(maxlen=MAX_QUEUED)
        self._wake = asyncio.Event()
        self._loaded = False
        self._lock = asyncio.Lock()  # decisions are applied one at a time
        self._ping: asyncio.Future[Any] | None = None
        self._started: float | None = None  # when run_forever began (None: looks from a test)
        self._engine_root: Path | None = None
        self._health: dict[tuple[str, str], HealthCheck] = {}  # (app, release) -> its check

    # ---- use cases
    def settings(self) -> dict[str, RuleSettings]:
        return rules.effective(self.doc)

    async def load(self) -> None:
        if self._loaded:
            return
        rows = await asyncio.to_thread(self.ctx.state.list_incidents)
        self.doc = await asyncio.to_thread(self.ctx.state.get_setting, SETTING)
        self.incidents = {i.id: i for i in map(Incident.from_dict, rows)}
        self._loaded = True

    async def listing(self, limit: int = 50) -> dict[str, Any]:
        """Open incidents (newest first), the recent resolved ones, the channels and the rules."""
        await self.load()
        opened = sorted((i for i in self.incidents.values() if i.open), key=lambda i: i.opened_at, reverse=True)
        resolved = sorted(
            (i for i in self.incidents.values() if not i.open), key=lambda i: i.resolved_at or 0.0, reverse=True
        )
        return {
            "open": [i.view() for i in opened],
            "resolved": [i.view() for i in resolved[: max(0, limit)]],
            "channels": [self.mail.status()],
            "rules": self.rules(),
        }

    def rules(self) -> list[dict[str, Any]]:
        return [r.view() for r in self.settings().values()]

    async def set_rule(
        self,
        rule: str,
        *,
        enabled: bool | None = None,
        threshold: float | None = None,
        window: float | str | None = None,
        reset: bool = False,
    ) -> dict[str, Any]:
        """Change one rule (checked first: a bad value changes nothing); it applies from the next look."""
        await self.load()
        doc = rules.change(self.doc, rule, enabled=enabled, threshold=threshold, window=window, reset=reset)
        await asyncio.to_thread(self.ctx.state.save_setting, SETTING, doc)
        self.doc = doc
        self._wake.set()
        return self.settings()[rule].view()

    def test(self) -> dict[str, Any]:
        """A test notification: `alert.test` to the webhooks that want alerts, and an email (queued)."""
        where = self.mail.target.server if self.mail.target else "nowhere (LBSOLO_SMTP_URL is not set or not valid)"
        event = self.ctx.bus.emit(TEST, None, "test alert from lbsolo: the alert channels work")
        self.mail.offer("[lbsolo] TEST alert email", f"A test of lbsolo's alert email, sent through {where}.\n")
        return {"event": event.id, "email": self.mail.status()}

    async def incident(self, incident_id: str) -> dict[str, Any]:
        await self.load()
        found = self.incidents.get(incident_id)
        if found is None:
            raise NotFound(f"no incident {incident_id!r} (see: lbsolo alerts)")
        return found.view()

    # ---- the bus
    def on_event(self, event: Event) -> None:
        """A bus listener: events of the event rules, and destroyed apps, decided by the loop soon."""
        if event.kind == EventKind.APP_DESTROYED and event.app:
            self._queue.append(([], event.app))
        elif event.kind in rules.EVENT_RULES:
            self._queue.append((rules.signals_of(event.kind, event.app, event.message, event.data), None))
        else:
            return
        self._wake.set()

    # ---- the loop
    async def run_forever(self) -> None:
        await self.load()
        self._started = self.clock()
        mail = asyncio.create_task(self.mail.run(), name="alert-mail")
        interval = max(0.2, self.ctx.settings.alerts_interval)
        next_look = time.monotonic() + min(interval, 1.0)  # the first look soon after the start
        try:
            while True:
                if self._queue:
                    await self._events()
                if time.monotonic() >= next_look:
                    await self.look()
                    next_look = time.monotonic() + interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_look - time.monotonic()))
                self._wake.clear()
        finally:
            mail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mail

    async def _events(self) -> None:
        signals: list[Signal] = []
        gone: list[str] = []
        while self._queue:
            found, app = self._queue.popleft()
            signals += found
            if app:
                gone.append(app)
                self.samples.pop(app, None)
        await self.apply(signals, (), gone)

    async def look(self) -> None:
        """One look at every observed rule, then the decision."""
        now = self.clock()
        settings = self.settings()
        signals: list[Signal] = []
        observed: list[str] = []
        looks: dict[str, Callable[[RuleSettings, float], Awaitable[list[Signal]]]] = {
            "crash_loop": self._crash_loops,
            "health_check": self._health_checks,
            "cert_expiring": self._certificates,
            "disk": self._disks,
            "engine_unreachable": self._engine,
        }
        for name, gather in looks.items():
            if not settings[name].enabled:
                continue
            try:
                signals += await gather(settings[name], now)
                observed.append(name)
            except Exception:
                log.exception("alerts: the look for %s failed", name)
        try:  # backups of an add-on that is gone will not fail, nor succeed, again
            names = {a.name for a in await asyncio.to_thread(self.ctx.state.list_addons)}
            signals += [
                Signal(i.rule, i.key, False)
                for i in list(self.incidents.values())
                if i.open and i.key.startswith("addon:") and i.key[len("addon:") :] not in names
            ]
        except Exception:
            log.exception("alerts: the look at the add-ons failed")
        try:
            signals += self._rates(settings, now)
            observed += ["http_5xx", "latency_p95"]
        except Exception:
            log.exception("alerts: the look at the proxy's counters failed")
        # Just after a start the restart histories and the proxy's counters are empty: their
        # rules' open incidents (from before the restart) may open on what is seen, but are not
        # resolved for want of it until the data could show them again.
        up = now - self._started if self._started is not None else float("inf")
        warming = {"crash_loop": CRASH_WARMUP, **{r: settings[r].window or 0.0 for r in ("http_5xx", "latency_p95")}}
        observed = [r for r in observed if up >= warming.get(r, 0.0)]
        await self.apply(signals, observed, ())

    async def apply(self, signals: list[Signal], observed: Iterable[str], gone: Iterable[str]) -> rules.Decisions:
        """Decide, save what opened or resolved, then send it (webhooks through the bus, and email)."""
        async with self._lock:
            now = self.clock()
            decided = rules.decide(
                self.settings(),
                signals,
                [i for i in self.incidents.values() if i.open],
                self.pending,
                now,
                lambda: secrets.token_hex(5),
                observed=observed,
                gone_apps=gone,
            )
            self.pending = decided.pending
            if not decided.opened and not decided.resolved:
                return decided
            for i in decided.opened:
                self.incidents[i.id] = i
            forget = rules.prune([i for i in self.incidents.values() if not i.open], self.ctx.settings.alerts_history)
            for incident_id in forget:
                self.incidents.pop(incident_id, None)
            changed = [i.to_dict() for i in (*decided.opened, *decided.resolved)]
            try:  # saved before it is sent: a restart neither forgets nor re-sends it
                await asyncio.to_thread(self.ctx.state.save_incidents, changed, forget)
            except Exception as e:  # a full disk is worth an alert all the same
                log.warning("alerts: incidents not saved (%s)", e)
            for i in (*decided.opened, *decided.resolved):
                self._notify(i)
            return decided

    def _notify(self, i: Incident) -> None:
        if i.open:
            log.warning("alert opened: %s: %s", i.rule, i.message)
            message, kind = f"{i.title}: {i.message}", rules.OPENED
        else:
            log.info("alert resolved: %s (%s)", i.rule, i.resolution)
            message, kind = f"resolved: {i.title} ({i.resolution}): {i.message}", rules.RESOLVED
        self.ctx.bus.emit(kind, i.app, message, incident=i.id, rule=i.rule, key=i.key, title=i.title, value=i.value)
        self.mail.offer(rules.subject(i), rules.body(i, _when))

    # ---- the looks (each returns the firing signals of its rule)
    async def _crash_loops(self, rs: RuleSettings, now: float) -> list[Signal]:
        limit = int(rs.threshold or 1)
        return [
            Signal(
                "crash_loop",
                app,
                True,
                app,
                f"{app}: its replicas restarted {h.in_a_row} times in a row without staying up",
                h.in_a_row,
            )
            for app, h in list(self.ctx.restarts.items())
            if h.in_a_row >= limit
        ]

    async def _health_checks(self, rs: RuleSettings, now: float) -> list[Signal]:
        ctx = self.ctx
        checks: list[tuple[str, HealthCheck, list[Any]]] = []
        for app, route in list(ctx.routes.items()):
            if not route.targets or not route.release or route.asleep or ctx.lock(app).locked():
                continue  # nothing serves, or a deploy is changing it: its own checks are at work
            key = (app, route.release)
            if key not in self._health:
                try:
                    release = await asyncio.to_thread(ctx.state.get_release, app, int(route.release.lstrip("v")))
                    self._health[key] = HealthCheck.from_dict(release.health)
                except (LbsoloError, ValueError):
                    continue  # destroyed meanwhile, or a release of no version: nothing to check
            checks.append((app, self._health[key], list(route.targets)))
        self._health = {k: v for k, v in self._health.items() if k[0] in ctx.routes}

        async def probe(app: str, check: HealthCheck, target: Any) -> str | None:
            if check.path is None:
                ok = await run.tcp_probe(target.port, check.timeout, host=target.host)
                return None if ok else "the port does not accept connections"
            status = await run.http_probe(target.port, ctx.host_header(app), check.path, check.timeout, target.host)
            if status is not None and status < 400:
                return None
            return f"GET {check.path} " + ("got no answer" if status is None else f"answered {status}")

        limit = asyncio.Semaphore(PROBES)

        async def app_signal(app: str, check: HealthCheck, targets: list[Any]) -> Signal | None:
            async with limit:  # every app at once, but not every replica of 200 apps at once
                seen = await asyncio.gather(*(probe(app, check, t) for t in targets))
            failing = [s for s in seen if s]
            if not failing:
                return None
            said = f"{app}: {len(failing)} of {len(targets)} web replica(s) fail the health check ({failing[0]})"
            return Signal("health_check", app, True, app, said, len(failing))

        found = await asyncio.gather(*(app_signal(*c) for c in checks))
        return [s for s in found if s is not None]

    async def _certificates(self, rs: RuleSettings, now: float) -> list[Signal]:
        if self.certs is None:
            return []
        days = float(rs.threshold or 0)
        out = []
        for c in await self.certs.list():
            end = float(c.get("not_after") or 0)
            left = (end - now) / 86400
            if end > 0 and left < days:
                when = f"expired {_when(end)}" if left <= 0 else f"expires in {left:.1f} days ({_when(end)})"
                out.append(
                    Signal(
                        "cert_expiring",
                        c["domain"],
                        True,
                        None,
                        f"certificate for {c['domain']} {when}",
                        round(left, 2),
                    )
                )
        return out

    async def _disks(self, rs: RuleSettings, now: float) -> list[Signal]:
        if self._engine_root is None:
            info = getattr(self.ctx.engine, "info", None)
            root = ""
            if info is not None:
                with contextlib.suppress(Exception):
                    root = str((await asyncio.to_thread(info)).get("DockerRootDir") or "")
            self._engine_root = Path(root or "/var/lib/docker")
        places = [
            (self._engine_root, "the engine's data (images, volumes)"),
            (self.ctx.settings.home, "lbsolo's home (state, logs, backups)"),
        ]
        seen: dict[int, tuple[Path, str, float, int]] = {}
        for path, what in places:
            used = await asyncio.to_thread(_used, path)
            if used is None:
                continue
            device, pct, free = used
            if device in seen:
                p, w, _, _ = seen[device]
                seen[device] = (p, f"{w} and {what}", pct, free)
            else:
                seen[device] = (path, what, pct, free)
        limit = float(rs.threshold or 100)
        return [
            Signal(
                "disk",
                str(path),
                True,
                None,
                f"the disk holding {what} ({path}) is {pct:.0f}% full, "
                f"{free / 1024**3:.1f} GiB free (threshold {limit:g}%)",
                round(pct, 1),
            )
            for path, what, pct, free in seen.values()
            if pct > limit
        ]

    async def _engine(self, rs: RuleSettings, now: float) -> list[Signal]:
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(asyncio.to_thread(self.ctx.engine.ping))
            self._ping.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen, even if late
        try:
            await asyncio.wait_for(asyncio.shield(self._ping), PING_TIMEOUT)
            return []
        except TimeoutError:
            why = f"no answer in {PING_TIMEOUT:g} s"
        except Exception as e:
            why = str(getattr(e, "message", "") or e).splitlines()[0][:200] if str(e) else type(e).__name__
        return [Signal("engine_unreachable", "engine", True, None, f"the Docker engine does not answer: {why}")]

    def _rates(self, settings: dict[str, RuleSettings], now: float) -> list[Signal]:
        metrics = self.ctx.ingress.metrics()
        windows = [settings[r].window or 0.0 for r in ("http_5xx", "latency_p95")]
        keep = max(windows) + 2 * self.ctx.settings.alerts_interval
        out: list[Signal] = []
        served = self.ctx.routes
        for app, m in metrics.items():
            if app not in served:
                continue  # a destroyed app's counters stay in the proxy: nothing to say of it
            samples = self.samples.get(app)
            if samples is None:
                # Counters start with the proxy, and the proxy with the daemon: an app without any at
                # the previous look had none then; one that had (an app made again under an old
                # name, or the first look) counts from now.
                fresh = self._sampled_at is not None and app not in self._counted
                samples = self.samples[app] = [Sample(self._sampled_at or now, 0, 0, ())] if fresh else []
            samples.append(Sample.of(now, m))
            rules.trim(samples, now, keep)
            out += rules.rate_signals(app, samples, now, settings)
        for app in [a for a in self.samples if a not in metrics or a not in served]:
            del self.samples[app]
        self._counted = set(metrics)
        self._sampled_at = now
        return out
