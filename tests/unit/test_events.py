"""The event bus without I/O: ring buffer, filtered reads, live subscribers that lag, listeners."""

from __future__ import annotations

import asyncio
import gc

import pytest

from lbsolo.events import Event, EventBus, EventKind


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def test_emit_numbers_events_and_keeps_the_last_capacity():
    bus = EventBus(capacity=3, clock=Clock())
    events = [bus.emit(EventKind.DEPLOY_STARTED, "hello", f"deploy {i}", build=str(i)) for i in range(5)]
    assert [e.id for e in events] == [1, 2, 3, 4, 5]
    assert events[0] == Event(1, 1001.0, "deploy.started", "hello", "deploy 0", {"build": "0"})
    assert isinstance(events[0].kind, str) and type(events[0].kind) is str
    assert [e.id for e in bus.recent()] == [3, 4, 5]
    assert events[4].to_dict() == {
        "id": 5,
        "ts": 1005.0,
        "kind": "deploy.started",
        "app": "hello",
        "message": "deploy 4",
        "data": {"build": "4"},
    }
    with pytest.raises(AttributeError):
        events[0].kind = "x"  # type: ignore[misc]


def test_recent_filters_by_app_count_and_id():
    bus = EventBus()
    for i in range(10):
        bus.emit("scaled", "a" if i % 2 else "b", str(i))
    assert [e.message for e in bus.recent(3)] == ["7", "8", "9"]
    assert [e.message for e in bus.recent(2, app="a")] == ["7", "9"]
    assert [e.message for e in bus.recent(100, app="b", after=6)] == ["6", "8"]
    assert bus.recent(5, app="nope") == []


def test_listeners_are_called_and_a_failing_one_does_not_stop_emit(caplog):
    bus = EventBus()
    seen: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    bus.add_listener(broken)
    remove = bus.add_listener(lambda e: seen.append(e.kind))
    bus.emit("app.created", "a")
    remove()
    remove()  # twice is harmless
    bus.emit("app.destroyed", "a")
    assert seen == ["app.created"]
    assert "boom" in caplog.text


def test_subscribers_get_live_events_of_their_app(run):
    async def scenario() -> None:
        bus = EventBus()
        bus.emit("old", "a")  # before subscribing: not delivered
        every, only_a = bus.subscribe(), bus.subscribe(app="a")
        bus.emit("one", "a")
        bus.emit("two", "b")
        bus.emit("three", "a")
        assert [(await anext(every)).kind for _ in range(3)] == ["one", "two", "three"]
        assert [(await anext(only_a)).kind for _ in range(2)] == ["one", "three"]

        waiting = asyncio.create_task(anext(only_a))
        await asyncio.sleep(0)
        assert not waiting.done()
        bus.emit("four", "a")
        assert (await asyncio.wait_for(waiting, 1)).kind == "four"

        async with bus.subscribe() as sub:
            assert bus.subscribers == 3
        assert bus.subscribers == 2
        assert [e async for e in sub] == []  # closed: iteration ends

    run(scenario)


def test_a_lagging_subscriber_loses_its_oldest_events_not_memory(run):
    async def scenario() -> None:
        bus = EventBus(subscriber_buffer=3)
        sub = bus.subscribe()
        for i in range(10):
            bus.emit("tick", None, str(i))
        assert sub.dropped == 7
        assert [(await anext(sub)).message for _ in range(3)] == ["7", "8", "9"]

    run(scenario)


def test_subscribe_after_replays_buffered_events_then_live_ones(run):
    async def scenario() -> None:
        bus = EventBus()
        for i in range(5):
            bus.emit("tick", "a", str(i))
        sub = bus.subscribe(app="a", after=3)
        bus.emit("tick", "a", "5")
        assert [(await anext(sub)).message for _ in range(2)] == ["3", "4"]  # ids 4 and 5
        assert (await anext(sub)).message == "5"

    run(scenario)


def test_close_wakes_a_waiting_reader_and_forgotten_subscriptions_go_away(run):
    async def scenario() -> None:
        bus = EventBus()
        sub = bus.subscribe()
        reader = asyncio.create_task(anext(sub))
        await asyncio.sleep(0)
        sub.close()
        with pytest.raises(StopAsyncIteration):
            await reader
        assert bus.subscribers == 0

        bus.subscribe()  # never read, never closed
        gc.collect()
        assert bus.subscribers == 0
        bus.emit("still", "fine")

    run(scenario)
