"""lbsolo's event bus: what happened to which app, kept in memory and pushed to live readers.

Core emits events (deploy started, replica crashed, ...) synchronously from the event loop;
the bus keeps the last `capacity` of them in a ring buffer for `GET /api/events`, hands each one
to live subscribers (the SSE stream, the web UI's feed) through a bounded per-subscriber buffer,
and calls listeners (the webhook notifier). Emitting never blocks and never raises: a slow
subscriber loses its oldest events, a failing listener is logged. No I/O here; call `emit`
from the event loop's thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger("lbsolo.events")


class EventKind(StrEnum):
    """The kinds core emits; `kind` is a plain string, so others may be added without a change here."""

    APP_CREATED = "app.created"
    APP_DESTROYED = "app.destroyed"
    DEPLOY_STARTED = "deploy.started"
    DEPLOY_SUCCEEDED = "deploy.succeeded"
    DEPLOY_FAILED = "deploy.failed"
    RELEASE_CREATED = "release.created"
    REPLICA_CRASHED = "replica.crashed"
    REPLICA_RESTARTED = "replica.restarted"
    CONFIG_CHANGED = "config.changed"
    SCALED = "scaled"
    WEBHOOK_PING = "webhook.ping"
    APP_SLEPT = "app.slept"
    APP_WOKE = "app.woke"
    APP_WAKE_FAILED = "app.wake_failed"


@dataclass(frozen=True)
class Event:
    id: int  # increases by one per event within one daemon run
    ts: float  # wall-clock seconds
    kind: str
    app: str | None
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "kind": self.kind,
            "app": self.app,
            "message": self.message,
            "data": self.data,
        }


Listener = Callable[[Event], None]


class Subscription:
    """A live reader of the bus; iterate it with `async for`. Registered from the moment it is made.

    Holds at most `maxsize` unread events; when the reader lags, the oldest are dropped (and
    counted in `dropped`). The bus holds subscriptions weakly, so one that is dropped without
    `close()` stops receiving by itself.
    """

    def __init__(self, bus: EventBus, app: str | None, maxsize: int) -> None:
        self.app = app
        self.dropped = 0
        self._bus = bus
        self._items: deque[Event] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self._closed = False

    def _offer(self, event: Event) -> None:
        if self._closed or (self.app is not None and event.app != self.app):
            return
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(event)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._bus._subscribers.discard(self)
        self._ready.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()


class EventBus:
    """A ring buffer of recent events, live subscribers and listeners."""

    def __init__(
        self, capacity: int = 1000, subscriber_buffer: int = 256, clock: Callable[[], float] = time.time
    ) -> None:
        self._recent: deque[Event] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self._clock = clock
        self._subscriber_buffer = subscriber_buffer
        self._subscribers: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._listeners: list[Listener] = []

    def emit(self, kind: str, app: str | None = None, message: str = "", **data: Any) -> Event:
        """Record an event and hand it to subscribers and listeners; never raises, never blocks."""
        event = Event(next(self._ids), round(self._clock(), 3), str(kind), app, message, data)
        self._recent.append(event)
        for sub in list(self._subscribers):
            sub._offer(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed on %s", listener, event.kind)
        return event

    def recent(self, n: int = 100, app: str | None = None, after: int | None = None) -> list[Event]:
        """The last n events (of one app, and/or newer than id `after`), oldest first."""
        out: list[Event] = []
        for event in reversed(self._recent):
            if len(out) >= n or (after is not None and event.id <= after):
                break
            if app is None or event.app == app:
                out.append(event)
        out.reverse()
        return out

    def subscribe(self, app: str | None = None, after: int | None = None) -> Subscription:
        """Live events (of one app) from now on; with `after`, buffered ones newer than that id first.

        `async for event in bus.subscribe(): ...`, or `async with bus.subscribe() as sub:` to
        unsubscribe on exit.
        """
        sub = Subscription(self, app, self._subscriber_buffer)
        if after is not None:
            for event in self.recent(self._subscriber_buffer, app, after):
                sub._offer(event)
        self._subscribers.add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call listener(event) on every emit, in the emitter's thread; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove
