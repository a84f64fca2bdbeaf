"""The proxy's targets: per route target, its state, its requests in flight and its upstream connections.

A `TargetPool` holds one `Slot` per target (a replica's address): its `TargetState`, the requests
(and tunnels) in flight to it, the connection attempts in progress, the client connections queued
for a connection to it, and its idle pooled upstream connections. The client side claims a target
(`acquire`) and gives it back (`release`); the upstream side hands a finished connection back
(`put_idle`). Balancing (`pick`: least requests in flight, round-robin on ties), passive ejection
(`eject`) and drain (`wait_drained`) are decisions over that state.

There is no "adding" state: the proxy has no active health check, so a target gets requests as
soon as a route names it.

What it must not do: read or write HTTP, open connections or import the proxy's protocol modules.
It sees a client connection as a `Waiter` and an upstream connection as a `Connection`, and it
must never make the per-request path slower (one dict lookup keyed by `Target`, no extra calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import Iterable
from typing import Protocol

from lbsolo.proxy_routes import Target

__all__ = ["Connection", "Slot", "TargetPool", "TargetState", "Waiter"]

POOL_MAX = 1024  # idle upstream connections kept per target
EJECT_SECONDS = 5.0  # a target that refused a connection gets no new requests for this long
POOL_IDLE = 3.0  # seconds an idle upstream connection is kept (below common app keep-alive timeouts)
CONNECTING_MAX = 64  # connection attempts in progress per target; more requests queue for one


class TargetState(enum.Enum):
    HEALTHY = "healthy"  # in the routes: gets requests
    EJECTED = "ejected"  # in the routes, but refused a connection lately: skipped until `ejected_until`
    DRAINING = "draining"  # no longer in the routes: what is in flight finishes, nothing is pooled


class Connection(Protocol):
    """An upstream connection, as the pool sees it."""

    target: Target
    pooled: bool
    idle_since: float
    closed: bool
    transport: asyncio.Transport | None
    deadline: float | None  # waiting for the app (the server's sweep reads both deadlines)
    write_deadline: float | None

    def on_timeout(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Waiter(Protocol):
    """A client connection queued for a connection to a target."""

    def claim(self, slot: Slot) -> bool:
        """Whether it still waits for `slot` (it then stops waiting and takes what it is given)."""
        ...

    def take(self, up: Connection) -> None:
        """A pooled connection to the target is handed over."""
        ...

    def connect(self, target: Target) -> None:
        """A connection attempt ended: it may open its own connection now."""
        ...


class Slot:
    """One target's state. Read its fields freely; change them through the `TargetPool`."""

    __slots__ = ("connecting", "ejected_until", "idle", "in_flight", "state", "target", "waiters")

    def __init__(self, target: Target, state: TargetState = TargetState.HEALTHY) -> None:
        self.target = target
        self.state = state
        self.in_flight = 0  # requests (and tunnels) in progress, whichever route sent them
        self.connecting = 0  # connection attempts in progress
        self.waiters: deque[Waiter] = deque()  # queued for a connection (CONNECTING_MAX attempts are on)
        self.idle: list[Connection] = []  # pooled connections, the most recently used last
        self.ejected_until = 0.0  # loop time until which it gets no new requests

    def unused(self) -> bool:
        return not (self.in_flight or self.connecting or self.waiters or self.idle)


