"""Scheduled jobs: the pure decisions (what is due, missed within or beyond grace, overlap, the
[[cron]] entries of lbsolo.toml) with a fake clock, and the scheduler's pass over a real state
with a fake `lbsolo run`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from lbsolo import cron_plan as plan
from lbsolo.build import LogBuffer, parse_spec
from lbsolo.config import Settings
from lbsolo.core_context import CoreContext
from lbsolo.core_cron import CRON_FAILED, CRON_MISSED, CRON_SUCCEEDED, CronJobs
from lbsolo.cron_plan import Action, CronJob, CronRun, Overlap, RunStatus, Trigger
from lbsolo.errors import InvalidInput, LbsoloError, NotFound
from lbsolo.events import EventBus
from lbsolo.models import App, Release
from lbsolo.run_logs import LogStore
from lbsolo.state import State


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


DAILY = CronJob("shop", "c1", "0 3 * * *", "echo hi", created_at=ts("2026-01-01 12:00"))
GRACE, LATE = 3600.0, 65.0


def decide(job: CronJob, base: float, now: float, tz=UTC) -> plan.Due | None:
    return plan.decide(job, base, now, tz, grace=GRACE, late=LATE)


def test_a_job_is_not_due_before_its_time_and_due_on_time_at_it():
    assert decide(DAILY, DAILY.created_at, ts("2026-01-02 02:59:59")) is None
    due = decide(DAILY, DAILY.created_at, ts("2026-01-02 03:00:01"))
    assert due is not None and (due.at, due.trigger, due.run) == (ts("2026-01-02 03:00"), Trigger.SCHEDULED, True)
    # once run (its due time is the new base) it is not due again until the next day
    assert decide(DAILY, due.at, ts("2026-01-02 03:00:30")) is None


def test_a_run_missed_within_grace_runs_once_as_missed_and_one_beyond_is_only_reported():
    within = decide(DAILY, DAILY.created_at, ts("2026-01-02 03:30"))
    assert within is not None and (within.trigger, within.run, within.at) == (
        Trigger.MISSED,
        True,
        ts("2026-01-02 03:00"),
    )
    beyond = decide(DAILY, DAILY.created_at, ts("2026-01-02 05:00"))
    assert beyond is not None and (beyond.trigger, beyond.run) == (Trigger.MISSED, False)
    assert plan.action(beyond, running=False) == Action.REPORT


def test_many_missed_runs_give_one_due_run_the_latest():
    every_minute = CronJob("shop", "c2", "* * * * *", "tick", created_at=ts("2026-01-01 00:00"))
    due = decide(every_minute, every_minute.created_at, ts("2026-03-01 10:00:20"))  # two months down
    assert due is not None and due.at == ts("2026-03-01 10:00") and due.trigger == Trigger.MISSED
    assert due.run and due.missed > 1


def test_the_schedule_is_read_in_the_time_zone_setting():
    paris = plan.time_zone("Europe/Paris")
    assert isinstance(paris, ZoneInfo)
    due = decide(DAILY, DAILY.created_at, ts("2026-01-02 02:00:10"), tz=paris)  # 03:00 in Paris (UTC+1)
    assert due is not None and due.at == ts("2026-01-02 02:00")
    with pytest.raises(InvalidInput, match="unknown time zone 'Mars/Olympus'"):
        plan.time_zone("Mars/Olympus")


def test_overlap_skip_skips_a_run_due_while_the_previous_runs_and_allow_does_not():
    due = decide(DAILY, DAILY.created_at, ts("2026-01-02 03:00:01"))
    assert due is not None
    assert plan.action(due, running=True) == Action.SKIP
    assert plan.action(due, running=False) == Action.RUN
    allow = plan.Due(CronJob("shop", "c3", "0 3 * * *", "x", overlap=Overlap.ALLOW), due.at, Trigger.SCHEDULED)
    assert plan.action(allow, running=True) == Action.RUN


def test_the_base_is_the_last_non_manual_run():
    runs = [
        CronRun("a", "shop", "c1", Trigger.SCHEDULED, RunStatus.SUCCEEDED, 1, due=ts("2026-01-02 03:00")),
        CronRun("b", "shop", "c1", Trigger.MANUAL, RunStatus.SUCCEEDED, 2),
        CronRun("c", "shop", "c1", Trigger.SCHEDULED, RunStatus.SKIPPED, 3, due=ts("2026-01-03 03:00")),
        CronRun("d", "shop", "other", Trigger.SCHEDULED, RunStatus.SUCCEEDED, 4, due=ts("2026-02-01 03:00")),
    ]
    assert plan.base_of(DAILY, runs) == ts("2026-01-03 03:00")
    assert plan.base_of(DAILY, []) == DAILY.created_at


def test_history_keeps_the_newest_runs_of_a_job():
    runs = [CronRun(str(i), "shop", "c1", Trigger.SCHEDULED, RunStatus.SUCCEEDED, float(i)) for i in range(8)]
    runs.append(CronRun("live", "shop", "c1", Trigger.SCHEDULED, RunStatus.RUNNING, 0.5))
    assert plan.to_forget(runs, keep=5) == ["2", "1", "0"]


def test_toml_entries_are_checked_and_a_bad_one_is_named_by_its_number():
    spec = parse_spec(
        None,
        b'[[cron]]\nschedule = "0 3 * * *"\ncommand = "python manage.py cleanup"\n\n'
        b'[[cron]]\nname = "ping"\nschedule = "*/15 * * * *"\ncommand = "curl x"\noverlap = "allow"\n',
    )
    assert spec.cron == [
        {"schedule": "0 3 * * *", "command": "python manage.py cleanup"},
        {"schedule": "*/15 * * * *", "command": "curl x", "name": "ping", "overlap": "allow"},
    ]
    jobs = plan.toml_jobs("shop", spec.cron, 5.0)
    assert jobs[1].id == "ping" and jobs[0].id.startswith("t") and jobs[0].source == plan.Source.TOML
    assert plan.toml_job_id(spec.cron[0]) == jobs[0].id  # stable: the same entry, the same id
    bad = {
        b'[[cron]]\nschedule = "0 3 * *"\ncommand = "x"\n': "entry 1: invalid schedule",
        b'[[cron]]\nschedule = "0 3 * * *"\ncommand = "x"\n[[cron]]\nschedule = "@daily"\ncommand = " "\n': (
            "entry 2: a job's command cannot be empty"
        ),
        b'[[cron]]\nschedule = "0 3 * * *"\n': "entry 1: a job's command cannot be empty",
        b'[[cron]]\nschedule = "0 3 * * *"\ncommand = "x"\nwhen = 1\n': "entry 1: unknown key 'when'",
        b'cron = "0 3 * * *"\n': "array of tables",
        b'[[cron]]\nschedule = "0 3 * * *"\ncommand = "x"\noverlap = "queue"\n': "entry 1: invalid overlap",
        b'[[cron]]\nname="a"\nschedule="@daily"\ncommand="x"\n[[cron]]\nname="a"\nschedule="@daily"\ncommand="y"\n': (
            "two jobs are called 'a'"
        ),
    }
    for text, message in bad.items():
        with pytest.raises(InvalidInput, match=message):
            parse_spec(None, text)
    many = b"".join(b'[[cron]]\nschedule = "@daily"\ncommand = "echo %d"\n' % i for i in range(plan.MAX_JOBS + 1))
    with pytest.raises(InvalidInput, match="at most 50"):
        parse_spec(None, many)


def test_a_toml_job_counts_from_the_oldest_release_of_the_newest_run_carrying_it():
    entry = {"schedule": "@daily", "command": "x"}
    releases = plan.Releases([(30.0, [entry]), (20.0, [entry]), (10.0, []), (5.0, [entry])])
    assert plan.toml_since(plan.toml_job_id(entry), releases) == 20.0


# ---- the scheduler's pass, over a real state and a fake `lbsolo run`


class FakeEngine:
    instance = "test"

    def __init__(self) -> None:
        self.stopped: list[str] = []
        self.on_stop = lambda: None

    def follow_logs(self, *_a, **_k):
        return iter(())

    def stop_and_remove(self, name: str, timeout: int) -> None:
        self.stopped.append(name)
        self.on_stop()


class FakeRun:
    """`lbsolo run`: prints the command, exits with what `codes` says for it (default 0)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []
        self.codes: dict[str, int] = {}
        self.hold = asyncio.Event()
        self.held: set[str] = set()

    async def __call__(self, app, command, out, *, timeout=None, container=None) -> int:
        self.calls.append((app, command, container))
        out.append(f"ran {command}")
        if command in self.held:
            await self.hold.wait()
        return self.codes.get(command, 0)


def make_cron(tmp_path, fake: FakeRun, **settings) -> tuple[CronJobs, State, EventBus, FakeEngine]:
    s = Settings(home=tmp_path, cron_poll=1.0, **settings)
    state = State(tmp_path / "state.json")
    bus, engine = EventBus(), FakeEngine()
    ctx = CoreContext(s, state, engine, None, bus, LogStore(s.logs_dir))  # type: ignore[arg-type]
    return CronJobs(ctx, fake), state, bus, engine


def just_after_a_due_time(cron: CronJobs) -> float:
    """A job created then has exactly one due time behind it: the minute boundary before now."""
    from lbsolo.addon_dumps import previous_run

    return previous_run("* * * * *", cron.clock(), UTC) - 1


def test_add_checks_everything_and_changes_nothing_on_bad_input(tmp_path, run):
    async def scenario() -> None:
        cron, state, _, _ = make_cron(tmp_path, FakeRun())
        state.create_app(App("shop"))
        job = await cron.add("shop", "*/15  * * * *", "echo hi", name="ping")
        assert (job["schedule"], job["source"], job["name"]) == ("*/15 * * * *", "cli", "ping")
        for args, message in [
            (("shop", "61 * * * *", "x"), "invalid schedule"),
            (("shop", "* * * * *", "  "), "command cannot be empty"),
            (("shop", "* * * * *", "x", "ping"), "two jobs are called 'ping'"),
            (("shop", "* * * * *", "x", "Bad Name"), "invalid job name"),
        ]:
            with pytest.raises(InvalidInput, match=message):
                await cron.add(*args)
        with pytest.raises(NotFound, match="unknown app 'nope'"):
            await cron.add("nope", "* * * * *", "x")
        with pytest.raises(NotFound, match="shop has no job 'zzz'"):
            await cron.remove("shop", "zzz")
        assert [j.name for j in state.list_cron_jobs("shop")] == ["ping"]
        for i in range(plan.MAX_JOBS - 1):
            await cron.add("shop", "@daily", f"echo {i}")
        with pytest.raises(InvalidInput, match="at most 50 per app"):
            await cron.add("shop", "@daily", "one too many")
        assert len(state.list_cron_jobs("shop")) == plan.MAX_JOBS
        assert await cron.remove("shop", "ping") == job["id"]

    run(scenario)


def test_toml_jobs_follow_the_current_release_and_cannot_be_removed_by_hand(tmp_path, run):
    async def scenario() -> None:
        cron, state, _, _ = make_cron(tmp_path, FakeRun())
        state.create_app(App("shop", release=1))
        state.save_release(
            Release("shop", 1, "sha256:a", cron=[{"name": "nightly", "schedule": "@daily", "command": "x"}])
        )
        assert [(j["id"], j["source"]) for j in await cron.listing("shop")] == [("nightly", "toml")]
        with pytest.raises(InvalidInput, match="comes from shop's lbsolo"):
            await cron.remove("shop", "nightly")
        state.save_release(Release("shop", 2, "sha256:a"))
        app = state.get_app("shop")
        app.release = 2
        state.save_app(app)
        assert await cron.listing("shop") == []

    run(scenario)


def test_a_due_job_runs_once_and_a_failure_raises_cron_failed(tmp_path, run):
    async def scenario() -> None:
        fake = FakeRun()
        fake.codes["false"] = 3
        cron, state, bus, _ = make_cron(tmp_path, fake)
        state.create_app(App("shop"))
        for job_id, command in (("ok", "true"), ("bad", "false")):
            state.add_cron_job(CronJob("shop", job_id, "* * * * *", command, created_at=just_after_a_due_time(cron)))
        cron.late = 120.0  # the minute boundary before now counts as on time
        await cron.tick()
        await asyncio.wait(cron.tasks)
        runs = {r.job: r for r in state.list_cron_runs("shop")}
        assert (runs["ok"].status, runs["ok"].exit_code) == (RunStatus.SUCCEEDED, 0)
        assert (runs["bad"].status, runs["bad"].exit_code, runs["bad"].trigger) == (
            RunStatus.FAILED,
            3,
            Trigger.SCHEDULED,
        )
        assert all(c.startswith("lbsolo-test-cron-") for _, _, c in fake.calls)
        events = [e.kind for e in bus.recent()]
        assert CRON_SUCCEEDED in events and CRON_FAILED in events
        assert await cron.run_log("shop", runs["bad"].id) == ["ran false"]
        await cron.tick()  # nothing due any more
        assert len(fake.calls) == 2

    run(scenario)


