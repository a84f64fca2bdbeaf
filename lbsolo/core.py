"""lbsolo's use cases and its reconcile loop.

Core owns the desired state (apps and their current release, in State) and compares it with
the containers the engine reports. The decisions are pure functions (`plan`, `routes_for`);
the Platform class runs them and does the I/O. Core pushes routes and zone records into the
proxy and DNS through the `publish` callback: those modules never import core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from lbsolo import run
from lbsolo.build import Builder, LogBuffer
from lbsolo.config import Settings
from lbsolo.engine import Engine
from lbsolo.errors import DeployFailed, EngineError, LbsoloError
from lbsolo.models import App, Build, DeployStep, Release, ReleaseStatus, Replica, validate_app_name
from lbsolo.proxy import Route, Target
from lbsolo.state import State

log = logging.getLogger("lbsolo.core")

WEB = "web"


# ---- pure decisions -------------------------------------------------------------------------


class ActionKind(StrEnum):
    RUN = "run"  # start a new replica of the desired release
    RESTART = "restart"  # start an existing stopped replica of the desired release
    REMOVE = "remove"  # stop and remove a replica nobody wants


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    app: str
    release: int | None = None
    replica: Replica | None = None


def plan(desired: Mapping[str, int | None], actual: list[Replica], replicas: int = 1) -> list[Action]:
    """What to do so that each app runs `replicas` web replicas of its desired release, and nothing else."""
    actions: list[Action] = []
    by_app: dict[str, list[Replica]] = {}
    for r in actual:
        by_app.setdefault(r.app, []).append(r)
    for app, mine in sorted(by_app.items()):
        if app not in desired:
            actions += [Action(ActionKind.REMOVE, app, r.release, r) for r in mine]
    for app, version in sorted(desired.items()):
        mine = by_app.get(app, [])
        current = [r for r in mine if r.release == version and r.process == WEB]
        stale = [r for r in mine if r not in current]
        actions += [Action(ActionKind.REMOVE, app, r.release, r) for r in stale]
        if version is None:
            continue
        running = [r for r in current if r.running]
        stopped = [r for r in current if not r.running]
        # Keep the oldest running replicas; surplus ones (e.g. started twice) go.
        running.sort(key=lambda r: (r.started_at, r.id))
        actions += [Action(ActionKind.REMOVE, app, version, r) for r in running[replicas:]]
        missing = replicas - len(running)
        for r in stopped:
            if missing > 0:
                actions.append(Action(ActionKind.RESTART, app, version, r))
                missing -= 1
            else:
                actions.append(Action(ActionKind.REMOVE, app, version, r))
        actions += [Action(ActionKind.RUN, app, version) for _ in range(missing)]
    return actions


def routes_for(desired: Mapping[str, int | None], actual: list[Replica]) -> dict[str, Route]:
    """The proxy's routes: every app, targeting its running replicas of the desired release."""
    routes = {}
    for app, version in desired.items():
        targets = tuple(
            Target("127.0.0.1", r.host_port)
            for r in sorted(actual, key=lambda r: r.id)
            if r.app == app and r.release == version and r.process == WEB and r.running and r.host_port
        )
        routes[app] = Route(app=app, release=f"v{version}" if version else None, targets=targets)
    return routes


# ---- the platform ---------------------------------------------------------------------------


