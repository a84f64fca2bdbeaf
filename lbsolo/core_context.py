"""What the core's parts share: one explicit context, passed to each of them when it is built.

The use cases (core.py), the rollout steps (core_rollout.py) and the reconcile loop
(core_reconcile.py) all work on the same desired state, the same per-app locks, the same
route book and the same restart histories; CoreContext holds them, with the few helpers every
part needs (read and save an app, the desired state of an app, a replica's spec, the route
book's publishing). It makes no decisions and starts no work of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Protocol

from lbsolo import run
from lbsolo.config import Settings
from lbsolo.core_plan import Desired, RestartHistory, hsts_line
from lbsolo.engine import Engine
from lbsolo.events import EventBus
from lbsolo.models import WEB, App, Build, Release, Replica, reserved_host
from lbsolo.proxy_routes import Route, Target
from lbsolo.run_logs import LogCollector, LogStore
from lbsolo.state import State

log = logging.getLogger("lbsolo.core")


class Ingress(Protocol):
    """Where core pushes routes: the proxy (and the DNS zone derived from them)."""

    def publish(self, routes: dict[str, Route]) -> None: ...

    async def drain(self, targets: Iterable[Target], timeout: float) -> bool: ...

    def metrics(self) -> dict[str, dict[str, Any]]: ...

    def prometheus(self) -> str: ...

    def last_requests(self) -> dict[str, float]:
        """When each app was last asked for (time.monotonic())."""
        ...

    def wake_failed(self, app: str, message: str) -> None:
        """A sleeping app could not wake: the requests held for it get 503 with `message`."""
        ...


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


class CoreContext:
    """Settings, state, engine, ingress, events and logs, and the core's shared books."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        engine: Engine,
        ingress: Ingress,
        bus: EventBus,
        logs: LogStore,
        collector: LogCollector | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.engine = engine
        self.ingress = ingress
        self.bus = bus
        self.logs = logs
        self.collector = collector or LogCollector(logs, engine.follow_logs)
        # Before per-app networks every app joined this one; kept only to remove it once empty.
        self.shared_network = f"lbsolo-{engine.instance}"
        self.locks: dict[str, AppLock] = {}
        self.restarts: dict[str, RestartHistory] = {}  # per app; absent: healthy (see core_reconcile)
        self.routes: dict[str, Route] = {}  # the route book: per app ...
        self.static: dict[str, Route] = {}  # ... and static routes, by name (never an app's name)
        self.wake_event = asyncio.Event()  # set: the reconcile loop runs a pass now
        self.jobs: set[asyncio.Task[Any]] = set()  # background use cases (deploys, saves)
        # Set while the daemon hands over to its successor: the API refuses changes, saying this.
        self.pause_note: str | None = None
        self._build_saved: asyncio.Task[None] | None = None  # the last build record write

    # ---- locks: every change of an app holds its lock
    def lock(self, app: str) -> AppLock:
        return self.locks.setdefault(app, AppLock())

    def lock_marks(self) -> dict[str, tuple[AppLock, int]]:
        return {name: (lock, lock.turns) for name, lock in self.locks.items()}

    def unsettled(self, app: str, marks: dict[str, tuple[AppLock, int]]) -> bool:
        """Whether a change of `app` is running, or ran, since `marks` were taken."""
        lock = self.locks.get(app)
        if lock is None:
            return False  # nothing changed it since the daemon started: every change takes the lock
        if lock.locked():
            return True
        return marks.get(app, (lock, 0)) != (lock, lock.turns)

    def wake(self) -> None:
        """Ask for a reconcile pass now (Docker events call this)."""
        self.wake_event.set()

    # ---- the route book
    def publish_route(self, app: str, route: Route) -> None:
        self.routes[app] = route
        self.push()

    def push(self) -> None:
        """Hand the proxy (and DNS) every route at once, apps' and static ones: one atomic swap.

        A custom domain of lbsolo's own (stored before it was reserved) is left out: it would
        take the UI's host, and the admin's session cookie with it.
        """
        routes = {**self.static, **self.routes}
        domain = self.settings.domain
        for name, route in routes.items():
            if any(reserved_host(d.split("/", 1)[0], domain) for d in route.domains):
                kept = tuple(d for d in route.domains if not reserved_host(d.split("/", 1)[0], domain))
                routes[name] = replace(route, domains=kept)
        self.ingress.publish(routes)

    # ---- apps and releases
    async def app(self, name: str) -> App:
        return await asyncio.to_thread(self.state.get_app, name)

    async def save(self, obj: App | Release) -> None:
        await asyncio.to_thread(self.state.save_app if isinstance(obj, App) else self.state.save_release, obj)

    @staticmethod
    def desired(app: App, version: int | None = None) -> Desired:
        return Desired(
            app.release if version is None else version,
            {} if app.asleep else app.formation,
            tuple(app.domains),
            app.https_redirect,
            app.request_buffering,
            hsts_line(app.hsts_max_age, app.hsts_subdomains),
            app.asleep,
        )

    def host_header(self, app: str) -> str:
        return f"{app}.{self.settings.domain}"

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.jobs.add(task)
        task.add_done_callback(self.jobs.discard)
        return task

    def record_build(self, build: Build) -> None:
        """Save a build's record off the event loop, in the order its changes happen.

        The builder calls this as a build is queued, starts and ends; a state write (an fsync or
        two) would otherwise hold up the upload's answer and the build itself.
        """
        previous, snapshot = self._build_saved, replace(build)

        async def save() -> None:
            if previous is not None:
                await asyncio.wait([previous])  # its failure was logged by its own task
            try:
                await asyncio.to_thread(self.state.save_build, snapshot)
            except Exception:
                log.exception("saving build %s failed", snapshot.id)

        self._build_saved = self.spawn(save(), f"save-build-{build.id}")

    # ---- replicas
    def network(self, app: str) -> str:
        """The app's own network: its replicas, one-off runs and attached add-ons, nobody else."""
        return f"lbsolo-{self.engine.instance}-{app}"

    async def ensure_network(self, app: str) -> str:
        name = self.network(app)
        await asyncio.to_thread(self.engine.ensure_network, name)
        return name

    def spec(self, app: App, release: Release, process: str, volumes: dict[str, str]) -> run.ReplicaSpec:
        limits = app.resources.get(process, {})
        return run.ReplicaSpec(
            release=release,
            process=process,
            port=self.settings.container_port if process == WEB else None,
            network=self.network(app.name),
            memory=limits.get("memory"),
            cpus=limits.get("cpus"),
            volumes=volumes,
        )

    async def volumes(self, app: App) -> dict[str, str]:
        out = {}
        for name, path in app.volumes.items():
            out[await asyncio.to_thread(self.engine.ensure_volume, app.name, name)] = path
        return out

    def watch_logs(self, replicas: Iterable[Replica], adopted: bool = False) -> None:
        """Follow replicas' output; for ones already running, only what came after the stored lines."""
        for r in replicas:
            if r.running and r.release is not None:
                since = self.logs.last_ts(r.app) if adopted else None
                self.collector.watch(r.id, r.app, f"v{r.release}", r.process, r.name, since)
