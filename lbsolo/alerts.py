"""Alerts: the rules, their settings, and the pure decision of which incidents open and resolve.

An incident is one (rule, key) whose condition holds: opened once, notified once, and resolved
(notified once more) when the condition clears. The core (core_alerts.py) feeds `decide` with
signals — from bus events for the event rules, from what it observes every few seconds for the
others — and applies what it returns. Nothing here does I/O, reads a clock or imports a library.

The rules (kind; opens when; key; resolves when; threshold and window, with their defaults):

- deploy_failed (event): `deploy.failed`; per app; the app's next `deploy.succeeded`.
- crash_loop (observed): an app's replicas restarted N times in a row without staying up; per
  app; they stay up (the count resets). Threshold: restarts in a row (5); window: held for (0 s).
- health_check (observed): a serving web replica fails the app's health check (from the daemon,
  with the app's Host header); per app; every replica passes. Window: held for (30 s).
- cron_failed (event): `cron.failed`; per app/job; the job's next `cron.succeeded`.
- cron_missed (event): `cron.missed`; per app/job; the job's next `cron.succeeded`.
- backup_failed (event): `addon.backup.failed` / `platform.backup.failed`; per add-on (or
  "platform"); its next `*.backup.succeeded`.
- backup_missing (event): `addon.backup.missed` / `platform.backup.missed` (a scheduled backup
  that did not happen); per add-on (or "platform"); its next `*.backup.succeeded`.
- cert_expiring (observed): an ACME certificate has fewer than N days left; per domain; renewed
  (or no longer served). Threshold: days left (14).
- disk (observed): the filesystem holding the engine's data root (images, volumes) or
  $LBSOLO_HOME (state, logs, backups) is more than N % used; per path; below N %. Threshold: %
  used (85).
- http_5xx (observed): more than N % of an app's responses over the window were 5xx (with at
  least MIN_REQUESTS requests); per app; below N %. Threshold: % (5); window: measured over (300 s).
- latency_p95 (observed): an app's p95 latency over the window is above N s (at least
  MIN_REQUESTS requests; from the proxy's histogram, so a bucket's upper bound); per app; at or
  below N s. Threshold: seconds (1.0); window: measured over (300 s).
- engine_unreachable (observed): the Docker engine does not answer a ping; one key; it answers.
  Window: held for (20 s).

An app's destruction resolves its incidents; turning a rule off resolves the rule's. A rule's
settings (enabled, threshold, window) are changed with `change`, which refuses what does not fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from lbsolo.errors import InvalidInput

MIN_REQUESTS = 10  # requests in the window below which rates and latency say nothing
OPENED = "alert.opened"  # event kinds (EventKind's are plain strings)
RESOLVED = "alert.resolved"


class Kind(StrEnum):
    EVENT = "event"  # opened and resolved by bus events
    OBSERVED = "observed"  # looked at every few seconds; absent from a look means clear


class Window(StrEnum):
    NONE = "none"
    HOLD = "hold"  # the condition must hold this long before the incident opens
    MEASURE = "measure"  # rates and percentiles are computed over this many seconds


@dataclass(frozen=True)
class Rule:
    name: str
    kind: Kind
    title: str
    threshold: float | None = None  # default; None: the rule takes none
    window: float | None = None  # default seconds; None: the rule takes none
    window_is: Window = Window.NONE
    unit: str = ""
    low: float = 0.0  # thresholds allowed: low < t <= high
    high: float = 0.0
    integer: bool = False


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("deploy_failed", Kind.EVENT, "deploy failed"),
        Rule("crash_loop", Kind.OBSERVED, "crash loop", 5, 0, Window.HOLD, "restarts in a row", 0, 1000, True),
        Rule("health_check", Kind.OBSERVED, "health check failing", None, 30, Window.HOLD),
        Rule("cron_failed", Kind.EVENT, "cron job failed"),
        Rule("cron_missed", Kind.EVENT, "cron job missed"),
        Rule("backup_failed", Kind.EVENT, "backup failed"),
        Rule("backup_missing", Kind.EVENT, "backup missing"),
        Rule("cert_expiring", Kind.OBSERVED, "certificate expiring", 14, 0, Window.HOLD, "days left", 0, 365),
        Rule("disk", Kind.OBSERVED, "disk filling up", 85, 0, Window.HOLD, "% used", 0, 100),
        Rule("http_5xx", Kind.OBSERVED, "5xx responses", 5, 300, Window.MEASURE, "% of responses", 0, 100),
        Rule("latency_p95", Kind.OBSERVED, "slow responses (p95)", 1.0, 300, Window.MEASURE, "seconds", 0, 600),
        Rule("engine_unreachable", Kind.OBSERVED, "engine unreachable", None, 20, Window.HOLD),
    )
}
MAX_WINDOW = 86_400.0

# Bus events that open (True) or resolve (False) an event rule's incident: kind -> (rule(s), opens).
EVENT_RULES: dict[str, tuple[tuple[str, ...], bool]] = {
    "deploy.failed": (("deploy_failed",), True),
    "deploy.succeeded": (("deploy_failed",), False),
    "cron.failed": (("cron_failed",), True),
    "cron.missed": (("cron_missed",), True),
    "cron.succeeded": (("cron_failed", "cron_missed"), False),
    "addon.backup.failed": (("backup_failed",), True),
    "platform.backup.failed": (("backup_failed",), True),
    "addon.backup.missed": (("backup_missing",), True),
    "platform.backup.missed": (("backup_missing",), True),
    "addon.backup.succeeded": (("backup_failed", "backup_missing"), False),
    "platform.backup.succeeded": (("backup_failed", "backup_missing"), False),
}


# ---- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSettings:
    """A rule as it applies now: its defaults overlaid with what was set (alerts:set)."""

    rule: str
    enabled: bool
    threshold: float | None
    window: float | None

    def view(self) -> dict[str, Any]:
        r = RULES[self.rule]
        return {
            "rule": self.rule,
            "title": r.title,
            "kind": str(r.kind),
            "enabled": self.enabled,
            "threshold": self.threshold,
            "unit": r.unit,
            "window": self.window,
            "window_is": str(r.window_is),
            "default_threshold": r.threshold,
            "default_window": r.window,
        }


def effective(stored: Mapping[str, Any]) -> dict[str, RuleSettings]:
    """Every rule's settings from the stored document ({"rules": {rule: {enabled, threshold, window}}})."""
    changed = stored.get("rules") or {}
    out = {}
    for name, r in RULES.items():
        mine = changed.get(name) or {}
        threshold = mine.get("threshold", r.threshold) if r.threshold is not None else None
        window = mine.get("window", r.window) if r.window is not None else None
        out[name] = RuleSettings(name, bool(mine.get("enabled", True)), threshold, window)
    return out


