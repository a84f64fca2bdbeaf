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
from lbsolo.addon_kinds import kind_of
from lbsolo.api.web_session import sparkline, sse_event
from lbsolo.core import Platform
from lbsolo.errors import LbsoloError, NotFound
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


def only_apps(shown: dict[str, Any], apps: tuple[str, ...]) -> dict[str, Any]:
    """The dashboard of a token limited to these apps (none: every app): the rest left out."""
    if not apps:
        return shown
    keep = set(apps)
    return {
        **shown,
        "apps": [a for a in shown["apps"] if a["name"] in keep],
        "recent": [r for r in shown["recent"] if r.get("app") in keep],
        "events": [e for e in shown["events"] if e.get("app") in keep],
        "graphs": {name: g for name, g in shown["graphs"].items() if name in keep},
    }


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
        "certs": await domain_certs(platform, app.get("domains") or []),
        "acme_on": getattr(platform, "certs", None) is not None,
        "addons": [a for a in await addons(platform) if name in a["attachments"]],
        "addons_on": has_addons(platform),
        "kinds": ADDON_KINDS,
        "cron": await platform.cron.listing(name),
        "cron_runs": (await platform.cron.runs(name))[:10],
        "drains": await drains.listing(name) if (drains := getattr(platform, "drains", None)) is not None else [],
        "previews": await shown.describe(name) if (shown := getattr(platform, "previews", None)) is not None else {},
    }


async def domain_certs(platform: Platform, domains: list[str]) -> dict[str, dict[str, Any]]:
    """The certificate of each custom domain (host part) of an app, as `lbsolo certs:info` shows it;
    empty while ACME is off."""
    certs = getattr(platform, "certs", None)
    if certs is None or not certs.enabled:
        return {}
    out = {}
    for host in dict.fromkeys(d.split("/", 1)[0].lower() for d in domains):
        try:
            out[host] = await certs.info(host)
        except NotFound:
            continue
    return out


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


JOB_RUNNING = {
    "backup": "backing up",
    "restore": "restoring",
    "attach": "attaching to {app}",
    "detach": "detaching from {app}",
    "promote": "making it {app}'s primary URL",
    "rotate": "rotating its credentials",
    "upgrade": "upgrading to {version}",
}


def job_view(
    what: str, result: dict[str, Any] | None, started: float, detail: dict[str, str] | None = None
) -> dict[str, Any]:
    """A job the UI started for an add-on (a backup, a restore, or one of the verbs making app
    releases), as the page shows it: running, or what came of it. `detail` names its app or version."""
    detail = detail or {}
    if not result:
        text = JOB_RUNNING.get(what, what).format_map({"app": "the app", "version": "?", **detail})
        return {"what": what, "running": True, "ok": None, "started": started, "text": f"{text}…"}
    if not result.get("ok"):
        message = (result.get("error") or {}).get("message", "unknown error")
        return {"what": what, "running": False, "ok": False, "started": started, "text": f"{what} failed: {message}"}
    return {"what": what, "running": False, "ok": True, "started": started, "text": job_done_text(what, result, detail)}


def job_done_text(what: str, result: dict[str, Any], detail: dict[str, str]) -> str:
    """What a job that went well did, in one line."""
    release = f": {result['release']} is live" if result.get("release") else ""
    if what == "backup":
        return f"backup {(result.get('backup') or {}).get('id', '?')} made and verified"
    if what == "restore":
        return f"restored from {(result.get('backup') or {}).get('id', '?')}"
    if what == "attach":
        var = f" as {detail['var']}" if detail.get("var") else ""
        return f"attached to {detail.get('app')}{var}{release}"
    if what == "detach":
        return f"detached from {detail.get('app')}{release}"
    if what == "promote":
        return f"now {detail.get('app')}'s primary URL{release}"
    if what == "rotate":
        moved = result.get("apps") or []
        return "credentials rotated" + (f" ({', '.join(moved)} moved onto them)" if moved else "")
    if what == "upgrade" and result.get("new"):
        moved = result.get("moved") or []
        apps = f", {', '.join(moved)} moved to it" if moved else ""
        return f"upgraded to {result.get('version')} through a dump into {result['new']}{apps}; this one is retired"
    if what == "upgrade":
        return f"upgraded to {result.get('version')} in place"
    return f"{what} done"


def addon_actions(shown: list[dict[str, Any]], apps: list[str]) -> dict[str, dict[str, Any]]:
    """Per add-on, what its forms offer: the apps it could be attached to, its kind's primary var
    (Promote is offered where an app holds it under another), and whether it is retired or in an
    upgrade (a retired one offers Destroy only)."""
    out: dict[str, dict[str, Any]] = {}
    for a in shown:
        upgrade = a.get("upgrade") or {}
        retired = a.get("status") == "retired"
        if upgrade.get("step"):
            busy = f"being upgraded to {upgrade.get('to')} ({upgrade.get('step')}): other changes wait until it ends"
        elif upgrade.get("from"):
            busy = f"being made by {upgrade['from']}'s upgrade: other changes wait until it ends"
        else:
            busy = None
        out[a["name"]] = {
            "attachable": [app for app in apps if app not in (a.get("attachments") or {})],
            "primary": kind_of(a["kind"]).url_var if a.get("kind") in ADDON_KINDS else None,
            "retired": retired,
            "successor": upgrade.get("to") if retired else None,
            "busy": busy,
            "target": target_view(a.get("backup_target") or {}),
        }
    return out


def target_view(target: dict[str, Any]) -> dict[str, Any] | None:
    """The bucket an add-on's backups also go to, from its record as the API shows it (credentials
    masked there already); None: local only."""
    if not target.get("bucket"):
        return None
    url = f"s3://{target['bucket']}/{target.get('prefix') or ''}".rstrip("/")
    keep = ("endpoint", "region", "access_key_id", "secret_access_key", "encrypt", "key_id")
    return {"url": url, **{k: target.get(k) for k in keep}}
