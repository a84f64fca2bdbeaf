"""Scheduled jobs, the pure part: what a job is, what a run records, and when a job is due.

An app's jobs come from two places: the `[[cron]]` entries of its lbsolo.toml, carried by each
release (so a redeploy without an entry removes it, a rollback brings it back), and `cron:add`
(kept in the state). A job is due at its schedule's first time after its base: the due time of
its last scheduled, missed or skipped run, or else when the job appeared. Several due times
passed at once, or one passed long ago, mean runs were missed (the daemon was down): the latest
runs once, if within the grace period, else it is only recorded and reported.

The cron expressions are read by croniter through addon_dumps (one parser for the backups'
schedules and these). No I/O here: the clock is an argument.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, tzinfo
from enum import StrEnum
from typing import Any

from lbsolo.addon_dumps import check_schedule, next_run, previous_run
from lbsolo.errors import InvalidInput

MAX_JOBS = 50  # per app, toml and cli together
KEEP_RUNS = 50  # per job: older runs (and their logs) are forgotten
MAX_COMMAND = 4096
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class Source(StrEnum):
    TOML = "toml"  # a [[cron]] entry of lbsolo.toml, carried by the release
    CLI = "cli"  # cron:add (the API, the UI)


class Overlap(StrEnum):
    SKIP = "skip"  # a run due while the previous one still runs is skipped (and recorded so)
    ALLOW = "allow"


class Trigger(StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"  # cron:run
    MISSED = "missed"  # due while the daemon was down


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a non-zero exit, or it could not start
    TIMEOUT = "timeout"  # killed after the cron timeout
    SKIPPED = "skipped"  # the previous run still ran (overlap skip)
    NOT_RUN = "not_run"  # missed beyond the grace period: reported, not run


@dataclass(frozen=True)
class CronJob:
    app: str
    id: str
    schedule: str
    command: str
    name: str | None = None
    source: Source = Source.CLI
    overlap: Overlap = Overlap.SKIP
    created_at: float = 0.0  # cli jobs: when added (toml jobs: the release that brought them)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["source"], d["overlap"] = str(self.source), str(self.overlap)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CronJob:
        return cls(
            app=d["app"],
            id=d["id"],
            schedule=d["schedule"],
            command=d["command"],
            name=d.get("name"),
            source=Source(d.get("source", "cli")),
            overlap=Overlap(d.get("overlap", "skip")),
            created_at=float(d.get("created_at") or 0.0),
        )

    def matches(self, ref: str) -> bool:
        return ref in (self.id, self.name)


@dataclass
class CronRun:
    id: str
    app: str
    job: str
    trigger: Trigger
    status: RunStatus
    started: float
    due: float | None = None  # the schedule's time it stands for (None: manual)
    finished: float | None = None
    exit_code: int | None = None
    error: str | None = None
    command: str = ""

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else round(self.finished - self.started, 3)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trigger"], d["status"], d["duration"] = str(self.trigger), str(self.status), self.duration
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CronRun:
        return cls(
            id=d["id"],
            app=d["app"],
            job=d["job"],
            trigger=Trigger(d["trigger"]),
            status=RunStatus(d["status"]),
            started=float(d["started"]),
            due=None if d.get("due") is None else float(d["due"]),
            finished=None if d.get("finished") is None else float(d["finished"]),
            exit_code=d.get("exit_code"),
            error=d.get("error"),
            command=d.get("command", ""),
        )


# ---- checks (each a one-line error, before anything changes)


def check_command(command: object) -> str:
    text = command.strip() if isinstance(command, str) else ""
    if not text:
        raise InvalidInput("a job's command cannot be empty")
    if len(text) > MAX_COMMAND or "\0" in text:
        raise InvalidInput(f"a job's command must be under {MAX_COMMAND} characters, without NUL")
    return text


def check_name(name: object) -> str | None:
    if name is None or name == "":
        return None
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(f"invalid job name {name!r}: lowercase letters, digits, - and _, at most 40")
    return name


def check_overlap(overlap: object) -> Overlap:
    try:
        return Overlap(str(overlap or "skip"))
    except ValueError:
        raise InvalidInput(f"invalid overlap {overlap!r}: skip or allow") from None


def time_zone(name: str) -> tzinfo:
    """The time zone of a setting (an IANA name such as Europe/Paris; UTC by default)."""
    if not name or name.upper() == "UTC":
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {name!r} (LBSOLO_CRON_TZ): an IANA name such as Europe/Paris") from None


def toml_entries(value: object) -> list[dict[str, str]]:
    """The `[[cron]]` entries of an lbsolo.toml, checked; a bad one is named by its number."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput("cron in lbsolo.toml must be [[cron]] entries (an array of tables)")
    entries: list[dict[str, str]] = []
    for n, raw in enumerate(value, 1):
        where = f"lbsolo.toml [[cron]] entry {n}"
        if not isinstance(raw, dict):
            raise InvalidInput(f"{where} must be a table with schedule and command")
        unknown = set(raw) - {"schedule", "command", "name", "overlap"}
        if unknown:
            raise InvalidInput(f"{where}: unknown key {sorted(unknown)[0]!r} (schedule, command, name, overlap)")
        try:
            entry = {"schedule": check_schedule(raw.get("schedule", "")), "command": check_command(raw.get("command"))}
            if name := check_name(raw.get("name")):
                entry["name"] = name
            if "overlap" in raw:
                entry["overlap"] = str(check_overlap(raw["overlap"]))
        except InvalidInput as e:
            raise InvalidInput(f"{where}: {e.message}") from None
        entries.append(entry)
    check_unique(toml_jobs("-", entries, 0.0), where="lbsolo.toml [[cron]]")
    if len(entries) > MAX_JOBS:
        raise InvalidInput(f"lbsolo.toml has {len(entries)} [[cron]] entries; at most {MAX_JOBS} per app")
    return entries


