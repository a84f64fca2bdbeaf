"""The reconcile loop: make the engine match the desired state, and publish the routes.

Each pass reads the apps (their release and formation) and the containers the engine reports,
asks `plan` what to start, restart or remove, does it, and hands the proxy and DNS every route
in one swap. The engine's events wake the loop early; it runs every few seconds anyway.

A replica that dies after running healthy is restarted at once, on its `die` event; an app whose
replicas keep dying soon after their restart backs off (`RestartHistory` in plan decides).

Rollouts and other changes of one app hold its AppLock; a pass leaves an app alone when a
change of it ran at any time during the pass, since what the pass read may already be stale.
Platform composes it over the core's context (core_context.py); it must not make releases or
build anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from lbsolo import run
from lbsolo.core_context import CoreContext
from lbsolo.core_plan import Action, ActionKind, RestartHistory, interrupted, plan, routes_for
from lbsolo.errors import EngineError, LbsoloError
from lbsolo.events import EventKind
from lbsolo.models import App, DeployStep, Release, ReleaseStatus

log = logging.getLogger("lbsolo.core")

CRASH_LOOP_AFTER = 5  # restarts in a row without becoming healthy
# For a moment after a container's `die` event (some 0.2 s here) the engine still lists it as
# running; a pass then would find nothing to restart, and the next one would come only with the
# reconcile interval. The event's wake waits, this long at most, until the engine lists the
# container as stopped.
DIED_SETTLE_TIMEOUT = 5.0


class Reconciler:
    """The reconcile loop over the core's context: passes, restarts of crashed replicas, recovery."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx

    def wake(self) -> None:
        """Ask for a reconcile pass now (Docker events call this)."""
        self.ctx.wake()

    async def reconcile(self) -> list[Action]:
        """One pass: make the engine match the desired state; adopt what already matches."""
        ctx = self.ctx
        # A rollout may begin or end while this pass reads: its app is left to it, else the pass
        # would act on (and route to) the release it saw, which the rollout is replacing.
        marks = ctx.lock_marks()
        apps = await asyncio.to_thread(ctx.state.list_apps)
        actual = await asyncio.to_thread(ctx.engine.list_replicas)
        busy = {a.name for a in apps if ctx.unsettled(a.name, marks)}
        desired = {a.name: ctx.desired(a) for a in apps if a.name not in busy}
        actions = [a for a in plan(desired, [r for r in actual if r.app not in busy]) if a.app not in busy]
        restarts: dict[str, int | None] = {}  # app -> its restarts in a row with this pass's, None: backing off
        for action in actions:
            if ctx.unsettled(action.app, marks):
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
            actual = await asyncio.to_thread(ctx.engine.list_replicas)
        ctx.watch_logs((r for r in actual if r.app in desired), adopted=True)
        ctx.collector.prune()
        routes = routes_for(desired, actual)
        for app in {*routes, *ctx.routes}:
            if ctx.unsettled(app, marks):  # its change published its route (or removed it)
                routes.pop(app, None)
                if app in ctx.routes:
                    routes[app] = ctx.routes[app]
        if routes != ctx.routes:
            ctx.routes = routes
            ctx.push()
        now = time.monotonic()
        for app, history in list(ctx.restarts.items()):
            if app not in desired or any(a.app == app and a.kind is not ActionKind.REMOVE for a in actions):
                continue
            history = history.came_back()  # every replica up
            if history.settled(now):
                del ctx.restarts[app]
            else:
                ctx.restarts[app] = history
        return actions

    def _may_restart(self, app: str) -> int | None:
        """Whether this pass restarts `app`'s crashed replicas: its restarts in a row counting this
        one, or None while it backs off (a wake is set for when the backoff ends)."""
        ctx = self.ctx
        now = time.monotonic()
        history = ctx.restarts[app] = RestartHistory(*ctx.restarts.get(app, ())).went_down(now)
        delay = history.restart_delay(now)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.wake)
            return None
        history = ctx.restarts[app] = history.restarted(now)
        if history.in_a_row == CRASH_LOOP_AFTER:
            log.warning("%s is crash-looping (%d restarts in a row)", app, history.in_a_row)
        return history.in_a_row

    async def _act(self, action: Action, apps: dict[str, App], restarts: int) -> None:
        """Do one action; `restarts` is the app's restarts in a row, this one included."""
        ctx = self.ctx
        if action.kind is ActionKind.REMOVE:
            assert action.replica is not None
            log.info("removing %s (not wanted)", action.replica.name)
            await asyncio.to_thread(ctx.engine.stop_and_remove, action.replica.id, ctx.settings.stop_timeout)
            return
        if action.kind is ActionKind.RESTART:
            assert action.replica is not None
            log.info("restarting %s", action.replica.name)
            ctx.bus.emit(
                EventKind.REPLICA_CRASHED, action.app, f"{action.replica.name} stopped", replica=action.replica.name
            )
            await asyncio.to_thread(ctx.engine.start, action.replica.id)
            ctx.bus.emit(EventKind.REPLICA_RESTARTED, action.app, f"{action.replica.name} restarted", restarts=restarts)
        else:
            assert action.release is not None
            app = apps[action.app]
            release = await asyncio.to_thread(ctx.state.get_release, action.app, action.release)
            log.info("starting a %s replica of %s %s", action.process, action.app, release.label)
            await ctx.ensure_network(action.app)
            spec = ctx.spec(app, release, action.process, await ctx.volumes(app))
            replica = await run.start_replica(ctx.engine, spec)
            ctx.watch_logs([replica])
            ctx.bus.emit(EventKind.REPLICA_RESTARTED, action.app, f"{replica.name} started", restarts=restarts)

    async def recover(self) -> int:
        """After a restart: finish or fail the rollouts a killed daemon left (see plan.interrupted).

        Returns how many it failed. Replicas of a failed release, and the previous release's of a
        finished one, are left to the first reconcile pass, which removes what the desired state
        does not want. One-off containers left by a daemon killed while it waited for them go:
        nobody waits now.
        """
        ctx = self.ctx
        leftovers = [r for r in await asyncio.to_thread(ctx.engine.list_replicas) if r.one_off]
        await run.stop_replicas(ctx.engine, leftovers, 0)
        count = 0
        for app in await asyncio.to_thread(ctx.state.list_apps):
            releases = await asyncio.to_thread(ctx.state.list_releases, app.name)
            finish, failed = interrupted(releases, app.release)
            for r in failed:
                r.status, r.error = ReleaseStatus.FAILED, f"interrupted at step {r.step} by a daemon restart"
                await ctx.save(r)
                count += 1
            if finish is not None:
                await self._finish_interrupted(app, finish, releases)
        return count

    async def _finish_interrupted(self, app: App, release: Release, releases: list[Release]) -> None:
        ctx = self.ctx
        log.warning("%s %s was interrupted after its swap: it is made current", app.name, release.label)
        for r in releases:
            if r.status == ReleaseStatus.ACTIVE and r.version != release.version:
                r.status = ReleaseStatus.SUPERSEDED
                await ctx.save(r)
        # The rollout saves the app (its config too) only at its end: bring it in line with the release.
        app.release = release.version
        app.config = dict(release.config)
        app.secrets = sorted(set(release.secrets) | (set(app.secrets) & set(release.config)))
        await ctx.save(app)
        release.status, release.step = ReleaseStatus.ACTIVE, DeployStep.DONE
        await ctx.save(release)

    def serving_replicas(self) -> int:
        return sum(len(r.targets) for r in self.ctx.routes.values())

    async def reconcile_forever(self) -> None:
        ctx = self.ctx
        while True:
            ctx.wake_event.clear()  # before the pass: events that come during it ask for another
            try:
                await self.reconcile()
            except EngineError as e:
                log.warning("reconcile skipped: %s", e.message)
            try:
                await asyncio.wait_for(ctx.wake_event.wait(), ctx.settings.reconcile_interval)
                await asyncio.sleep(0.2)  # let a burst of events settle into one pass
            except TimeoutError:
                pass

    async def wake_when_stopped(self, app: str, container_id: str, timeout: float = DIED_SETTLE_TIMEOUT) -> None:
        """Wake the loop once the engine lists a container that died as stopped (or is gone)."""
        start = time.monotonic()
        try:
            while (waited := time.monotonic() - start) < timeout:
                replicas = await asyncio.to_thread(self.ctx.engine.list_replicas, app or None)
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
                for event in self.ctx.engine.events():
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
