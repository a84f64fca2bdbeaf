"""Scheduled jobs: the use cases (list, add, remove, run now, history) and the daemon's scheduler.

An app's jobs are its current release's lbsolo.toml `[[cron]]` entries and those added with
cron:add (in the state). Each run is `lbsolo run`'s one-off container (Platform.run_command,
handed in): the current release with its config, labelled as a one-off, removed after; one past
the cron timeout is stopped. Every run is recorded (`cron_runs`, the newest KEEP_RUNS per job),
its output kept under $LBSOLO_HOME/logs/cron/<app>/<run>.log, and its end raised as an event
(cron.succeeded, cron.failed; cron.missed for runs the daemon was down for). The decisions (what
is due, missed, skipped) are cron_plan's. It must not change apps or releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from lbsolo import cron_plan as plan
from lbsolo.addon_dumps import check_schedule
from lbsolo.build import LogBuffer
from lbsolo.core_context import CoreContext
from lbsolo.cron_plan import Action, CronJob, CronRun, Due, RunStatus, Trigger
from lbsolo.errors import InvalidInput, LbsoloError, NotFound
from lbsolo.events import Event, EventKind

log = logging.getLogger("lbsolo.core")

CRON_SUCCEEDED = "cron.succeeded"  # event kinds (EventKind's are plain strings)
CRON_FAILED = "cron.failed"
CRON_MISSED = "cron.missed"

RunCommand = Callable[..., Awaitable[int]]  # Platform.run_command(app, command, out, timeout=, container=)


class CronJobs:
    """The apps' scheduled jobs, over the core's context and `lbsolo run`'s code path."""

    def __init__(self, ctx: CoreContext, run: RunCommand) -> None:
        self.ctx = ctx
        self.run = run
        s = ctx.settings
        self.tz = plan.time_zone(s.cron_tz)
        self.offset = s.cron_clock_offset
        self.late = 2 * s.cron_poll + 5  # a due time found later than this was missed, not just late
        self.running: dict[tuple[str, str], int] = {}  # (app, job id) -> runs under way
        self.tasks: set[asyncio.Task[Any]] = set()  # scheduled runs under way
        self._changed = asyncio.Event()  # a job added or removed, a deploy: look again now

    def clock(self) -> float:
        return time.time() + self.offset

    @property
    def log_dir(self) -> Path:
        return self.ctx.settings.logs_dir / "cron"

    # ---- the jobs

    async def jobs(self, app_name: str) -> list[CronJob]:
        """The app's jobs: its current release's lbsolo.toml entries, then cron:add's."""
        app = await self.ctx.app(app_name)  # NotFound for an unknown app
        toml: list[CronJob] = []
        if app.release is not None:
            releases = await asyncio.to_thread(self.ctx.state.list_releases, app_name)
            history = plan.Releases(
                [(r.created_at, r.cron) for r in sorted(releases, key=lambda r: r.version, reverse=True)
                 if r.version <= app.release]
            )  # fmt: skip
            current = next((r for r in releases if r.version == app.release), None)
            entries = current.cron if current is not None else []
            toml = [
                replace(j, created_at=plan.toml_since(j.id, history)) for j in plan.toml_jobs(app_name, entries, 0.0)
            ]
        cli = await asyncio.to_thread(self.ctx.state.list_cron_jobs, app_name)
        return toml + cli

    async def job(self, app: str, ref: str) -> CronJob:
        jobs = await self.jobs(app)
        try:
            return plan.find(jobs, app, ref)
        except InvalidInput as e:
            raise NotFound(e.message) from None

    async def listing(self, app: str) -> list[dict[str, Any]]:
        """Each job with its next run (in the time zone setting) and its last run."""
        jobs = await self.jobs(app)
        runs = await asyncio.to_thread(self.ctx.state.list_cron_runs, app)
        now = self.clock()
        out = []
        for job in jobs:
            mine = [r for r in runs if r.job == job.id]
            last = max(mine, key=lambda r: r.started, default=None)
            nxt = plan.next_due(job, plan.base_of(job, mine), now, self.tz)
            out.append(
                {
                    **job.to_dict(),
                    "next_run": nxt,
                    "next_run_local": datetime.fromtimestamp(nxt, self.tz).strftime("%Y-%m-%d %H:%M %Z"),
                    "last_run": last.to_dict() if last else None,
                }
            )
        return out

    async def add(
        self, app: str, schedule: str, command: str, name: str | None = None, overlap: str | None = None
    ) -> dict[str, Any]:
        """A job from cron:add; refused whole (nothing saved) when anything is wrong."""
        schedule = check_schedule(schedule)
        command = plan.check_command(command)
        name = plan.check_name(name)
        policy = plan.check_overlap(overlap)
        async with self.ctx.lock(app):
            jobs = await self.jobs(app)
            if len(jobs) >= plan.MAX_JOBS:
                raise InvalidInput(f"{app} has {len(jobs)} jobs already; at most {plan.MAX_JOBS} per app")
            job_id = "c" + secrets.token_hex(3)
            while any(j.matches(job_id) for j in jobs):
                job_id = "c" + secrets.token_hex(3)
            job = CronJob(app, job_id, schedule, command, name, plan.Source.CLI, policy, round(self.clock(), 3))
            plan.check_unique([*jobs, job], where=app)
            await asyncio.to_thread(self.ctx.state.add_cron_job, job)
        self._changed.set()
        return next(j for j in await self.listing(app) if j["id"] == job.id)

    async def remove(self, app: str, ref: str) -> str:
        job = await self.job(app, ref)
        if job.source == plan.Source.TOML:
            raise InvalidInput(
                f"job {ref!r} comes from {app}'s lbsolo.toml: remove its [[cron]] entry and deploy again"
            )
        async with self.ctx.lock(app):
            await asyncio.to_thread(self.ctx.state.delete_cron_job, app, job.id)
        self._changed.set()
        return job.id

    def changed(self) -> None:
        """Look at the schedules again now."""
        self._changed.set()

    def on_event(self, event: Event) -> None:
        """A bus listener: a new release may bring other [[cron]] entries, a destroyed app takes its jobs."""
        if event.kind in (EventKind.RELEASE_CREATED, EventKind.DEPLOY_SUCCEEDED, EventKind.APP_DESTROYED):
            self._changed.set()

    # ---- history

    async def runs(self, app: str, ref: str | None = None) -> list[dict[str, Any]]:
        await self.ctx.app(app)
        job_id = (await self.job(app, ref)).id if ref else None
        runs = await asyncio.to_thread(self.ctx.state.list_cron_runs, app, job_id)
        return [r.to_dict() for r in reversed(runs)]

    async def run_log(self, app: str, run_id: str) -> list[str]:
        await self.ctx.app(app)
        runs = await asyncio.to_thread(self.ctx.state.list_cron_runs, app)
        run = next((r for r in runs if r.id == run_id or (len(run_id) >= 4 and r.id.startswith(run_id))), None)
        if run is None:
            raise NotFound(f"{app} has no cron run {run_id!r} (see: lbsolo cron:runs {app})")
        path = self.log_dir / app / f"{run.id}.log"
        if not path.exists():
            return [] if run.status != RunStatus.RUNNING else [f"(run {run.id} is running; its log is kept at its end)"]
        return (await asyncio.to_thread(path.read_text, encoding="utf-8", errors="replace")).splitlines()

    # ---- runs

    async def run_now(self, app: str, ref: str, out: LogBuffer) -> int:
        """cron:run: the job now, whatever its schedule and overlap; its exit code."""
        job = await self.job(app, ref)
        run = await self._execute(job, await self._start(job, Trigger.MANUAL, None), out)
        if run.exit_code is None:  # it could not start, or was stopped at its timeout
            raise LbsoloError(run.error or "the run could not start")
        return run.exit_code

    async def _record(self, job: CronJob, trigger: Trigger, status: RunStatus, due: float | None) -> CronRun:
        run = _new_run(job, trigger, status, due)
        if status != RunStatus.RUNNING:
            run.finished = run.started
        await asyncio.to_thread(self.ctx.state.save_cron_run, run)
        return run

    async def _start(self, job: CronJob, trigger: Trigger, due: float | None) -> CronRun:
        """A run's record, saved (so the job's next due time counts from it), and the job counted as running."""
        key = (job.app, job.id)
        self.running[key] = self.running.get(key, 0) + 1
        try:
            return await self._record(job, trigger, RunStatus.RUNNING, due)
        except BaseException:
            self._done(key)
            raise

    def _done(self, key: tuple[str, str]) -> None:
        self.running[key] -= 1
        if not self.running[key]:
            del self.running[key]

    async def _execute(self, job: CronJob, run: CronRun, out: LogBuffer | None = None) -> CronRun:
        """Run a started run to its end (or its timeout), then record, keep its output, tell."""
        tap = self.ctx.log_tap(job.app, f"cron.{job.name or job.id}")
        out = out if out is not None else LogBuffer(on_line=tap)
        out.on_line = out.on_line or tap  # cron:run's buffer (the API's) goes to the drains too
        container = f"lbsolo-{self.ctx.engine.instance}-cron-{run.id}"
        timeout = self.ctx.settings.cron_timeout
        try:
            work = asyncio.ensure_future(self.run(job.app, job.command, out, timeout=timeout + 60, container=container))
            try:
                done, _ = await asyncio.wait({work}, timeout=timeout)
                if not done:
                    run.status = RunStatus.TIMEOUT
                    run.error = f"still running after {timeout:g}s: stopped"
                    out.append(f"[lbsolo: {run.error}]")
                    await asyncio.to_thread(self.ctx.engine.stop_and_remove, container, 2)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(work, 30)
                else:
                    run.exit_code = work.result()
                    run.status = RunStatus.SUCCEEDED if run.exit_code == 0 else RunStatus.FAILED
            except LbsoloError as e:
                run.status, run.error = RunStatus.FAILED, f"could not run: {e.message}"
                out.append(f"[lbsolo: {run.error}]")
            except asyncio.CancelledError:
                work.cancel()
                run.status, run.error = RunStatus.FAILED, "the daemon stopped during the run"
                run.finished = round(time.time(), 3)
                with contextlib.suppress(Exception):
                    await asyncio.shield(asyncio.to_thread(self.ctx.state.save_cron_run, run))
                raise
            run.finished = round(time.time(), 3)
            out.close()
            await asyncio.to_thread(self._store_log, run, out.lines)
            await asyncio.to_thread(self.ctx.state.save_cron_run, run)
            await self._forget(job)
            self._emit(job, run)
            return run
        finally:
            out.close()
            self._done((job.app, job.id))

    def _store_log(self, run: CronRun, lines: list[str]) -> None:
        directory = self.log_dir / run.app
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"{run.id}.log").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        except OSError as e:  # a full disk: the run's outcome is recorded, only its output is lost
            log.warning("cannot store the log of cron run %s: %s", run.id, e.strerror or e)

    async def _forget(self, job: CronJob) -> None:
        runs = await asyncio.to_thread(self.ctx.state.list_cron_runs, job.app, job.id)
        gone = plan.to_forget(runs)
        if gone:
            await asyncio.to_thread(self.ctx.state.delete_cron_runs, gone)
            for run_id in gone:
                (self.log_dir / job.app / f"{run_id}.log").unlink(missing_ok=True)

    def _emit(self, job: CronJob, run: CronRun) -> None:
        what = f"cron job {job.name or job.id} ({job.command[:60]})"
        data = {"job": job.id, "run": run.id, "trigger": str(run.trigger), "exit_code": run.exit_code}
        if run.status == RunStatus.SUCCEEDED:
            self.ctx.bus.emit(CRON_SUCCEEDED, job.app, f"{what} succeeded in {run.duration}s", **data)
        else:
            reason = run.error or f"exit code {run.exit_code}"
            self.ctx.bus.emit(CRON_FAILED, job.app, f"{what} failed: {reason}", **data, error=run.error)

    # ---- the scheduler

    async def tick(self) -> float:
        """One look at every app's jobs: start what is due, record what is skipped or missed;
        returns when the next job is due (clock time)."""
        now = self.clock()
        soonest = now + self.ctx.settings.cron_poll
        for app in await asyncio.to_thread(self.ctx.state.list_apps):
            try:
                jobs = await self.jobs(app.name)
            except NotFound:
                continue  # destroyed meanwhile
            if not jobs:
                continue
            runs = await asyncio.to_thread(self.ctx.state.list_cron_runs, app.name)
            starting: list[tuple[CronJob, CronRun]] = []
            for job in jobs:
                base = plan.base_of(job, runs)
                due = plan.decide(job, base, now, self.tz, grace=self.ctx.settings.cron_grace, late=self.late)
                if due is None:
                    soonest = min(soonest, plan.next_due(job, base, now, self.tz))
                    continue
                run = await self._handle(due)
                if run is not None:
                    starting.append((job, run))
                soonest = min(soonest, plan.next_due(job, due.at, now, self.tz))
            await self._start_all(starting)
        return soonest

    async def _start_all(self, starting: list[tuple[CronJob, CronRun]]) -> None:
        """The app's due runs saved in one write (so their jobs' next due times count from them),
        then each started at once: fifty jobs due the same minute start together."""
        if not starting:
            return
        keys = [(job.app, job.id) for job, _ in starting]
        for key in keys:
            self.running[key] = self.running.get(key, 0) + 1
        try:
            await asyncio.to_thread(self.ctx.state.add_cron_runs, [run for _, run in starting])
        except BaseException:
            for key in keys:
                self._done(key)
            raise
        for job, run in starting:
            task = asyncio.create_task(self._execute(job, run), name=f"cron-{job.app}-{job.id}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _handle(self, due: Due) -> CronRun | None:
        """Report, skip, or (returned, not yet saved) the run to start."""
        job = due.job
        if due.trigger == Trigger.MISSED:
            when = datetime.fromtimestamp(due.at, self.tz).strftime("%Y-%m-%d %H:%M %Z")
            more = " (and earlier ones)" if due.missed > 1 else ""
            then = "running it now" if due.run else "too long ago to run it now"
            self.ctx.bus.emit(
                CRON_MISSED, job.app, f"cron job {job.name or job.id} due {when}{more} did not run: {then}",
                job=job.id, due=due.at, ran=due.run,
            )  # fmt: skip
        act = plan.action(due, running=(job.app, job.id) in self.running)
        if act == Action.REPORT:
            await self._record(job, Trigger.MISSED, RunStatus.NOT_RUN, due.at)
        elif act == Action.SKIP:
            log.info("cron job %s of %s skipped: its previous run still runs", job.id, job.app)
            await self._record(job, due.trigger, RunStatus.SKIPPED, due.at)
        else:
            return _new_run(job, due.trigger, RunStatus.RUNNING, due.at)
        return None

    async def resume(self) -> int:
        """At start: runs a stopped daemon left as running are recorded as failed (their containers
        were removed with the other one-offs a daemon start finds)."""
        runs = await asyncio.to_thread(self.ctx.state.list_cron_runs)
        stale = [r for r in runs if r.status == RunStatus.RUNNING]
        for run in stale:
            run.status, run.error = RunStatus.FAILED, "the daemon stopped during the run"
            run.finished = run.finished or run.started
            await asyncio.to_thread(self.ctx.state.save_cron_run, run)
        return len(stale)

    async def run_forever(self) -> None:
        """The daemon's scheduler: each due time (or every cron_poll seconds), the due jobs."""
        await self.resume()
        try:
            while True:
                self._changed.clear()
                try:
                    soonest = await self.tick()
                except LbsoloError as e:
                    log.warning("scheduled jobs: %s", e.message)
                    soonest = self.clock() + self.ctx.settings.cron_poll
                wait = max(0.05, min(soonest - self.clock(), self.ctx.settings.cron_poll))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
        finally:
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=5)


def _new_run(job: CronJob, trigger: Trigger, status: RunStatus, due: float | None) -> CronRun:
    return CronRun(
        id=secrets.token_hex(6), app=job.app, job=job.id, trigger=trigger, status=status,
        started=round(time.time(), 3), due=due, command=job.command,
    )  # fmt: skip