def test_missed_runs_within_grace_run_once_and_older_ones_are_only_reported(tmp_path, run):
    async def scenario() -> None:
        fake = FakeRun()
        cron, state, bus, _ = make_cron(tmp_path, fake, cron_grace=600.0)
        state.create_app(App("shop"))
        now = cron.clock()
        state.add_cron_job(CronJob("shop", "recent", "* * * * *", "recent", created_at=now - 300))
        state.add_cron_job(CronJob("shop", "old", "0 0 1 1 *", "old", created_at=now - 400 * 86400))
        await cron.tick()
        await asyncio.wait(cron.tasks)
        runs = {r.job: r for r in state.list_cron_runs("shop")}
        assert (runs["recent"].trigger, runs["recent"].status) == (Trigger.MISSED, RunStatus.SUCCEEDED)
        assert (runs["old"].trigger, runs["old"].status) == (Trigger.MISSED, RunStatus.NOT_RUN)
        assert [c[1] for c in fake.calls] == ["recent"]
        assert [e.kind for e in bus.recent()].count(CRON_MISSED) == 2

    run(scenario)


def test_a_run_due_while_the_previous_still_runs_is_skipped_and_a_hung_run_is_stopped(tmp_path, run):
    async def scenario() -> None:
        fake = FakeRun()
        fake.held.add("slow")
        cron, state, _, engine = make_cron(tmp_path, fake, cron_timeout=0.3)
        state.create_app(App("shop"))
        engine.on_stop = fake.hold.set  # stopping the container ends the command
        state.add_cron_job(CronJob("shop", "slow", "* * * * *", "slow", created_at=just_after_a_due_time(cron)))
        cron.late = 120.0
        manual = asyncio.ensure_future(cron.run_now("shop", "slow", LogBuffer()))
        await asyncio.sleep(0.05)
        await cron.tick()
        statuses = {r.trigger: r.status for r in state.list_cron_runs("shop")}
        assert statuses[Trigger.SCHEDULED] == RunStatus.SKIPPED
        with pytest.raises(LbsoloError, match=r"still running after 0\.3s: stopped"):
            await manual
        timed_out = next(r for r in state.list_cron_runs("shop") if r.trigger == Trigger.MANUAL)
        assert timed_out.status == RunStatus.TIMEOUT and engine.stopped == [f"lbsolo-test-cron-{timed_out.id}"]

    run(scenario)
