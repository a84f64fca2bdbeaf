"""The target pool's state transitions, without sockets: fake connections and waiters, a fake clock."""

from __future__ import annotations

import asyncio

from lbsolo.proxy_routes import Target
from lbsolo.proxy_targets import Slot, TargetPool, TargetState

A = Target("127.0.0.1", 9001)
B = Target("127.0.0.1", 9002)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


class Transport:
    def is_closing(self) -> bool:
        return False


class Up:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.pooled = False
        self.idle_since = 0.0
        self.closed = False
        self.transport = Transport()
        self.deadline: float | None = None
        self.write_deadline: float | None = None

    def on_timeout(self) -> None:
        self.abort()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class Waiter:
    def __init__(self) -> None:
        self.waiting_for: Slot | None = None
        self.given: list[Up] = []
        self.turns: list[Target] = []

    def claim(self, slot: Slot) -> bool:
        if self.waiting_for is slot:
            self.waiting_for = None
            return True
        return False

    def take(self, up: Up) -> None:
        self.given.append(up)

    def connect(self, target: Target) -> None:
        self.turns.append(target)


def pool(*live: Target) -> tuple[TargetPool, Clock]:
    clock = Clock()
    p = TargetPool()
    p.start(clock)  # type: ignore[arg-type]
    p.update(live)
    return p, clock


def test_targets_of_the_routes_are_healthy_and_removed_ones_drain_then_go():
    p, _ = pool(A, B)
    assert p.state(A) is p.state(B) is TargetState.HEALTHY
    slot = p.acquire(B)
    p.update([A])
    assert p.state(B) is TargetState.DRAINING and p.in_flight(B) == 1
    p.release(slot)
    assert p.state(B) is None and p.in_flight(B) == 0  # forgotten once unused
    p.update([A, B])
    assert p.state(B) is TargetState.HEALTHY


def test_a_target_coming_back_while_draining_is_healthy_again_with_its_count():
    p, _ = pool(A)
    slot = p.acquire(A)
    p.update([])
    p.update([A])
    assert p.state(A) is TargetState.HEALTHY and p.in_flight(A) == 1
    p.release(slot)
    assert p.state(A) is TargetState.HEALTHY


def test_a_request_to_a_target_no_route_names_is_counted_and_forgotten_after():
    p, _ = pool(A)
    slot = p.acquire(B)
    assert p.state(B) is TargetState.DRAINING and p.in_flight(B) == 1
    p.release(slot)
    assert p.state(B) is None


def test_pick_takes_the_least_busy_target_and_round_robins_ties():
    p, _ = pool(A, B)
    assert {p.pick((A, B)), p.pick((A, B))} == {A, B}
    p.acquire(A)
    assert [p.pick((A, B)) for _ in range(4)] == [B] * 4


def test_an_ejected_target_is_skipped_until_its_time_is_up():
    p, clock = pool(A, B)
    p.eject(A)
    assert p.state(A) is TargetState.EJECTED and p.is_ejected(A)
    assert [p.pick((A, B)) for _ in range(4)] == [B] * 4
    assert p.pick_other((A, B), [B]) == A  # the only one left, ejected or not
    clock.now += p.eject_seconds + 0.1
    assert not p.is_ejected(A) and p.state(A) is TargetState.HEALTHY


def test_removing_an_ejected_target_forgets_its_ejection():
    p, _ = pool(A, B)
    p.eject(A)
    p.update([B])
    p.update([A, B])
    assert p.state(A) is TargetState.HEALTHY and not p.is_ejected(A)


def test_idle_connections_are_reused_last_in_first_out_and_expire():
    p, clock = pool(A)
    first, second = Up(A), Up(A)
    p.put_idle(first)
    clock.now += 1
    p.put_idle(second)
    slot = p.slot(A)
    assert slot is not None and first.pooled and second.pooled
    assert p.take_idle(slot) is second and not second.pooled
    clock.now += p.idle_seconds
    p.sweep_idle(clock.now)
    assert first.closed and not slot.idle


def test_a_closed_idle_connection_is_not_handed_out():
    p, _ = pool(A)
    up = Up(A)
    p.put_idle(up)
    up.closed = True
    slot = p.slot(A)
    assert slot is not None and p.take_idle(slot) is None


def test_connections_to_a_draining_target_or_while_stopping_are_closed_not_pooled():
    p, _ = pool(A, B)
    pooled = Up(A)
    p.put_idle(pooled)
    p.update([B])
    assert pooled.closed and not pooled.pooled
    late = Up(A)
    p.put_idle(late)
    assert late.closed
    p.stopping = True
    up = Up(B)
    p.put_idle(up)
    assert up.closed


def test_waiters_queue_when_enough_connections_are_being_opened():
    p, _ = pool(A)
    p.connecting_max = 1
    slot = p.slot(A)
    assert slot is not None
    first, second, gone = Waiter(), Waiter(), Waiter()
    assert not p.wait(slot, first)  # nothing being opened: it opens its own
    p.connecting(slot)
    for w in (gone, first, second):
        assert p.wait(slot, w)
        w.waiting_for = slot
    gone.waiting_for = None  # its client went away
    up = Up(A)
    p.put_idle(up)  # a freed connection goes to the first still waiting
    assert first.given == [up] and not up.pooled and gone.given == []
    p.connected(slot)  # an attempt ended: the next one may open its own
    assert second.turns == [A] and slot.connecting == 0
    assert not p.busy()


def test_wait_drained_returns_when_the_last_request_ends(run):
    async def scenario() -> None:
        p = TargetPool()
        p.start(asyncio.get_running_loop())
        p.update([A])
        slot = p.acquire(A)
        asyncio.get_running_loop().call_later(0.01, p.release, slot)
        drained = await p.wait_drained([A], 2.0)
        p.acquire(A)
        assert (drained, await p.wait_drained([A], 0.02)) == (True, False)

    run(scenario)


def test_a_lost_pooled_connection_leaves_the_pool():
    p, _ = pool(A)
    up = Up(A)
    p.opened(up)
    p.put_idle(up)
    p.lost(up)
    slot = p.slot(A)
    assert slot is not None and not slot.idle and not up.pooled and up not in p.connections