def toml_job_id(entry: dict[str, str]) -> str:
    """A toml job's id: its name, or one made from its schedule and command (stable across deploys)."""
    if entry.get("name"):
        return entry["name"]
    digest = hashlib.sha256(f"{entry['schedule']}\0{entry['command']}".encode()).hexdigest()
    return "t" + digest[:7]


def toml_jobs(app: str, entries: Iterable[dict[str, Any]], since: float) -> list[CronJob]:
    return [
        CronJob(
            app=app,
            id=toml_job_id(e),
            schedule=e["schedule"],
            command=e["command"],
            name=e.get("name"),
            source=Source.TOML,
            overlap=Overlap(e.get("overlap", "skip")),
            created_at=since,
        )
        for e in entries
    ]


def check_unique(jobs: Sequence[CronJob], where: str) -> None:
    seen: set[str] = set()
    for job in jobs:
        for ref in {job.id, job.name} - {None}:
            if ref in seen:
                raise InvalidInput(f"{where}: two jobs are called {ref!r}")
            seen.add(ref)  # type: ignore[arg-type]


def find(jobs: Iterable[CronJob], app: str, ref: str) -> CronJob:
    for job in jobs:
        if job.matches(ref):
            return job
    raise InvalidInput(f"{app} has no job {ref!r} (see: lbsolo cron {app})")


# ---- when a job is due


@dataclass(frozen=True)
class Due:
    """A job's due run: at `at`, scheduled or missed; `run` False: too old to run, only reported."""

    job: CronJob
    at: float
    trigger: Trigger
    run: bool = True
    missed: int = 0  # how many due times went by without a run (at least, when many)


def base_of(job: CronJob, runs: Iterable[CronRun]) -> float:
    """What the job's next due time counts from: its last non-manual run's due time, or its start."""
    dues = [r.due for r in runs if r.job == job.id and r.trigger != Trigger.MANUAL and r.due is not None]
    return max([job.created_at, *dues])


def decide(job: CronJob, base: float, now: float, tz: tzinfo, *, grace: float, late: float) -> Due | None:
    """Whether `job` is due at `now`, counting from `base`: None, on time, or missed (within grace or not).

    `late`: how late a due time may be found and still count as on time (the scheduler's poll).
    """
    first = next_run(job.schedule, base, tz)
    if first > now:
        return None
    latest = previous_run(job.schedule, now, tz)
    if latest == first and now - latest <= late:
        return Due(job, latest, Trigger.SCHEDULED)
    missed = 1 if latest == first else 2  # at least: counting them all could take long (every minute, a month)
    return Due(job, latest, Trigger.MISSED, run=now - latest <= grace, missed=missed)


def next_due(job: CronJob, base: float, now: float, tz: tzinfo) -> float:
    """When the job runs next as seen at `now` (a due time already passed: now)."""
    return max(next_run(job.schedule, base, tz), min(now, next_run(job.schedule, now, tz)))


class Action(StrEnum):
    RUN = "run"
    SKIP = "skip"  # overlap: the previous run still runs
    REPORT = "report"  # missed beyond grace: recorded and reported, not run


def action(due: Due, running: bool) -> Action:
    if not due.run:
        return Action.REPORT
    if running and due.job.overlap == Overlap.SKIP:
        return Action.SKIP
    return Action.RUN


def to_forget(runs: Iterable[CronRun], keep: int = KEEP_RUNS) -> list[str]:
    """The ids of a job's runs beyond the newest `keep` (running ones stay)."""
    ended = sorted((r for r in runs if r.status != RunStatus.RUNNING), key=lambda r: r.started, reverse=True)
    return [r.id for r in ended[keep:]]


@dataclass
class Releases:
    """What toml_since needs of an app's releases: (created_at, [[cron]] entries), newest first."""

    newest_first: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)


def toml_since(job_id: str, releases: Releases) -> float:
    """When a toml job appeared: the oldest release of the unbroken run of newest ones carrying it."""
    since = 0.0
    for created, entries in releases.newest_first:
        if not any(toml_job_id(e) == job_id for e in entries):
            break
        since = created
    return since