class TargetPool:
    """Every target's `Slot`, kept for the targets of the routes and for those still in use."""

    def __init__(
        self,
        pool_max: int = POOL_MAX,
        eject_seconds: float = EJECT_SECONDS,
        idle_seconds: float = POOL_IDLE,
        connecting_max: int = CONNECTING_MAX,
    ) -> None:
        self.pool_max = pool_max
        self.eject_seconds = eject_seconds
        self.idle_seconds = idle_seconds
        self.connecting_max = connecting_max
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False  # the proxy is stopping: nothing is pooled any more
        self.connections: set[Connection] = set()  # every open upstream connection
        self._slots: dict[Target, Slot] = {}
        self._rr = 0  # round-robin tie-break between equally busy targets
        self._drained = asyncio.Event()
        self._drain_waiters = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The proxy starts on `loop` (ejections and idle times are in its time)."""
        self.loop = loop
        self.stopping = False

    def stop(self) -> None:
        """The proxy stops: from now on nothing is pooled (`close_idle` closes what is)."""
        self.stopping = True

    # -- the routes ----------------------------------------------------------------------

    def update(self, live: Iterable[Target]) -> None:
        """The routes changed: `live` are their targets now; the others drain."""
        live = frozenset(live)
        slots = self._slots
        for target, slot in list(slots.items()):
            if target in live:
                continue
            if slot.state is not TargetState.DRAINING:
                slot.state = TargetState.DRAINING
                slot.ejected_until = 0.0
                idle, slot.idle = slot.idle, []
                for up in idle:
                    up.pooled = False
                    up.close()
            self._forget_if_unused(slot)
        for target in live:
            slot = slots.get(target)
            if slot is None:
                slots[target] = Slot(target)
            elif slot.state is TargetState.DRAINING:
                slot.state = TargetState.HEALTHY

    def slot(self, target: Target) -> Slot | None:
        return self._slots.get(target)

    def state(self, target: Target) -> TargetState | None:
        """The target's state now; None for a target the pool does not hold."""
        slot = self._slots.get(target)
        if slot is None:
            return None
        if slot.state is TargetState.EJECTED:
            self._still_ejected(slot)
        return slot.state

    def in_flight(self, target: Target) -> int:
        slot = self._slots.get(target)
        return slot.in_flight if slot is not None else 0

    def busy(self) -> bool:
        """Whether a connection is being opened, or a request waits for one, to any target."""
        return any(s.connecting or s.waiters for s in self._slots.values())

    # -- requests ------------------------------------------------------------------------

    def acquire(self, target: Target) -> Slot:
        """Count a request (or tunnel) in flight to `target`; `release` the slot when it ends."""
        slot = self._slots.get(target)
        if slot is None:  # a route replaced while its request was held: it still counts
            slot = self._slots[target] = Slot(target, TargetState.DRAINING)
        slot.in_flight += 1
        return slot

    def release(self, slot: Slot) -> None:
        slot.in_flight = left = slot.in_flight - 1
        if not left:
            if self._drain_waiters:
                self._drained.set()
            if slot.state is TargetState.DRAINING:
                self._forget_if_unused(slot)

    def pick(self, targets: tuple[Target, ...]) -> Target:
        """The target with the fewest requests in flight, skipping ejected ones; round-robin on ties."""
        if len(targets) == 1:
            return targets[0]
        slots = self._slots
        count = len(targets)
        rr = self._rr
        self._rr = rr + 1
        best: Target | None = None
        best_load = 1 << 62
        for i in range(count):
            target = targets[(rr + i) % count]
            slot = slots.get(target)
            if slot is None:
                load = 0
            else:
                if slot.state is TargetState.EJECTED and self._still_ejected(slot):
                    continue
                load = slot.in_flight
            if load < best_load:
                best = target
                best_load = load
        return best if best is not None else targets[rr % count]

    def pick_other(self, targets: Iterable[Target], tried: list[Target]) -> Target | None:
        """Another of `targets` after a failed connect, healthy ones first; None when none is left."""
        candidates = [t for t in targets if t not in tried]
        healthy = [t for t in candidates if not self.is_ejected(t)]
        if healthy or candidates:
            return self.pick(tuple(healthy or candidates))
        return None

    def eject(self, target: Target) -> None:
        """Passive health check: a target that refused a connection is skipped for a while."""
        slot = self._slots.get(target)
        if slot is None:
            return
        slot.ejected_until = self.loop.time() + self.eject_seconds  # type: ignore[union-attr]
        if slot.state is TargetState.HEALTHY:
            slot.state = TargetState.EJECTED

    def is_ejected(self, target: Target) -> bool:
        slot = self._slots.get(target)
        return slot is not None and slot.ejected_until > 0 and self._still_ejected(slot)

    def _still_ejected(self, slot: Slot) -> bool:
        if slot.ejected_until > self.loop.time():  # type: ignore[union-attr]
            return True
        slot.ejected_until = 0.0
        if slot.state is TargetState.EJECTED:
            slot.state = TargetState.HEALTHY
        return False

    # -- connections ---------------------------------------------------------------------

    def take_idle(self, slot: Slot) -> Connection | None:
        """A pooled connection to the slot's target that is still open, or None."""
        idle = slot.idle
        while idle:
            up = idle.pop()
            up.pooled = False
            if not up.closed and not up.transport.is_closing():  # type: ignore[union-attr]
                return up
            up.close()
        return None

    def put_idle(self, up: Connection) -> None:
        """An exchange on `up` ended cleanly: a waiting request takes it, or it is pooled, or closed."""
        slot = self._slots.get(up.target)
        if slot is None:
            up.close()
            return
        if slot.waiters and not self.stopping and not up.closed:
            waiter = self._next_waiter(slot)
            if waiter is not None:
                waiter.take(up)
                return
        if self.stopping or slot.state is TargetState.DRAINING:
            up.close()
            return
        idle = slot.idle
        if len(idle) >= self.pool_max:
            up.close()
            return
        up.pooled = True
        up.idle_since = self.loop.time()  # type: ignore[union-attr]
        idle.append(up)

    def wait(self, slot: Slot, waiter: Waiter) -> bool:
        """Queue `waiter` for a connection when enough are being opened to the target (rather than
        flood the app's accept queue: SYN retries cost seconds). False: it may open its own."""
        if slot.connecting < self.connecting_max:
            return False
        slot.waiters.append(waiter)
        return True

    def connecting(self, slot: Slot) -> None:
        """A connection attempt to the slot's target begins; `connected` when it ends, either way."""
        slot.connecting += 1

    def connected(self, slot: Slot) -> None:
        """A connection attempt ended: the next queued request may open its own."""
        if slot.connecting > 0:
            slot.connecting -= 1
        waiter = self._next_waiter(slot)
        if waiter is not None:
            waiter.connect(slot.target)
        elif slot.state is TargetState.DRAINING:
            self._forget_if_unused(slot)

    def opened(self, up: Connection) -> None:
        self.connections.add(up)

    def lost(self, up: Connection) -> None:
        """`up`'s connection is gone."""
        self.connections.discard(up)
        if up.pooled:
            up.pooled = False
            slot = self._slots.get(up.target)
            if slot is not None:
                with contextlib.suppress(ValueError):
                    slot.idle.remove(up)

    def close_idle(self) -> None:
        for slot in list(self._slots.values()):
            idle, slot.idle = slot.idle, []
            for up in idle:
                up.pooled = False
                up.close()

    def sweep_idle(self, now: float) -> None:
        """Close the connections idle for `idle_seconds` or more."""
        for slot in self._slots.values():
            idle = slot.idle
            if idle and now - idle[0].idle_since >= self.idle_seconds:
                for up in [u for u in idle if now - u.idle_since >= self.idle_seconds]:
                    idle.remove(up)
                    up.pooled = False
                    up.close()

    def abort_all(self) -> None:
        for up in list(self.connections):
            up.abort()

    # -- drain ---------------------------------------------------------------------------

    async def wait_drained(self, targets: Iterable[Target], timeout: float) -> bool:
        """Wait until nothing is in flight to `targets`; False if some still are after `timeout` seconds."""
        targets = tuple(targets)
        slots = self._slots
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        self._drain_waiters += 1
        try:
            while any((s := slots.get(t)) is not None and s.in_flight for t in targets):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                self._drained.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._drained.wait()
            return True
        finally:
            self._drain_waiters -= 1

    # -- internals -----------------------------------------------------------------------

    def _next_waiter(self, slot: Slot) -> Waiter | None:
        waiting = slot.waiters
        while waiting:
            waiter = waiting.popleft()
            if waiter.claim(slot):
                return waiter
        return None

    def _forget_if_unused(self, slot: Slot) -> None:
        if slot.unused() and self._slots.get(slot.target) is slot:
            del self._slots[slot.target]
