"""The reconcile loop: make the engine match the desired state, and publish the routes.

Each pass reads the apps (their release and formation) and the containers the engine reports,
asks `plan` what to start, restart or remove, does it, and hands the proxy and DNS every route
in one swap. The engine's events wake the loop early; it runs every few seconds anyway.

A replica that dies after running healthy is restarted at once, on its `die` event; an app whose
replicas keep dying soon after their restart backs off (`RestartHistory` in plan decides).

Rollouts and other changes of one app hold its AppLock; a pass leaves an app alone when a
change of it ran at any time during the pass, since what the pass read may already be stale.
This is a part of core's Platform (a mixin over the state Platform sets up); it must not make
releases or build anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from lbsolo import run
from lbsolo.core_plan import Action, ActionKind, RestartHistory, interrupted, plan, routes_for
from lbsolo.errors import EngineError, LbsoloError
from lbsolo.events import EventBus, EventKind
from lbsolo.models import App, DeployStep, Release, ReleaseStatus, reserved_host
from lbsolo.proxy import Route, Target

if TYPE_CHECKING:
    from lbsolo.config import Settings
    from lbsolo.engine import Engine
    from lbsolo.run_logs import LogCollector
    from lbsolo.state import State

log = logging.getLogger("lbsolo.core")

CRASH_LOOP_AFTER = 5  # restarts in a row without becoming healthy
# For a moment after a container's `die` event (some 0.2 s here) the engine still lists it as
# running; a pass then would find nothing to restart, and the next one would come only with the
# reconcile interval. The event's wake waits, this long at most, until the engine lists the
# container as stopped.
DIED_SETTLE_TIMEOUT = 5.0


class Ingress(Protocol):
    """Where core pushes routes: the proxy (and the DNS zone derived from them)."""

    def publish(self, routes: dict[str, Route]) -> None: ...

    async def drain(self, targets: Iterable[Target], timeout: float) -> bool: ...

    def metrics(self) -> dict[str, dict[str, Any]]: ...

    def prometheus(self) -> str: ...


class AppLock(asyncio.Lock):
    """One app's lock, counting how often it changed hands (taken, and let go).

    A reader that finds it free and at the same count after its reads as before them knows no
    change of the app began, ran or ended in between.
    """

    def __init__(self) -> None:
        super().__init__()
        self.turns = 0

    async def acquire(self) -> bool:
        await super().acquire()
        self.turns += 1
        return True

    def release(self) -> None:
        super().release()
        self.turns += 1


class Scheduler:
    """Platform's reconcile loop and route table."""

    # Set up by Platform.__init__.
    settings: Settings
    state: State
    engine: Engine
    ingress: Ingress
    bus: EventBus
    collector: LogCollector
    network: str
    _locks: dict[str, AppLock]
    _restarts: dict[str, RestartHistory]  # per app; absent: healthy
    _routes: dict[str, Route]  # per app
    _static: dict[str, Route]  # static routes, by name (never an app's name)
    _wake: asyncio.Event
    # Platform's and the rollout's helpers.
    _save: Any
    _desired: Any
    _spec: Any
    _volumes: Any
    _watch_logs: Any

    def lock(self, app: str) -> AppLock:
        return self._locks.setdefault(app, AppLock())

    def _lock_marks(self) -> dict[str, tuple[AppLock, int]]:
        return {name: (lock, lock.turns) for name, lock in self._locks.items()}

    def _unsettled(self, app: str, marks: dict[str, tuple[AppLock, int]]) -> bool:
        """Whether a change of `app` is running, or ran, since `marks` were taken."""
        lock = self._locks.get(app)
        if lock is None:
            return False  # nothing changed it since the daemon started: every change takes the lock
        if lock.locked():
            return True
        return marks.get(app, (lock, 0)) != (lock, lock.turns)

    def _publish_route(self, app: str, route: Route) -> None:
        self._routes[app] = route
        self._push()

    def _push(self) -> None:
        """Hand the proxy (and DNS) every route at once, apps' and static ones: one atomic swap.

        A custom domain of lbsolo's own (stored before it was reserved) is left out: it would
        take the UI's host, and the admin's session cookie with it.
        """
        routes = {**self._static, **self._routes}
        domain = self.settings.domain
        for name, route in routes.items():
            if any(reserved_host(d.split("/", 1)[0], domain) for d in route.domains):
                kept = tuple(d for d in route.domains if not reserved_host(d.split("/", 1)[0], domain))
                routes[name] = replace(route, domains=kept)
        self.ingress.publish(routes)

    def wake(self) -> None:
        """Ask for a reconcile pass now (Docker events call this)."""
        self._wake.set()

    async def reconcile(self) -> list[Action]:
        """One pass: make the engine match the desired state; adopt what already matches."""
        # A rollout may begin or end while this pass reads: its app is left to it, else the pass
        # would act on (and route to) the release it saw, which the rollout is replacing.
        marks = self._lock_marks()
        apps = await asyncio.to_thread(self.state.list_apps)
        actual = await asyncio.to_thread(self.engine.list_replicas)
        busy = {a.name for a in apps if self._unsettled(a.name, marks)}
        desired = {a.name: self._desired(a) for a in apps if a.name not in busy}
        actions = [a for a in plan(desired, [r for r in actual if r.app not in busy]) if a.app not in busy]
        restarts: dict[str, int | None] = {}  # app -> its restarts in a row with this pass's, None: backing off
        for action in actions:
            if self._unsettled(action.app, marks):
                continue
            if action.kind is not ActionKind.REMOVE:
                if action.app not in restarts:
                    restarts[action.app] = self._may_restart(action.app)
                if restarts[action.app] is None:
                    continue
            try:
                await self._act(action, {a.name: a for a in apps}, restarts.get(action.app) or 0)
            except LbsoloError as e:
                log.warning("reconcile: %s %s failed: %s", action.kind, action.app, e.message)
        if actions:
            actual = await asyncio.to_thread(self.engine.list_replicas)
        self._watch_logs((r for r in actual if r.app in desired), adopted=True)
        self.collector.prune()
        routes = routes_for(desired, actual)
        for app in {*routes, *self._routes}:
            if self._unsettled(app, marks):  # its change published its route (or removed it)
                routes.pop(app, None)
                if app in self._routes:
                    routes[app] = self._routes[app]
        if routes != self._routes:
            self._routes = routes
            self._push()
        now = time.monotonic()
        for app, history in list(self._restarts.items()):
            if app not in desired or any(a.app == app and a.kind is not ActionKind.REMOVE for a in actions):
                continue
            history = history.came_back()  # every replica up
            if history.settled(now):
                del self._restarts[app]
            else:
                self._restarts[app] = history
        return actions

    def _may_restart(self, app: str) -> int | None:
        """Whether this pass restarts `app`'s crashed replicas: its restarts in a row counting this
        one, or None while it backs off (a wake is set for when the backoff ends)."""
        now = time.monotonic()
        history = self._restarts[app] = RestartHistory(*self._restarts.get(app, ())).went_down(now)
        delay = history.restart_delay(now)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.wake)
            return None
        history = self._restarts[app] = history.restarted(now)
        if history.in_a_row == CRASH_LOOP_AFTER:
            log.warning("%s is crash-looping (%d restarts in a row)", app, history.in_a_row)
        return history.in_a_row

    async def _act(self, action: Action, apps: dict[str, App], restarts: int) -> None:
        """Do one action; `restarts` is the app's restarts in a row, this one included."""
        if action.kind is ActionKind.REMOVE:
            assert action.replica is not None
            log.info("removing %s (not wanted)", action.replica.name)
            await asyncio.to_thread(self.engine.stop_and_remove, action.replica.id, self.settings.stop_timeout)
            return
        if action.kind is ActionKind.RESTART:
            assert action.replica is not None
            log.info("restarting %s", action.replica.name)
            self.bus.emit(
                EventKind.REPLICA_CRASHED, action.app, f"{action.replica.name} stopped", replica=action.replica.name
            )
            await asyncio.to_thread(self.engine.start, action.replica.id)
            self.bus.emit(
                EventKind.REPLICA_RESTARTED, action.app, f"{action.replica.name} restarted", restarts=restarts
            )
        else:
            assert action.release is not None
            app = apps[action.app]
            release = await asyncio.to_thread(self.state.get_release, action.app, action.release)
            log.info("starting a %s replica of %s %s", action.process, action.app, release.label)
            await asyncio.to_thread(self.engine.ensure_network, self.network)
            spec = self._spec(app, release, action.process, await self._volumes(app))
            replica = await run.start_replica(self.engine, spec)
            self._watch_logs([replica])
            self.bus.emit(EventKind.REPLICA_RESTARTED, action.app, f"{replica.name} started", restarts=restarts)

    async def recover(self) -> int:
        """After a restart: finish or fail the rollouts a killed daemon left (see plan.interrupted).

        Returns how many it failed. Replicas of a failed release, and the previous release's of a
        finished one, are left to the first reconcile pass, which removes what the desired state
        does not want. One-off containers left by a daemon killed while it waited for them go:
        nobody waits now.
        """
        leftovers = [r for r in await asyncio.to_thread(self.engine.list_replicas) if r.one_off]
        await run.stop_replicas(self.engine, leftovers, 0)
        count = 0
        for app in await asyncio.to_thread(self.state.list_apps):
            releases = await asyncio.to_thread(self.state.list_releases, app.name)
            finish, failed = interrupted(releases, app.release)
            for r in failed:
                r.status, r.error = ReleaseStatus.FAILED, f"interrupted at step {r.step} by a daemon restart"
                await self._save(r)
                count += 1
            if finish is not None:
                await self._finish_interrupted(app, finish, releases)
        return count

    async def _finish_interrupted(self, app: App, release: Release, releases: list[Release]) -> None:
        log.warning("%s %s was interrupted after its swap: it is made current", app.name, release.label)
        for r in releases:
            if r.status == ReleaseStatus.ACTIVE and r.version != release.version:
                r.status = ReleaseStatus.SUPERSEDED
                await self._save(r)
        # The rollout saves the app (its config too) only at its end: bring it in line with the release.
        app.release = release.version
        app.config = dict(release.config)
        app.secrets = sorted(set(release.secrets) | (set(app.secrets) & set(release.config)))
        await self._save(app)
        release.status, release.step = ReleaseStatus.ACTIVE, DeployStep.DONE
        await self._save(release)

    def serving_replicas(self) -> int:
        return sum(len(r.targets) for r in self._routes.values())

    async def reconcile_forever(self) -> None:
        while True:
            self._wake.clear()  # before the pass: events that come during it ask for another
            try:
                await self.reconcile()
            except EngineError as e:
                log.warning("reconcile skipped: %s", e.message)
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval)
                await asyncio.sleep(0.2)  # let a burst of events settle into one pass
            except TimeoutError:
                pass

    async def wake_when_stopped(self, app: str, container_id: str, timeout: float = DIED_SETTLE_TIMEOUT) -> None:
        """Wake the loop once the engine lists a container that died as stopped (or is gone)."""
        start = time.monotonic()
        try:
            while (waited := time.monotonic() - start) < timeout:
                replicas = await asyncio.to_thread(self.engine.list_replicas, app or None)
                if not any(r.id == container_id and r.running for r in replicas):
                    break
                # Often, at first: it is a matter of moments. Seldom after a second: someone
                # started it again meanwhile (`docker restart`), and it stays running.
                await asyncio.sleep(0.02 if waited < 1.0 else 0.25)
        except EngineError as e:
            log.warning("docker events: listing after a die: %s", e.message)
        self.wake()

    async def watch_events(self) -> None:
        """Wake the reconcile loop on container deaths and removals, as the engine reports them."""
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()
        settling: set[asyncio.Task[None]] = set()  # waits for died containers to be listed as stopped

        def died(event: dict[str, str]) -> None:
            task = loop.create_task(self.wake_when_stopped(event["app"], event["id"]))
            settling.add(task)
            task.add_done_callback(settling.discard)

        def pump() -> None:
            # A daemon thread, not to_thread: the event stream blocks forever and must not hold
            # up the interpreter's exit.
            try:
                for event in self.engine.events():
                    if event["action"] == "die":
                        loop.call_soon_threadsafe(died, event)
                    elif event["action"] in ("stop", "destroy", "oom"):
                        loop.call_soon_threadsafe(self.wake)
            except Exception as e:
                log.warning("docker events: %s; retrying", e)
            with contextlib.suppress(RuntimeError):  # the loop may be closed at shutdown
                loop.call_soon_threadsafe(ended.set)

        try:
            while True:
                ended.clear()
                threading.Thread(target=pump, name="docker-events", daemon=True).start()
                await ended.wait()
                await asyncio.sleep(2.0)
        finally:
            for task in settling:
                task.cancel()
