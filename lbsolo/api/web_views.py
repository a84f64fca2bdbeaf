"""What the web UI's pages show: their data gathered from the core, and the live log stream.

Each function reads what one page needs from core.Platform (and the event bus, webhook
notifier and stats sampler, which may be absent) and returns plain data for its template; the
log stream yields server-sent events. lbsolo.api.web routes, checks sessions and renders; this
module must not import fastapi or jinja2, change anything, or import the engine, the state
store or the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from lbsolo.addon_dumps import schedule_interval
from lbsolo.api.web_session import sparkline, sse_event
from lbsolo.core import Platform
from lbsolo.errors import LbsoloError
from lbsolo.models import WEB
from lbsolo.run_logs import LogLine

if TYPE_CHECKING:
    from lbsolo.events import EventBus
    from lbsolo.notify import WebhookNotifier
    from lbsolo.run_stats import StatsSampler

LOG_BACKLOG = 200
KEEPALIVE_SECONDS = 15.0
APP_STATUSES = ("running", "deploying", "new", "down", "crashloop", "scaled-down")  # core's _describe
ADDON_KINDS = ("postgres", "redis", "mariadb")  # addon_kinds.KINDS, in the order the form offers them
BACKUPS_SHOWN = 20  # newest backups listed per add-on; the CLI lists them all
BACKUP_GRACE = 300.0  # seconds a scheduled backup may run late (the scheduler looks every 30 s) before it is red
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key for names as people read them: s2 before s10, a digit run compared as a number."""
    return tuple(
        (1, int(part), part) if part.isdigit() else (0, 0, part.lower()) for part in _DIGITS.split(name) if part
    )


def graphs(sampler: StatsSampler | None, name: str, width: int = 240, height: int = 40) -> list[dict[str, Any]]:
    """Last 10 minutes of CPU, memory and requests/s as SVG polyline points (empty before the first sample)."""
    out = []
    for metric, label, unit in (("cpu", "CPU", "%"), ("mem", "Memory", "MB"), ("rps", "Requests", "/s")):
        series = sampler.series(name, metric, "10m") if sampler is not None else []
        points = [(t, v / 1e6 if metric == "mem" else v) for t, v in series]
        out.append({"metric": metric, "label": label, "unit": unit, **sparkline(points, width, height)})
    return out


async def dashboard(platform: Platform, bus: EventBus | None, sampler: StatsSampler | None) -> dict[str, Any]:
    """Every app with its small graphs, the ten latest releases, the latest events."""
    apps = sorted(await platform.list_apps(), key=lambda a: natural_key(a["name"]))
    recent = await platform.recent_releases(10)  # one read, whatever the number of apps
    events = [e.to_dict() for e in reversed(bus.recent(20))] if bus is not None else []
    small = {a["name"]: graphs(sampler, a["name"], 80, 20) for a in apps}
    return {"apps": apps, "recent": recent, "events": events, "graphs": small, "statuses": APP_STATUSES}


async def app_page(platform: Platform, sampler: StatsSampler | None, name: str) -> dict[str, Any]:
    """One app: settings, releases newest first, replicas, HTTPS state, graphs. LbsoloError if unknown."""
    app = await platform.get_app(name)
    releases = await platform.releases(name)
    replicas = [r.to_dict() for r in await platform.replicas(name)]
    https = await platform.https(name)
    return {
        "graphs": graphs(sampler, name),
        "app": app,
        "releases": list(reversed(releases)),
        "current": int(app["release"][1:]) if app["release"] else None,
        "replicas": replicas,
        "web": app["formation"].get(WEB, 0),
        "https": https,
        "addons": [a for a in await addons(platform) if name in a["attachments"]],
        "addons_on": has_addons(platform),
        "kinds": ADDON_KINDS,
    }


def has_addons(platform: Platform) -> bool:
    """Whether the daemon runs add-ons (a Platform without the engine's Services part has none)."""
    return getattr(platform, "addons", None) is not None


async def addons(platform: Platform) -> list[dict[str, Any]]:
    """Every add-on as the API shows it (no password), names sorted naturally; none without add-on support."""
    if not has_addons(platform) or platform.addons is None:
        return []
    return sorted(await platform.addons.list(), key=lambda a: natural_key(a["name"]))