def parse_duration(text: str | float | int) -> float:
    """Seconds from 90, "90", "90s", "5m", "2h" or "1d"; InvalidInput otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        raw = str(text).strip().lower()
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(raw[-1:])
        number = raw[:-1] if scale else raw
        try:
            value = float(number) * (scale or 1)
        except ValueError:
            raise InvalidInput(f"invalid window {text!r}: seconds, or a number with s, m, h or d (e.g. 5m)") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_WINDOW:
        raise InvalidInput(f"invalid window {text!r}: from 0 to {MAX_WINDOW:.0f} seconds (1 day)")
    return value


def change(
    stored: Mapping[str, Any],
    rule: str,
    *,
    enabled: bool | None = None,
    threshold: float | None = None,
    window: float | str | None = None,
    reset: bool = False,
) -> dict[str, Any]:
    """The stored document with one rule changed; InvalidInput (nothing changed) for what does not fit."""
    r = RULES.get(rule)
    if r is None:
        raise InvalidInput(f"unknown alert rule {rule!r}: one of {', '.join(RULES)}")
    rules = {k: dict(v) for k, v in (stored.get("rules") or {}).items()}
    mine = {} if reset else rules.get(rule, {})
    if threshold is not None:
        if r.threshold is None:
            raise InvalidInput(f"the rule {rule} takes no threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
            raise InvalidInput(f"invalid threshold for {rule}: a number of {r.unit}")
        if not r.low < threshold <= r.high or (r.integer and threshold != int(threshold)):
            what = "a whole number" if r.integer else "a number"
            raise InvalidInput(
                f"invalid threshold {threshold:g} for {rule}: {what} of {r.unit} above {r.low:g}, at most {r.high:g}"
            )
        mine["threshold"] = int(threshold) if r.integer else float(threshold)
    if window is not None:
        if r.window is None:
            raise InvalidInput(f"the rule {rule} takes no window")
        seconds = parse_duration(window)
        if r.window_is == Window.MEASURE and seconds < 1:
            raise InvalidInput(f"invalid window for {rule}: rates are measured over at least 1 second")
        mine["window"] = seconds
    if enabled is not None:
        mine["enabled"] = bool(enabled)
    rules[rule] = mine
    if not mine:
        rules.pop(rule)
    return {**stored, "rules": rules}


# ---- incidents and the decision ----------------------------------------------------------------


@dataclass(frozen=True)
class Signal:
    """What was seen of one (rule, key): its condition holds (firing) or has cleared."""

    rule: str
    key: str
    firing: bool
    app: str | None = None
    message: str = ""
    value: float | None = None


@dataclass
class Incident:
    id: str
    rule: str
    key: str
    app: str | None
    message: str
    opened_at: float
    value: float | None = None
    resolved_at: float | None = None
    resolution: str = ""  # why it resolved

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    @property
    def title(self) -> str:
        return RULES[self.rule].title if self.rule in RULES else self.rule

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def view(self) -> dict[str, Any]:
        return {**self.to_dict(), "title": self.title, "state": "open" if self.open else "resolved"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Incident:
        return cls(
            id=str(d["id"]),
            rule=str(d["rule"]),
            key=str(d.get("key", "")),
            app=d.get("app"),
            message=str(d.get("message", "")),
            opened_at=float(d.get("opened_at", 0.0)),
            value=d.get("value"),
            resolved_at=None if d.get("resolved_at") is None else float(d["resolved_at"]),
            resolution=str(d.get("resolution", "")),
        )


@dataclass
class Decisions:
    opened: list[Incident] = field(default_factory=list)
    resolved: list[Incident] = field(default_factory=list)
    pending: dict[tuple[str, str], float] = field(default_factory=dict)  # (rule, key) -> firing since


def decide(
    settings: Mapping[str, RuleSettings],
    signals: Iterable[Signal],
    incidents: Iterable[Incident],
    pending: Mapping[tuple[str, str], float],
    now: float,
    new_id: Callable[[], str],
    *,
    observed: Iterable[str] = (),
    gone_apps: Iterable[str] = (),
) -> Decisions:
    """Which incidents open and which resolve, given what was seen.

    `signals` are this round's (events' and observations'); `observed` names the rules looked at
    this round, for which a (rule, key) not firing has cleared; rules not looked at (their look
    failed, or it was not their turn) keep their incidents as they are. `pending` says since when
    each firing (rule, key) without an incident has held (for windows of the HOLD sort); the
    returned one replaces it. `gone_apps` were destroyed: their incidents resolve.
    """
    looked = set(observed)
    gone = set(gone_apps)
    open_now = {(i.rule, i.key): i for i in incidents if i.open}
    firing: dict[tuple[str, str], Signal] = {}
    cleared: set[tuple[str, str]] = set()
    for s in signals:
        k = (s.rule, s.key)
        if s.firing:
            firing.setdefault(k, s)  # the first of a run says what opened it
            cleared.discard(k)
        else:
            cleared.add(k)
            firing.pop(k, None)
    # A (rule, key) on its way to opening waits on, unless its rule was looked at and it was not firing.
    out = Decisions(
        pending={k: v for k, v in pending.items() if k in firing or (k[0] not in looked and k not in cleared)}
    )
    for k, s in firing.items():
        rs = settings.get(s.rule)
        if rs is None or not rs.enabled or k in open_now or (s.app is not None and s.app in gone):
            out.pending.pop(k, None)
            continue
        since = out.pending.setdefault(k, now)
        hold = (rs.window or 0.0) if RULES[s.rule].window_is == Window.HOLD else 0.0
        if now - since >= hold:
            out.pending.pop(k)
            out.opened.append(Incident(new_id(), s.rule, s.key, s.app, s.message, now, s.value))
    for k, inc in open_now.items():
        rs = settings.get(inc.rule)
        why = ""
        if rs is None or not rs.enabled:
            why = "the rule was turned off"
        elif inc.app is not None and inc.app in gone:
            why = f"{inc.app} was destroyed"
        elif k in cleared or (inc.rule in looked and k not in firing):
            why = "the condition cleared"
        if why:
            inc.resolved_at, inc.resolution = now, why
            out.resolved.append(inc)
    return out


def signals_of(kind: str, app: str | None, message: str, data: Mapping[str, Any]) -> list[Signal]:
    """The signals a bus event gives (none for most kinds)."""
    rules, opens = EVENT_RULES.get(kind, ((), False))
    if not rules:
        return []
    if kind.startswith("cron."):
        key = f"{app}/{data.get('job', '')}"
    elif kind.startswith("platform."):
        key, app = "platform", None
    elif kind.startswith("addon."):
        key, app = f"addon:{app}", None  # an add-on is not an app: its incidents are the add-on's
    else:
        key = str(app)
    return [Signal(rule, key, opens, app, message) for rule in rules]


def prune(resolved: Sequence[Incident], keep: int) -> list[str]:
    """The ids of resolved incidents past the newest `keep`."""
    ordered = sorted(resolved, key=lambda i: (i.resolved_at or 0.0, i.id), reverse=True)
    return [i.id for i in ordered[keep:]]


# ---- the proxy's counters over a window ---------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """An app's counters from the proxy at one moment (cumulative since the proxy started)."""

    at: float
    requests: int
    errors: int  # 5xx answers
    buckets: tuple[tuple[float, int], ...]  # (upper bound s, cumulative count); the last bound is inf

    @classmethod
    def of(cls, at: float, metrics: Mapping[str, Any]) -> Sample:
        latency = metrics.get("latency_seconds") or {}
        buckets = tuple(
            (math.inf if bound == "+Inf" else float(bound), int(count)) for bound, count in latency.get("buckets", [])
        )
        return cls(at, int(metrics.get("requests", 0)), int((metrics.get("responses") or {}).get("5xx", 0)), buckets)