@dataclass
class DeployJob:
    app: str
    output: LogBuffer
    result: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class Platform:
    """The use cases the API calls, and the reconcile loop the daemon supervises."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        engine: Engine,
        builder: Builder,
        publish: Callable[[dict[str, Route]], None],
    ) -> None:
        self.settings = settings
        self.state = state
        self.engine = engine
        self.builder = builder
        self.publish = publish
        self._locks: dict[str, asyncio.Lock] = {}
        self._backoff: dict[str, tuple[int, float]] = {}  # app -> (failures, not before)
        self._routes: dict[str, Route] = {}
        self.jobs: set[asyncio.Task[None]] = set()

    def lock(self, app: str) -> asyncio.Lock:
        return self._locks.setdefault(app, asyncio.Lock())

    def host_header(self, app: str) -> str:
        return f"{app}.{self.settings.domain}"

    # apps
    async def create_app(self, name: str) -> App:
        validate_app_name(name)
        app = await asyncio.to_thread(self.state.create_app, App(name=name))
        self._publish_route(name, Route(app=name))
        return app

    async def list_apps(self) -> list[dict[str, Any]]:
        apps = await asyncio.to_thread(self.state.list_apps)
        return [self._describe(a) for a in apps]

    async def get_app(self, name: str) -> dict[str, Any]:
        return self._describe(await asyncio.to_thread(self.state.get_app, name))

    def _describe(self, app: App) -> dict[str, Any]:
        route = self._routes.get(app.name)
        if self.lock(app.name).locked():
            status = "deploying"
        elif app.release is None:
            status = "new"
        elif route and route.targets:
            status = "running"
        else:
            status = "down"
        return {
            "name": app.name,
            "status": status,
            "release": f"v{app.release}" if app.release else None,
            "url": self.settings.app_url(app.name),
            "replicas": len(route.targets) if route else 0,
            "created_at": app.created_at,
        }

    async def destroy_app(self, name: str, *, images: bool = False) -> dict[str, Any]:
        await asyncio.to_thread(self.state.get_app, name)
        async with self.lock(name):
            replicas = await asyncio.to_thread(self.engine.list_replicas, name)
            await run.stop_replicas(self.engine, replicas, self.settings.stop_timeout)
            await asyncio.to_thread(self.state.delete_app, name)
            removed = await asyncio.to_thread(self.engine.remove_app_images, name) if images else []
            self._routes.pop(name, None)
            self.publish(dict(self._routes))
        self._locks.pop(name, None)
        return {"name": name, "containers": len(replicas), "images": len(removed)}

    async def releases(self, name: str) -> list[Release]:
        await asyncio.to_thread(self.state.get_app, name)
        return await asyncio.to_thread(self.state.list_releases, name)

    async def replicas(self, name: str) -> list[Replica]:
        await asyncio.to_thread(self.state.get_app, name)
        return await asyncio.to_thread(self.engine.list_replicas, name)

    async def logs(self, name: str, tail: int = 200) -> list[dict[str, str]]:
        replicas = await self.replicas(name)
        out = []
        for r in sorted(replicas, key=lambda r: (r.release or 0, r.name)):
            text = await asyncio.to_thread(self.engine.logs, r.id, tail)
            out += [{"replica": r.name, "line": line} for line in text.splitlines()]
        return out

    # deploy: build -> release -> rollout
    async def deploy(self, name: str, context: Path) -> DeployJob:
        app = await asyncio.to_thread(self.state.get_app, name)
        job = DeployJob(app=app.name, output=LogBuffer())
        build_job = self.builder.submit(app.name, context, job.output)
        job.output.append(f"-----> Building {app.name} (build {build_job.build.id})")
        job.task = asyncio.create_task(self._deploy(job, build_job.done), name=f"deploy-{app.name}")
        self.jobs.add(job.task)
        job.task.add_done_callback(self.jobs.discard)
        return job

    async def _deploy(self, job: DeployJob, image: asyncio.Future[str]) -> None:
        out = job.output
        try:
            try:
                image_id = await image
            except LbsoloError as e:
                raise DeployFailed(f"build failed, nothing was released: {e.message}") from e
            out.append(f"-----> Built image {image_id[7:19] if image_id.startswith('sha256:') else image_id}")
            async with self.lock(job.app):
                release = await self._new_release(job.app, image_id)
                out.append(f"-----> Releasing {release.label}")
                await self._rollout(release, out)
            url = self.settings.app_url(job.app)
            out.append(f"-----> {job.app} {release.label} is serving at {url}")
            job.result = {"ok": True, "app": job.app, "release": release.label, "url": url}
        except LbsoloError as e:
            out.append(f" !     {e.message}")
            job.result = {"ok": False, "app": job.app, "error": {"code": e.code, "message": e.message}}
        except Exception as e:
            log.exception("deploy of %s crashed", job.app)
            job.result = {"ok": False, "app": job.app, "error": {"code": "error", "message": str(e)}}
        finally:
            out.close()

    async def _new_release(self, app: str, image_id: str) -> Release:
        version = await asyncio.to_thread(self.state.next_version, app)
        release = Release(app=app, version=version, image=image_id, description="deploy")
        await asyncio.to_thread(self.engine.tag_image, image_id, f"lbsolo/{app}", release.label)
        await asyncio.to_thread(self.state.save_release, release)
        return release

    async def _step(self, release: Release, step: DeployStep, status: ReleaseStatus | None = None) -> None:
        release.step = step
        if status is not None:
            release.status = status
        await asyncio.to_thread(self.state.save_release, release)

    async def _rollout(self, release: Release, out: LogBuffer) -> None:
        """Start the new replica, wait until it answers, swap traffic, stop the old ones."""
        app = release.app
        await self._step(release, DeployStep.START, ReleaseStatus.DEPLOYING)
        new = await run.start_replica(self.engine, release, process=WEB, port=self.settings.container_port)
        out.append(f"       started {new.name} on 127.0.0.1:{new.host_port}")
        try:
            await self._step(release, DeployStep.WAIT_READY)
            await run.wait_ready(
                self.engine, new, host_header=self.host_header(app), timeout=self.settings.deploy_timeout
            )
        except LbsoloError as e:
            release.status, release.error = ReleaseStatus.FAILED, e.message
            await asyncio.to_thread(self.state.save_release, release)
            await run.stop_replicas(self.engine, [new], 0)
            raise DeployFailed(
                f"{release.label} failed to start; the previous release keeps serving. {e.message}"
            ) from e
        await self._step(release, DeployStep.SWAP)
        current = await asyncio.to_thread(self.engine.list_replicas, app)
        self._publish_route(app, routes_for({app: release.version}, current)[app])
        out.append("       traffic switched")

        await self._step(release, DeployStep.STOP_OLD)
        old = [r for r in current if r.release != release.version or r.process != WEB]
        await run.stop_replicas(self.engine, old, self.settings.stop_timeout)

        previous = await asyncio.to_thread(self.state.get_app, app)
        for r in await asyncio.to_thread(self.state.list_releases, app):
            if r.status == ReleaseStatus.ACTIVE and r.version != release.version:
                r.status = ReleaseStatus.SUPERSEDED
                await asyncio.to_thread(self.state.save_release, r)
        previous.release = release.version
        await asyncio.to_thread(self.state.save_app, previous)
        await self._step(release, DeployStep.DONE, ReleaseStatus.ACTIVE)

    def record_build(self, build: Build) -> None:
        self.state.save_build(build)

    # reconcile
    def _publish_route(self, app: str, route: Route) -> None:
        self._routes[app] = route
        self.publish(dict(self._routes))

    async def reconcile(self) -> list[Action]:
        """One pass: make the engine match the desired state; adopt what already matches."""
        apps = await asyncio.to_thread(self.state.list_apps)
        actual = await asyncio.to_thread(self.engine.list_replicas)
        busy = {a.name for a in apps if self.lock(a.name).locked()}
        desired = {a.name: a.release for a in apps if a.name not in busy}
        actions = plan(desired, [r for r in actual if r.app not in busy])
        for action in actions:
            try:
                await self._act(action)
            except LbsoloError as e:
                log.warning("reconcile: %s %s failed: %s", action.kind, action.app, e.message)
        if actions:
            actual = await asyncio.to_thread(self.engine.list_replicas)
        routes = routes_for(desired, actual)
        for app in busy:
            if app in self._routes:
                routes[app] = self._routes[app]
        if routes != self._routes:
            self._routes = routes
            self.publish(dict(routes))
        return actions

    async def _act(self, action: Action) -> None:
        if action.kind is ActionKind.REMOVE:
            assert action.replica is not None
            log.info("removing %s (not wanted)", action.replica.name)
            await asyncio.to_thread(self.engine.stop_and_remove, action.replica.id, self.settings.stop_timeout)
            return
        failures, not_before = self._backoff.get(action.app, (0, 0.0))
        if time.monotonic() < not_before:
            return
        self._backoff[action.app] = (failures + 1, time.monotonic() + min(2.0**failures, 60.0))
        if action.kind is ActionKind.RESTART:
            assert action.replica is not None
            log.info("restarting %s", action.replica.name)
            await asyncio.to_thread(self.engine.start, action.replica.id)
        else:
            assert action.release is not None
            release = await asyncio.to_thread(self.state.get_release, action.app, action.release)
            log.info("starting a replica of %s %s", action.app, release.label)
            await run.start_replica(self.engine, release, process=WEB, port=self.settings.container_port)

    def serving_replicas(self) -> int:
        return sum(len(r.targets) for r in self._routes.values())

    def note_healthy(self) -> None:
        """Forget the restart backoff of apps that are serving again."""
        for app, route in self._routes.items():
            if route.targets:
                self._backoff.pop(app, None)

    async def reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
                self.note_healthy()
            except EngineError as e:
                log.warning("reconcile skipped: %s", e.message)
            await asyncio.sleep(self.settings.reconcile_interval)