async def addon_backups(platform: Platform, names: list[str], now: float) -> dict[str, dict[str, Any]]:
    """Each add-on's backups, schedule and next run as the Add-ons page shows them, with the reason
    for a red mark (`alarm`); an add-on whose listing fails gets its `error`. Empty without backups."""
    backups = getattr(platform, "backups", None)
    if backups is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            listing = await backups.list(name)
        except LbsoloError as e:
            out[name] = {"error": e.message, "backups": [], "more": 0, "alarm": None}
            continue
        rows = [{**b, "size_text": size_text(b.get("size") or 0)} for b in listing["backups"]]
        out[name] = {
            **listing,
            "backups": rows[:BACKUPS_SHOWN],
            "more": max(0, len(rows) - BACKUPS_SHOWN),
            "alarm": backup_alarm(listing, now),
            "error": None,
        }
    return out


def backup_alarm(listing: dict[str, Any], now: float) -> str | None:
    """Why an add-on's backups need a look, or None: its newest backup failed verification, or it
    has a schedule and no backup made within one interval of it (or its next run is long overdue)."""
    backups = listing.get("backups") or []
    newest = max(backups, key=lambda b: float(b.get("created") or 0), default=None)
    if newest is not None and newest.get("verified") is False:
        why = newest.get("verify_error") or "no reason given"
        return f"the last backup ({newest['id']}) failed verification: {why}"
    schedule, due = listing.get("schedule"), listing.get("next_run")
    if not schedule:
        return None
    if due is not None and now - float(due) > BACKUP_GRACE:
        return "the scheduled backup is overdue: it has not run"
    if newest is None:
        return None  # a schedule just set, no backup yet: its first run is not late
    interval = schedule_interval(schedule, float(newest.get("created") or 0))
    if now - float(newest.get("created") or 0) > interval + BACKUP_GRACE:
        return f"scheduled, but no backup within its interval ({duration_text(interval)})"
    return None


def size_text(n: float) -> str:
    """Bytes as people read them: 512 B, 1.5 KB, 2.0 MB."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1024
        if n < 1024 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


def duration_text(seconds: float) -> str:
    """A schedule's interval in the largest unit that fits: 15 min, 6 h, 1 day, 7 days."""
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if unit == 'day' and count != 1 else ''}"
    return f"{round(seconds)} s"


def webhooks(notifier: WebhookNotifier | None) -> dict[str, Any]:
    """Outbound webhooks, each with its 20 latest delivery attempts."""
    hooks = []
    for hook in notifier.webhooks() if notifier is not None else []:
        attempts = [d.to_dict() for d in reversed(notifier.deliveries(hook.id))][:20]
        hooks.append({**hook.public(), "deliveries": attempts})
    return {"hooks": hooks}


def last_event_id(raw: str | None) -> float | None:
    """The time of the last line a reconnecting browser saw (its Last-Event-ID), if it sent one."""
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def _key(line: LogLine) -> tuple[float, str, str]:
    return (line.ts, line.replica, line.line)


async def log_events(platform: Platform, name: str, since: float | None) -> AsyncIterator[bytes]:
    """Recent lines then live ones, as SSE; the event id is the line's time, for reconnects."""
    queue: asyncio.Queue[LogLine] = asyncio.Queue(maxsize=10_000)

    async def pump() -> None:
        async for line in platform.follow_logs(name):
            if not queue.full():  # a reader this far behind loses lines rather than memory
                queue.put_nowait(line)

    # Follow first, then read the backlog: a line landing in between shows up in both; drop the copy.
    follower = asyncio.create_task(pump(), name=f"ui-logs-{name}")
    try:
        await asyncio.sleep(0)
        # Strictly after the last line a reconnecting browser saw (ids are the lines' timestamps).
        recent = await platform.read_logs(name, tail=LOG_BACKLOG, since=None if since is None else since + 1e-6)
        seen = {_key(ln) for ln in recent}
        newest = recent[-1].ts if recent else 0.0
        for line in recent:
            yield sse_event(line.to_dict(), repr(line.ts))
        while True:
            try:
                line = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if line.ts <= newest and _key(line) in seen:
                continue
            yield sse_event(line.to_dict(), repr(line.ts))
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, LbsoloError):
            await follower


def job_view(what: str, result: dict[str, Any] | None, started: float) -> dict[str, Any]:
    """A backup or restore the UI started, as its add-on's section shows it: running, or what came of it."""
    if not result:
        verb = {"backup": "backing up", "restore": "restoring"}.get(what, what)
        return {"what": what, "running": True, "ok": None, "started": started, "text": f"{verb}…"}
    if not result.get("ok"):
        message = (result.get("error") or {}).get("message", "unknown error")
        return {"what": what, "running": False, "ok": False, "started": started, "text": f"{what} failed: {message}"}
    backup = (result.get("backup") or {}).get("id", "?")
    text = f"backup {backup} made and verified" if what == "backup" else f"restored from {backup}"
    return {"what": what, "running": False, "ok": True, "started": started, "text": text}