def over_window(samples: Sequence[Sample], now: float, window: float) -> tuple[int, int, float | None]:
    """(requests, 5xx answers, p95 latency s) between the sample at or before `now - window` (the
    oldest one if none is that old) and the newest; p95 is its bucket's upper bound (inf above the
    last), None without requests. Counters that went down (a new proxy) count from zero."""
    if not samples:
        return 0, 0, None
    last = samples[-1]
    base = samples[0]
    for s in samples:
        if s.at <= now - window:
            base = s
        else:
            break
    if base is last or last.requests < base.requests:
        base = Sample(base.at, 0, 0, ()) if last.requests < base.requests else last
    requests = last.requests - base.requests
    if requests <= 0:
        return 0, 0, None
    before = dict(base.buckets)
    target = math.ceil(0.95 * requests)
    p95 = math.inf
    for bound, count in last.buckets:
        if count - before.get(bound, 0) >= target:
            p95 = bound
            break
    return requests, last.errors - base.errors, p95


def rate_signals(app: str, samples: Sequence[Sample], now: float, settings: Mapping[str, RuleSettings]) -> list[Signal]:
    """The http_5xx and latency_p95 signals of one app (only the firing ones)."""
    out = []
    s5, sp = settings["http_5xx"], settings["latency_p95"]
    if s5.enabled and s5.window and s5.threshold is not None:
        requests, errors, _ = over_window(samples, now, s5.window)
        share = 100.0 * errors / requests if requests else 0.0
        if requests >= MIN_REQUESTS and share > s5.threshold:
            said = f"{app}: {share:.0f}% of {requests} responses were 5xx over the last {s5.window:g} s"
            out.append(Signal("http_5xx", app, True, app, f"{said} (threshold {s5.threshold:g}%)", round(share, 1)))
    if sp.enabled and sp.window and sp.threshold is not None:
        requests, _, p95 = over_window(samples, now, sp.window)
        if requests >= MIN_REQUESTS and p95 is not None and p95 > sp.threshold:
            shown = (
                f"over {max((b for b, _ in samples[-1].buckets if b != math.inf), default=0.0):g} s"
                if p95 == math.inf
                else (f"up to {p95:g} s")
            )
            out.append(
                Signal(
                    "latency_p95",
                    app,
                    True,
                    app,
                    f"{app}: p95 latency {shown} over the last "
                    f"{sp.window:g} s ({requests} requests; threshold {sp.threshold:g} s)",
                    None if p95 == math.inf else p95,
                )
            )
    return out


def trim(samples: list[Sample], now: float, keep: float) -> None:
    """Drop samples no window needs: all but one older than `keep` seconds."""
    while len(samples) > 1 and samples[1].at <= now - keep:
        samples.pop(0)


# ---- what a notification says -------------------------------------------------------------------


def subject(incident: Incident) -> str:
    state = "ALERT" if incident.open else "RESOLVED"
    where = incident.app or incident.key
    return f"[lbsolo] {state} {where}: {incident.title}"


def body(incident: Incident, when: Callable[[float], str]) -> str:
    lines = [
        f"Rule: {incident.rule} ({incident.title})",
        f"App: {incident.app}" if incident.app else f"Subject: {incident.key}",
        f"What: {incident.message}",
        f"Opened: {when(incident.opened_at)}",
    ]
    if not incident.open:
        lines.append(f"Resolved: {when(incident.resolved_at or 0.0)} ({incident.resolution})")
    lines += [f"Incident: {incident.id}", "", "See: lbsolo alerts, or the web UI's Alerts page."]
    return "\n".join(lines) + "\n"
