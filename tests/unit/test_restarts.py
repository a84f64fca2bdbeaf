"""Restarting crashed replicas: at once when the replica had been healthy, with a backoff when the
app crash-loops (the pure `RestartHistory`), and a pass that acts on it (a hand-written fake engine).

The engine lists a container as running for a moment after its `die` event: the event's wake
waits until the listing agrees, or the pass would see nothing to restart.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from lbsolo.build import Builder
from lbsolo.config import Settings
from lbsolo.core import Platform
from lbsolo.core_plan import BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_AFTER, RestartHistory
from lbsolo.core_reconcile import CRASH_LOOP_AFTER
from lbsolo.errors import EngineUnavailable
from lbsolo.models import App, Release, ReleaseStatus, Replica
from lbsolo.state import State

from .test_rollout import FakeEngine, FakeIngress

T = 1000.0  # a moment on the scheduler's clock


# ---- the decision


def test_a_replica_never_restarted_is_restarted_at_once():
    history = RestartHistory().went_down(T)
    assert history.restart_delay(T) == 0
    assert history.restarted(T) == RestartHistory(1, T)


def test_a_replica_that_stayed_up_after_its_restart_is_restarted_at_once_and_counts_afresh():
    down = T + HEALTHY_AFTER
    history = RestartHistory(CRASH_LOOP_AFTER + 3, T).went_down(down)  # it crash-looped, then got well
    assert history.lasted()
    assert history.restart_delay(down) == 0
    assert history.restarted(down) == RestartHistory(1, down)


def test_a_replica_that_dies_soon_after_its_restart_backs_off_from_that_restart():
    assert RestartHistory(1, T).went_down(T + 0.1).restart_delay(T + 0.1) == pytest.approx(BACKOFF_FIRST - 0.1)
    assert RestartHistory(2, T).went_down(T).restart_delay(T) == 2 * BACKOFF_FIRST
    assert RestartHistory(3, T).went_down(T + 1.5).restart_delay(T + 1.5) == pytest.approx(4 * BACKOFF_FIRST - 1.5)
    assert RestartHistory(1, T).went_down(T + 0.1).restarted(T + 0.1) == RestartHistory(2, T + 0.1)


def test_how_long_it_was_up_counts_from_when_it_went_down_not_from_when_the_backoff_ended():
    history = RestartHistory(6, T).went_down(T + 0.1)
    end = T + 0.1 + history.restart_delay(T + 0.1)
    assert end - T > HEALTHY_AFTER  # a long backoff ...
    assert history.went_down(end) == history  # ... later passes keep the first moment it was seen down
    assert history.restart_delay(end) == 0
    assert history.restarted(end) == RestartHistory(7, end)  # ... and it still counts as crash-looping


def test_the_backoff_is_capped():
    assert RestartHistory(50, T).went_down(T).restart_delay(T) == BACKOFF_MAX


def test_dying_after_the_backoff_step_restarts_at_once_but_still_counts_in_a_row():
    # Up 3 s each time: longer than the first backoff steps, shorter than healthy.
    history = RestartHistory(1, T).went_down(T + 3)
    assert history.restart_delay(T + 3) == 0
    assert history.restarted(T + 3) == RestartHistory(2, T + 3)


def test_a_crash_loop_is_spaced_ever_wider_and_reaches_crash_loop_after():
    # The replica dies 0.1 s after every restart; each restart happens when the backoff allows.
    now, history, restarts = T, RestartHistory(), []
    while len(restarts) < 10:
        history = history.went_down(now)
        now += history.restart_delay(now)
        history = history.restarted(now)
        restarts.append(now)
        now += 0.1  # and it dies again
    gaps = [b - a for a, b in itertools.pairwise(restarts)]
    assert gaps == pytest.approx([min(BACKOFF_FIRST * 2**i, BACKOFF_MAX) for i in range(9)])
    assert history.in_a_row == 10 >= CRASH_LOOP_AFTER


def test_the_history_is_forgotten_once_every_replica_stayed_up_long_enough():
    history = RestartHistory(CRASH_LOOP_AFTER, T).went_down(T + 1)
    assert not history.settled(T + HEALTHY_AFTER)  # still down
    back = history.restarted(T + 2).came_back()
    assert not back.settled(T + 2 + HEALTHY_AFTER - 0.01)
    assert back.settled(T + 2 + HEALTHY_AFTER)
    assert RestartHistory().went_down(T).came_back().settled(T)


def test_the_history_reads_as_the_tuple_the_app_status_takes_its_count_from():
    assert RestartHistory(3, T)[0] == 3
    assert RestartHistory(*RestartHistory(3, T, T + 1)) == RestartHistory(3, T, T + 1)


# ---- a pass acting on it


class RestartingEngine(FakeEngine):
    """Replicas that can be stopped (as a kill would) and started again."""

    def stop(self, container_id: str) -> None:
        r = self.replicas[container_id]
        self.replicas[container_id] = Replica(**{**r.to_dict(), "running": False, "status": "exited"})

    def start(self, container_id: str) -> Replica:
        r = self.replicas[container_id] = Replica(
            **{**self.replicas[container_id].to_dict(), "running": True, "status": "running"}
        )
        self.calls.append(f"start {container_id}")
        return r


async def _one_replica(tmp_path) -> tuple[Platform, RestartingEngine]:
    """web1 at v1 with one running web replica, as a pass finds it after a daemon start."""
    settings = Settings.load(home=tmp_path)
    state = State(tmp_path / "state.json")
    engine = RestartingEngine({1: 40001})
    builder = Builder(engine, memory="1g", timeout=10)  # type: ignore[arg-type]
    platform = Platform(settings, state, engine, builder, FakeIngress(engine))  # type: ignore[arg-type]
    state.save_release(Release("web1", 1, "sha256:one", status=ReleaseStatus.ACTIVE))
    state.create_app(App(name="web1", release=1))
    engine.run(app="web1", release=1, process="web", name="web1-a", port=5000)
    assert await platform.reconcile() == []  # adopted
    return platform, engine


def test_a_pass_restarts_a_healthy_replica_at_once(tmp_path, run):
    async def main() -> None:
        platform, engine = await _one_replica(tmp_path)
        engine.stop("c1")
        await platform.reconcile()
        assert engine.calls[-1] == "start c1"
        assert platform.ctx.restarts["web1"].in_a_row == 1
        assert (await platform.get_app("web1"))["restarts"] == 1

    run(main)


def test_a_pass_leaves_a_crash_looping_replica_down_and_wakes_when_its_backoff_ends(tmp_path, run):
    async def main() -> None:
        platform, engine = await _one_replica(tmp_path)
        platform.ctx.restarts["web1"] = RestartHistory(1, time.monotonic())  # restarted just now
        engine.stop("c1")
        platform.ctx.wake_event.clear()
        await platform.reconcile()
        assert "start c1" not in engine.calls
        assert not platform.ctx.wake_event.is_set()
        await asyncio.wait_for(platform.ctx.wake_event.wait(), BACKOFF_FIRST + 0.5)  # the backoff's end asks for a pass
        await platform.reconcile()
        assert "start c1" in engine.calls
        assert platform.ctx.restarts["web1"].in_a_row == 2

    run(main)


def test_a_pass_forgets_the_restarts_of_an_app_that_stayed_healthy(tmp_path, run):
    async def main() -> None:
        platform, _ = await _one_replica(tmp_path)
        platform.ctx.restarts["web1"] = RestartHistory(CRASH_LOOP_AFTER, time.monotonic() - 1)
        await platform.reconcile()
        assert (await platform.get_app("web1"))["status"] == "crashloop"  # not healthy for long enough yet
        platform.ctx.restarts["web1"] = RestartHistory(CRASH_LOOP_AFTER, time.monotonic() - HEALTHY_AFTER)
        await platform.reconcile()
        assert "web1" not in platform.ctx.restarts
        assert (await platform.get_app("web1"))["status"] == "running"

    run(main)


def test_a_pass_that_only_removes_replicas_counts_no_restart(tmp_path, run):
    async def main() -> None:
        platform, engine = await _one_replica(tmp_path)
        engine.run(app="web1", release=1, process="web", name="web1-b", port=5000)  # one too many
        await platform.reconcile()
        assert [r.id for r in engine.list_replicas()] == ["c1"]
        assert "web1" not in platform.ctx.restarts

    run(main)


# ---- the die event's wake


class LaggingEngine(FakeEngine):
    """Lists a container as running for the first `lag` listings, as the engine does after `die`."""

    def __init__(self, lag: int, fail: bool = False) -> None:
        super().__init__({1: 40001})
        self.lag, self.fail, self.listings = lag, fail, 0

    def list_replicas(self, app: str | None = None) -> list[Replica]:
        self.listings += 1
        if self.fail:
            raise EngineUnavailable("engine went away")
        running = self.listings <= self.lag
        return [
            Replica(id="c1", name="web1-a", app="web1", release=1, process="web", running=running,
                    status="running" if running else "exited", host_port=40001 if running else None)
        ]  # fmt: skip


def _platform_on(tmp_path, engine: Any) -> Platform:
    settings = Settings.load(home=tmp_path)
    builder = Builder(engine, memory="1g", timeout=10)
    return Platform(settings, State(tmp_path / "state.json"), engine, builder, FakeIngress(engine))


def test_the_die_event_wakes_the_loop_once_the_engine_lists_the_container_stopped(tmp_path, run):
    async def main() -> None:
        engine = LaggingEngine(lag=3)
        platform = _platform_on(tmp_path, engine)
        platform.ctx.wake_event.clear()
        waiting = asyncio.create_task(platform.reconciler.wake_when_stopped("web1", "c1"))
        while engine.listings < 3:
            assert not platform.ctx.wake_event.is_set()
            await asyncio.sleep(0.005)
        await asyncio.wait_for(waiting, 2)
        assert platform.ctx.wake_event.is_set() and engine.listings == 4

    run(main)


@pytest.mark.parametrize("lagging", [{"lag": 10**6}, {"lag": 0, "fail": True}], ids=["lag", "fail"])
def test_the_die_event_wakes_the_loop_anyway_when_the_listing_never_agrees(tmp_path, lagging, run):
    async def main() -> None:
        platform = _platform_on(tmp_path, LaggingEngine(**lagging))
        platform.ctx.wake_event.clear()
        await asyncio.wait_for(platform.reconciler.wake_when_stopped("web1", "c1", timeout=0.2), 2)
        assert platform.ctx.wake_event.is_set()

    run(main)
