"""lbsolo's use cases and its reconcile loop.

Core owns the desired state (apps, their current release and formation, in State) and
compares it with the containers the engine reports. The decisions are pure functions (`plan`,
`routes_for`, `rollback_target`); the Platform class runs them and does the I/O. Core pushes
routes into the proxy and DNS through an Ingress: those modules never import core.

A rollout is a sequence of named steps (models.DeployStep), saved on the release after each:
release phase -> start new replicas -> wait until healthy -> swap traffic atomically -> drain
the old replicas -> stop them. Rollouts of one app are serialised by a per-app lock; different
apps proceed in parallel; the reconcile loop leaves an app alone while its lock is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from lbsolo import run
from lbsolo.build import Builder, LogBuffer, SourceSpec
from lbsolo.config import Settings
from lbsolo.engine import Engine
from lbsolo.errors import Conflict, DeployFailed, EngineError, InvalidInput, LbsoloError, NotFound
from lbsolo.events import EventBus, EventKind
from lbsolo.git import clone
from lbsolo.logs import LogCollector, LogLine, LogStore
from lbsolo.models import (
    WEB,
    App,
    Build,
    DeployStep,
    HealthCheck,
    Release,
    ReleaseStatus,
    Replica,
    StaticRoute,
    masked_config,
    validate_app_name,
    validate_config_key,
    validate_domain,
    validate_process_name,
)
from lbsolo.plan import (
    Action,
    ActionKind,
    Desired,
    images_to_remove,
    plan,
    rollback_target,
    routes_for,
    static_routes_for,
)
from lbsolo.proxy import Route, Target
from lbsolo.source import pack
from lbsolo.state import State

log = logging.getLogger("lbsolo.core")

CRASH_LOOP_AFTER = 5  # restarts in a row without becoming healthy


class Ingress(Protocol):
    """Where core pushes routes: the proxy (and the DNS zone derived from them)."""

    def publish(self, routes: dict[str, Route]) -> None: ...

    async def drain(self, targets: Iterable[Target], timeout: float) -> bool: ...

    def metrics(self) -> dict[str, dict[str, Any]]: ...

    def prometheus(self) -> str: ...


# ---- the platform ---------------------------------------------------------------------------


class AppLock(asyncio.Lock):
    """One app's lock, counting how often it was taken.

    A reader that finds the same count before and after its reads knows no change of the app
    began or ended in between.
    """

    def __init__(self) -> None:
        super().__init__()
        self.taken = 0

    async def acquire(self) -> bool:
        await super().acquire()
        self.taken += 1
        return True


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
        ingress: Ingress,
        logs: LogStore | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus or EventBus()
        self.stats: Any = None  # the daemon's StatsSampler, for the UI's graphs
        self.notifier: Any = None  # the daemon's WebhookNotifier, for the UI's delivery list
        self.state = state
        self.engine = engine
        self.builder = builder
        self.ingress = ingress
        self.logs = logs or LogStore(settings.logs_dir)
        self.collector = LogCollector(self.logs, engine.follow_logs)
        self.network = f"lbsolo-{engine.instance}"
        self._locks: dict[str, AppLock] = {}
        self._restarts: dict[str, tuple[int, float]] = {}  # app -> (restarts in a row, not before)
        self._routes: dict[str, Route] = {}  # per app
        self._static: dict[str, Route] = {}  # static routes, by name (never an app's name)
        self._static_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.jobs: set[asyncio.Task[Any]] = set()
        self._build_saved: asyncio.Task[None] | None = None  # the last build record write

    def lock(self, app: str) -> AppLock:
        return self._locks.setdefault(app, AppLock())

    def _lock_marks(self) -> dict[str, tuple[AppLock, int]]:
        return {name: (lock, lock.taken) for name, lock in self._locks.items()}

    def _unsettled(self, app: str, marks: dict[str, tuple[AppLock, int]]) -> bool:
        """Whether a change of `app` is running, or ran, since `marks` were taken."""
        lock = self._locks.get(app)
        if lock is None:
            return app in marks  # destroyed meanwhile
        if lock.locked():
            return True
        return marks.get(app, (lock, 0)) != (lock, lock.taken)

    def host_header(self, app: str) -> str:
        return f"{app}.{self.settings.domain}"

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.jobs.add(task)
        task.add_done_callback(self.jobs.discard)
        return task

    async def _app(self, name: str) -> App:
        return await asyncio.to_thread(self.state.get_app, name)

    async def _save(self, obj: App | Release) -> None:
        await asyncio.to_thread(self.state.save_app if isinstance(obj, App) else self.state.save_release, obj)

    @staticmethod
    def _desired(app: App, version: int | None = None) -> Desired:
        return Desired(
            app.release if version is None else version, app.formation, tuple(app.domains), app.https_redirect
        )

    # ---- apps
    async def create_app(self, name: str) -> App:
        validate_app_name(name)
        async with self.lock(name):  # a reconcile pass that read the apps before this keeps its route
            app = await asyncio.to_thread(self.state.create_app, App(name=name))
            self._publish_route(name, Route(app=name))
        self.bus.emit(EventKind.APP_CREATED, name, f"{name} created")
        return app

    async def list_apps(self) -> list[dict[str, Any]]:
        apps = await asyncio.to_thread(self.state.list_apps)
        return [self._describe(a) for a in apps]

    async def get_app(self, name: str) -> dict[str, Any]:
        return self._describe(await self._app(name))

    def _describe(self, app: App) -> dict[str, Any]:
        route = self._routes.get(app.name)
        restarts = self._restarts.get(app.name, (0, 0.0))[0]
        if self.lock(app.name).locked():
            status = "deploying"
        elif app.release is None:
            status = "new"
        elif restarts >= CRASH_LOOP_AFTER:
            status = "crashloop"
        elif route and route.targets:
            status = "running"
        elif app.formation.get(WEB, 0) == 0:
            status = "scaled-down" if not any(app.formation.values()) else "running"
        else:
            status = "down"
        return {
            "name": app.name,
            "status": status,
            "release": f"v{app.release}" if app.release else None,
            "url": self.settings.app_url(app.name),
            "replicas": len(route.targets) if route else 0,
            "formation": app.formation,
            "restarts": restarts,
            "config": masked_config(app.config, app.secrets),
            "health": app.health,
            "resources": app.resources,
            "volumes": app.volumes,
            "domains": app.domains,
            "https_redirect": app.https_redirect,
            "created_at": app.created_at,
        }

    async def destroy_app(self, name: str, *, images: bool = False, volumes: bool = False) -> dict[str, Any]:
        await self._app(name)
        async with self.lock(name):
            replicas = await asyncio.to_thread(self.engine.list_replicas, name)
            self._routes.pop(name, None)
            self._push()
            await run.stop_replicas(self.engine, replicas, self.settings.stop_timeout)
            await asyncio.to_thread(self.state.delete_app, name)
            self.bus.emit(EventKind.APP_DESTROYED, name, f"{name} destroyed", containers=len(replicas))
            removed = await asyncio.to_thread(self.engine.remove_app_images, name) if images else []
            vols = await asyncio.to_thread(self.engine.remove_app_volumes, name) if volumes else 0
            await asyncio.to_thread(self.logs.forget, name)
            if not await asyncio.to_thread(self.state.list_apps):
                # The last app is gone: don't leave a network (and its address pool) behind.
                await asyncio.to_thread(self.engine.remove_network, self.network)
        self._locks.pop(name, None)
        self._restarts.pop(name, None)
        return {"name": name, "containers": len(replicas), "images": len(removed), "volumes": vols}

    async def releases(self, name: str) -> list[dict[str, Any]]:
        app = await self._app(name)
        rows = await asyncio.to_thread(self.state.list_releases, name)
        return [{**r.to_dict(), "config": masked_config(r.config, app.secrets)} for r in rows]

    async def replicas(self, name: str) -> list[Replica]:
        await self._app(name)
        return await asyncio.to_thread(self.engine.list_replicas, name)

    # ---- metrics
    async def request_metrics(self, name: str) -> dict[str, Any]:
        """The proxy's counters for one app since the daemon started."""
        await self._app(name)
        return self.ingress.metrics().get(name, {})

    # ---- logs
    async def read_logs(self, name: str, **filters: Any) -> list[LogLine]:
        await self._app(name)
        await self.logs.flush()
        return await asyncio.to_thread(self.logs.read, name, **filters)

    async def follow_logs(self, name: str) -> AsyncIterator[LogLine]:
        await self._app(name)
        async for line in self.logs.follow(name):
            yield line

    def _watch_logs(self, replicas: Iterable[Replica], adopted: bool = False) -> None:
        """Follow replicas' output; for ones already running, only what came after the stored lines."""
        for r in replicas:
            if r.running and r.release is not None:
                since = self.logs.last_ts(r.app) if adopted else None
                self.collector.watch(r.id, r.app, f"v{r.release}", r.process, r.name, since)

    # ---- deploy: build -> release -> rollout
    async def deploy(self, name: str, context: Path, build_args: dict[str, str] | None = None) -> DeployJob:
        app = await self._app(name)
        job = DeployJob(app=app.name, output=LogBuffer())
        build_job = self.builder.submit(app.name, context, job.output, build_args)
        job.output.append(f"-----> Building {app.name} (build {build_job.build.id})")
        self.bus.emit(EventKind.DEPLOY_STARTED, app.name, f"deploy of {app.name} started", build=build_job.build.id)
        job.task = self._spawn(self._deploy(job, build_job.done, build_job.build.id), f"deploy-{app.name}")
        return job

    async def deploy_git(self, name: str, url: str, ref: str | None) -> DeployJob:
        """Deploy a git URL (a path the daemon can read works too) at a branch, tag or commit."""
        await self._app(name)
        self.settings.uploads_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="git-", dir=self.settings.uploads_dir) as tmp:
            commit = await clone(url, ref, Path(tmp) / "src")
            archive = Path(tmp).with_suffix(".tar")

            def pack_to_file() -> None:
                with pack(Path(tmp) / "src", self.settings.max_upload_bytes) as packed, archive.open("wb") as f:
                    shutil.copyfileobj(packed, f)

            await asyncio.to_thread(pack_to_file)
        job = await self.deploy(name, archive)
        job.output.append(f"       source: {url} at {commit[:12]}")
        return job

    async def hook_secret(self, name: str, create: bool = True) -> str:
        """The app's inbound webhook secret; made on first request."""
        async with self.lock(name):
            app = await self._app(name)
            if not app.hook_secret:
                if not create:
                    raise NotFound(f"{name} has no webhook yet (see: lbsolo hooks:url {name})")
                app.hook_secret = secrets.token_urlsafe(24)
                await self._save(app)
        return app.hook_secret

    async def _deploy(self, job: DeployJob, built: asyncio.Future[tuple[str, SourceSpec]], build_id: str) -> None:
        out = job.output
        try:
            try:
                image_id, spec = await built
            except LbsoloError as e:
                raise DeployFailed(f"build failed, nothing was released: {e.message}") from e
            out.append(f"-----> Built image {image_id.removeprefix('sha256:')[:12]}")
            kinds = ", ".join(sorted(spec.processes)) or "web (the image's CMD)"
            out.append(f"       processes: {kinds}")
            if spec.processes.get("test"):
                await self._test_phase(job.app, image_id, spec.processes["test"], out)
            release = await self._release(
                job.app, out, description="deploy", image=image_id, processes=spec.processes, health=spec.health
            )
            job.result = self._ok(job.app, release)
            self._emit_result(job)
            try:
                cleaned = await self.gc(job.app)
                if cleaned["removed"]:
                    out.append(f"       removed {len(cleaned['removed'])} old image(s) (keeping the last releases')")
            except LbsoloError as e:
                log.warning("image clean-up of %s failed: %s", job.app, e.message)
        except LbsoloError as e:
            out.append(f" !     {e.message}")
            job.result = {"ok": False, "app": job.app, "error": {"code": e.code, "message": e.message}}
            self._emit_result(job)
        except Exception as e:
            log.exception("deploy of %s crashed", job.app)
            job.result = {"ok": False, "app": job.app, "error": {"code": "error", "message": str(e)}}
            self._emit_result(job)
        finally:
            out.close()
            await asyncio.to_thread(self._store_build_log, build_id, out.lines)

    def _store_build_log(self, build_id: str, lines: list[str]) -> None:
        directory = self.settings.logs_dir / "builds"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{build_id}.log").write_text("\n".join(lines) + "\n", encoding="utf-8")

    async def cancel_builds(self, name: str, build_id: str | None = None) -> list[str]:
        await self._app(name)
        return self.builder.cancel(name, build_id)

    async def builds(self, name: str) -> list[Build]:
        await self._app(name)
        return await asyncio.to_thread(self.state.list_builds, name)

    async def build_log(self, name: str, build_id: str | None) -> list[str]:
        builds = await self.builds(name)
        if not builds:
            raise NotFound(f"{name} has no builds")
        build = builds[-1] if build_id is None else next((b for b in builds if b.id.startswith(build_id)), None)
        if build is None:
            raise NotFound(f"{name} has no build {build_id}")
        path = self.settings.logs_dir / "builds" / f"{build.id}.log"
        if not path.exists():
            return [f"(build {build.id} is {build.status}; its log is not stored yet)"]
        return (await asyncio.to_thread(path.read_text, encoding="utf-8")).splitlines()

    async def _test_phase(self, app_name: str, image: str, command: str, out: LogBuffer) -> None:
        """The Procfile's `test:` command, in the new image with the app's config, before any release."""
        app = await self._app(app_name)
        out.append(f"-----> Test phase: {command}")
        await asyncio.to_thread(self.engine.ensure_network, self.network)
        loop = asyncio.get_running_loop()
        env = {**app.config, "LBSOLO_APP": app_name, "LBSOLO_PROCESS": "test"}
        code = await asyncio.to_thread(
            self.engine.run_once,
            app=app_name,
            image=image,
            command=command,
            env=env,
            network=self.network,
            on_output=lambda line: loop.call_soon_threadsafe(out.append, f"       | {line}"),
            timeout=self.settings.build_timeout,
        )
        if code != 0:
            raise DeployFailed(f"the test phase failed (exit {code}); nothing was released")
        out.append("       tests passed")

    def _emit_result(self, job: DeployJob) -> None:
        r = job.result
        if r.get("ok"):
            self.bus.emit(
                EventKind.DEPLOY_SUCCEEDED,
                job.app,
                f"{job.app} {r['release']} is serving",
                release=r["release"],
                url=r["url"],
            )
        else:
            error = r.get("error") or {}
            message = str(error.get("message", "failed")).splitlines()[0]
            self.bus.emit(EventKind.DEPLOY_FAILED, job.app, message, code=error.get("code", "error"))

    def _ok(self, app: str, release: Release) -> dict[str, Any]:
        return {"ok": True, "app": app, "release": release.label, "url": self.settings.app_url(app)}

    async def _release(
        self,
        app_name: str,
        out: LogBuffer,
        *,
        description: str,
        image: str | None = None,
        processes: dict[str, str] | None = None,
        health: dict[str, Any] | None = None,
        config: dict[str, str] | None = None,
        base: Release | None = None,
        app_changes: Any = None,
    ) -> Release:
        """Create the next release (from `base` or the current one, with changes) and roll it out."""
        async with self.lock(app_name):
            app = await self._app(app_name)
            if app_changes is not None:
                app_changes(app)
            current = await asyncio.to_thread(self.state.get_release, app_name, app.release) if app.release else None
            source = base or current
            if image is None and source is None:
                if app_changes is not None:
                    await self._save(app)  # nothing runs yet: the change applies to the first deploy
                raise Conflict(f"{app_name} has no release yet: deploy it first (lbsolo deploy --app {app_name})")
            version = await asyncio.to_thread(self.state.next_version, app_name)
            release = Release(
                app=app_name,
                version=version,
                image=image or source.image,  # type: ignore[union-attr]
                description=description,
                config=dict(config if config is not None else (base.config if base else app.config)),
                processes=dict(processes if processes is not None else source.processes),  # type: ignore[union-attr]
                health={**(health if health is not None else source.health), **(app.health or {})},  # type: ignore[union-attr]
            )
            await asyncio.gather(
                asyncio.to_thread(self.engine.tag_image, release.image, f"lbsolo/{app_name}", release.label),
                self._save(release),
            )
            self.bus.emit(
                EventKind.RELEASE_CREATED, app_name, f"{release.label}: {description}", release=release.label,
                description=description,
            )  # fmt: skip
            out.append(f"-----> Releasing {release.label} ({description})")
            await self._rollout(app, release, out)
            return release

    async def _step(self, release: Release, step: DeployStep, status: ReleaseStatus | None = None) -> None:
        release.step = step
        if status is not None:
            release.status = status
        await self._save(release)

    @contextlib.asynccontextmanager
    async def _stepping(
        self, release: Release, step: DeployStep, status: ReleaseStatus | None = None
    ) -> AsyncIterator[None]:
        """Save the step while its work runs, and have it on disk before the block ends.

        A state write (an fsync or two) first would delay the rollout by as much; finishing it
        inside the block keeps the saves of one release in order.
        """
        saving = asyncio.ensure_future(self._step(release, step, status))
        try:
            yield
        finally:
            await saving

    def _spec(self, app: App, release: Release, process: str, volumes: dict[str, str]) -> run.ReplicaSpec:
        limits = app.resources.get(process, {})
        return run.ReplicaSpec(
            release=release,
            process=process,
            port=self.settings.container_port if process == WEB else None,
            network=self.network,
            memory=limits.get("memory"),
            cpus=limits.get("cpus"),
            volumes=volumes,
        )

    async def _volumes(self, app: App) -> dict[str, str]:
        out = {}
        for name, path in app.volumes.items():
            out[await asyncio.to_thread(self.engine.ensure_volume, app.name, name)] = path
        return out

    async def _rollout(self, app: App, release: Release, out: LogBuffer) -> None:
        """Named steps; any failure before SWAP leaves the previous release serving untouched."""
        name = app.name
        check = HealthCheck.from_dict(release.health)
        await asyncio.to_thread(self.engine.ensure_network, self.network)
        volumes = await self._volumes(app)
        new: list[Replica] = []
        try:
            if release.command("release"):
                loop = asyncio.get_running_loop()
                await self._step(release, DeployStep.RELEASE_PHASE, ReleaseStatus.DEPLOYING)
                out.append(f"       release phase: {release.command('release')}")
                code = await asyncio.to_thread(
                    self.engine.run_once,
                    app=name,
                    image=release.image,
                    command=release.command("release") or "",
                    env=self._spec(app, release, "release", {}).env(),
                    network=self.network,
                    volumes=volumes,
                    on_output=lambda line: loop.call_soon_threadsafe(out.append, f"       | {line}"),
                    timeout=self.settings.deploy_timeout,
                )
                if code != 0:
                    raise DeployFailed(f"the release command exited with {code}; nothing was rolled out")
            formation = {p: n for p, n in app.formation.items() if n > 0 and p in release.process_types()}
            async with self._stepping(release, DeployStep.START, ReleaseStatus.DEPLOYING):
                for process, count in sorted(formation.items()):
                    for _ in range(count):
                        replica = await run.start_replica(self.engine, self._spec(app, release, process, volumes))
                        new.append(replica)
                        where = f" on 127.0.0.1:{replica.host_port}" if replica.host_port else ""
                        out.append(f"       started {replica.name}{where}")
            self._watch_logs(new)
            async with self._stepping(release, DeployStep.WAIT_READY):
                await asyncio.gather(
                    *(
                        run.wait_ready(
                            self.engine,
                            r,
                            check=check,
                            host_header=self.host_header(name),
                            timeout=self.settings.deploy_timeout,
                        )
                        for r in new
                    )
                )
            out.append(f"       {len(new)} replica(s) healthy")
        except LbsoloError as e:
            release.status, release.error = ReleaseStatus.FAILED, e.message
            await self._save(release)
            await run.stop_replicas(self.engine, new, 0)
            raise DeployFailed(
                f"{release.label} failed to start; the previous release keeps serving. {e.message}"
            ) from e
        except BaseException:
            await asyncio.shield(run.stop_replicas(self.engine, new, 0))
            raise

        # The new replicas just passed their checks: they are the route, with no engine round
        # trip or state write between the check and the swap. Who is old is asked of the engine after.
        self._publish_route(name, routes_for({name: self._desired(app, release.version)}, new)[name])
        await self._step(release, DeployStep.SWAP)
        out.append("       traffic switched")

        current = await asyncio.to_thread(self.engine.list_replicas, name)
        old = [r for r in current if r.id not in {n.id for n in new}]
        await self._step(release, DeployStep.DRAIN)
        old_targets = [Target("127.0.0.1", r.host_port) for r in old if r.process == WEB and r.host_port]
        if old_targets and not await self.ingress.drain(old_targets, self.settings.drain_timeout):
            out.append(f"       drain timed out after {self.settings.drain_timeout:.0f}s")
        await self._step(release, DeployStep.STOP_OLD)
        await run.stop_replicas(self.engine, old, self.settings.stop_timeout)

        for r in await asyncio.to_thread(self.state.list_releases, name):
            if r.status == ReleaseStatus.ACTIVE and r.version != release.version:
                r.status = ReleaseStatus.SUPERSEDED
                await self._save(r)
        app.release = release.version
        await self._save(app)
        self._restarts.pop(name, None)
        await self._step(release, DeployStep.DONE, ReleaseStatus.ACTIVE)
        out.append(f"-----> {name} {release.label} is serving at {self.settings.app_url(name)}")

    async def _run_job(self, app: str, work: Any) -> DeployJob:
        """Run a release-making use case in the background; its output streams like a deploy's."""
        await self._app(app)
        job = DeployJob(app=app, output=LogBuffer())

        async def body() -> None:
            try:
                release = await work(job.output)
                job.result = self._ok(app, release)
            except LbsoloError as e:
                job.output.append(f" !     {e.message}")
                job.result = {"ok": False, "app": app, "error": {"code": e.code, "message": e.message}}
            except Exception as e:
                log.exception("%s of %s crashed", job.task.get_name() if job.task else "job", app)
                job.output.append(f" !     internal error: {e}")
                job.result = {"ok": False, "app": app, "error": {"code": "error", "message": str(e)}}
            finally:
                job.output.close()
                self._emit_result(job)

        job.task = self._spawn(body(), f"release-{app}")
        return job

    # ---- config, rollback, promote, resources, volumes: each makes a release
    async def config(self, name: str) -> dict[str, str]:
        app = await self._app(name)
        return masked_config(app.config, app.secrets)

    async def set_config(
        self, name: str, values: dict[str, str], unset: list[str], secret: bool = False
    ) -> DeployJob | None:
        for key in [*values, *unset]:
            validate_config_key(key)
        for key, value in values.items():
            if len(value) > 32 * 1024 or "\0" in value:
                raise InvalidInput(f"value of {key} is too long or contains a NUL byte")

        def change(app: App) -> None:
            app.config.update(values)
            for key in unset:
                app.config.pop(key, None)
            app.secrets = sorted({*app.secrets, *(values if secret else ())} - set(unset))

        # Keys only: values (secrets among them) never go into events or webhooks.
        self.bus.emit(EventKind.CONFIG_CHANGED, name, "config changed", set=sorted(values), unset=sorted(unset))
        what = ", ".join([*(f"set {k}" for k in values), *(f"unset {k}" for k in unset)])
        return await self._app_change(name, f"config: {what}", change)

    async def rollback(self, name: str, version: int | None) -> DeployJob:
        async def work(out: LogBuffer) -> Release:
            app = await self._app(name)
            releases = await asyncio.to_thread(self.state.list_releases, name)
            target = rollback_target(releases, app.release, version)
            out.append(f"-----> Rolling back {name} to {target.label} (image {target.image[7:19]}, no rebuild)")

            def restore(app: App) -> None:
                app.config = dict(target.config)

            return await self._release(
                name, out, description=f"rollback to {target.label}", base=target, app_changes=restore
            )

        return await self._run_job(name, work)

    async def promote(self, source: str, target: str) -> DeployJob:
        src = await self._app(source)
        await self._app(target)
        if src.release is None:
            raise Conflict(f"{source} has no release to promote")
        rel = await asyncio.to_thread(self.state.get_release, source, src.release)

        async def work(out: LogBuffer) -> Release:
            out.append(f"-----> Promoting {source} {rel.label} to {target} (same image, {target}'s config)")
            return await self._release(
                target,
                out,
                description=f"promote {source} {rel.label}",
                image=rel.image,
                processes=rel.processes,
                health=rel.health,
            )

        return await self._run_job(target, work)

    async def set_resources(self, name: str, process: str, memory: str | None, cpus: float | None) -> DeployJob | None:
        validate_process_name(process)
        if cpus is not None and not 0.01 <= cpus <= 64:
            raise InvalidInput("cpus must be between 0.01 and 64")
        if memory is not None:
            from lbsolo.engine import parse_memory

            try:
                if parse_memory(memory) < 6 * 1024 * 1024:
                    raise InvalidInput("memory must be at least 6m (Docker's minimum)")
            except ValueError as e:
                raise InvalidInput(f"invalid memory {memory!r}: use e.g. 256m or 1g") from e

        def change(app: App) -> None:
            limits = dict(app.resources.get(process, {}))
            if memory is not None:
                limits["memory"] = memory
            if cpus is not None:
                limits["cpus"] = cpus
            app.resources[process] = limits

        return await self._app_change(name, f"resources of {process}", change)

    async def add_volume(self, name: str, volume: str, path: str) -> DeployJob | None:
        validate_process_name(volume.replace("-", "").replace("_", "")[:20] or "x")
        if not path.startswith("/") or path == "/":
            raise InvalidInput(f"mount path must be an absolute path other than /: {path!r}")

        def change(app: App) -> None:
            app.volumes[volume] = path

        return await self._app_change(name, f"volume {volume}:{path}", change)

    async def _app_change(self, name: str, what: str, change: Any) -> DeployJob | None:
        """Apply a change to the app; a deployed app gets it as a new release, rolled out."""
        app = await self._app(name)
        if app.release is None:
            async with self.lock(name):
                app = await self._app(name)
                change(app)
                await self._save(app)
            return None

        async def work(out: LogBuffer) -> Release:
            return await self._release(name, out, description=what, app_changes=change)

        return await self._run_job(name, work)

    async def set_domains(self, name: str, add: list[str], remove: list[str]) -> list[str]:
        """Custom domains: routed by the proxy and answered by the DNS as soon as they change."""
        added = [validate_domain(d) for d in add]
        removed = {validate_domain(d) for d in remove}
        async with self.lock(name):
            app = await self._app(name)
            for other in await asyncio.to_thread(self.state.list_apps):
                clash = set(added) & set(other.domains)
                if other.name != name and clash:
                    raise Conflict(f"{', '.join(sorted(clash))} already belongs to {other.name}")
            for static in await asyncio.to_thread(self.state.list_routes):
                clash = set(added) & set(static.domains)
                if clash:
                    raise Conflict(f"{', '.join(sorted(clash))} already belongs to static route {static.name}")
            missing = removed - set(app.domains)
            if missing:
                raise NotFound(f"{name} has no domain {', '.join(sorted(missing))}")
            app.domains = sorted((set(app.domains) | set(added)) - removed)
            await self._save(app)
            route = self._routes.get(name, Route(app=name))
            self._publish_route(name, replace(route, domains=tuple(app.domains)))
        return app.domains

    async def https(self, name: str) -> dict[str, Any]:
        return self._https(await self._app(name))

    async def set_https(self, name: str, redirect: bool | None) -> dict[str, Any]:
        """`redirect` sends the app's plain-HTTP requests to https:// (308) from now on; None changes nothing."""
        if redirect is None:
            return await self.https(name)
        # Under the app's lock: a rollout in progress saves the app and its route when it ends.
        async with self.lock(name):
            app = await self._app(name)
            if redirect != app.https_redirect:
                app.https_redirect = redirect
                await self._save(app)
                route = self._routes.get(name, Route(app=name))
                self._publish_route(name, replace(route, https_redirect=redirect))
        return self._https(app)

    def _https(self, app: App) -> dict[str, Any]:
        # Without an HTTPS listener the flag is kept but has no effect; say so instead of hiding it.
        return {"name": app.name, "redirect": app.https_redirect, "active": bool(self.settings.proxy_https_port)}

    # ---- static routes: services on this machine that lbsolo does not run
    async def load_static_routes(self) -> None:
        """At startup: put the stored static routes into the proxy and DNS."""
        statics = await asyncio.to_thread(self.state.list_routes)
        self._static = static_routes_for(statics)
        self._push()

    async def static_routes(self) -> list[dict[str, Any]]:
        return [self._describe_static(r) for r in await asyncio.to_thread(self.state.list_routes)]

    def _describe_static(self, route: StaticRoute) -> dict[str, Any]:
        return {**route.to_dict(), "url": self.settings.app_url(route.name)}

    async def add_static_route(self, name: str, to: str, domains: Iterable[str] = ()) -> dict[str, Any]:
        """Route `<name>.<domain>` (and `domains`) to `to`; the name must not be an app's (state checks it)."""
        route = StaticRoute.create(name, to, domains)
        async with self._static_lock:
            taken = {d: a.name for a in await asyncio.to_thread(self.state.list_apps) for d in a.domains}
            taken |= {
                d: f"static route {r.name}" for r in await asyncio.to_thread(self.state.list_routes) for d in r.domains
            }
            clash = sorted(d for d in route.domains if d in taken)
            if clash:
                raise Conflict(f"{', '.join(clash)} already belongs to {taken[clash[0]]}")
            await asyncio.to_thread(self.state.add_route, route)
            self._static = {**self._static, **static_routes_for([route])}
            self._push()
        return self._describe_static(route)

    async def remove_static_route(self, name: str) -> None:
        async with self._static_lock:
            await asyncio.to_thread(self.state.delete_route, name)
            self._static = {k: v for k, v in self._static.items() if k != name}
            self._push()

    async def set_health(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        async with self.lock(name):
            app = await self._app(name)
            merged = {**(app.health or {}), **values}
            HealthCheck.from_dict(merged)
            app.health = merged
            await self._save(app)
        return merged

    # ---- disk: image retention
    async def gc(self, name: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Remove images older than the last `keep_releases` releases of each app, and build leftovers."""
        apps = [await self._app(name)] if name else await asyncio.to_thread(self.state.list_apps)
        removed: list[dict[str, Any]] = []
        for app in apps:
            images = await asyncio.to_thread(self.engine.app_images, app.name)
            releases = await asyncio.to_thread(self.state.list_releases, app.name)
            doomed = set(
                images_to_remove(releases, app.release, [i["id"] for i in images], self.settings.keep_releases)
            )
            for image in images:
                if image["id"] in doomed and (
                    dry_run or await asyncio.to_thread(self.engine.remove_image, image["id"])
                ):
                    removed.append({"app": app.name, "id": image["id"], "size": image["size"], "tags": image["tags"]})
        freed = 0 if dry_run else await asyncio.to_thread(self.engine.prune_build_leftovers)
        return {"removed": removed, "bytes": sum(i["size"] for i in removed) + freed, "dry_run": dry_run}

    async def disk_usage(self) -> dict[str, int]:
        """Bytes of images per app (layers shared between images are counted once per image)."""
        usage: dict[str, int] = {}
        for image in await asyncio.to_thread(self.engine.app_images):
            usage[image["app"]] = usage.get(image["app"], 0) + image["size"]
        return usage

    # ---- scale
    async def scale(self, name: str, formation: dict[str, int]) -> dict[str, Any]:
        async with self.lock(name):
            app = await self._app(name)
            if app.release is not None:
                release = await asyncio.to_thread(self.state.get_release, name, app.release)
                unknown = set(formation) - set(release.process_types())
                if unknown:
                    raise InvalidInput(
                        f"{name} {release.label} has no process type {', '.join(sorted(unknown))} "
                        f"(it has: {', '.join(release.process_types())})"
                    )
            app.formation = {**app.formation, **formation}
            await self._save(app)
            shown = ", ".join(f"{k}={v}" for k, v in sorted(app.formation.items()))
            self.bus.emit(EventKind.SCALED, name, shown, formation=app.formation)
            if app.release is not None:
                await self._converge(app)
        return await self.get_app(name)

    async def _converge(self, app: App) -> None:
        """Bring replica counts to the formation: new ones join after passing checks, extra ones drain first."""
        release = await asyncio.to_thread(self.state.get_release, app.name, app.release)
        actual = await asyncio.to_thread(self.engine.list_replicas, app.name)
        actions = plan({app.name: Desired(app.release, app.formation)}, actual)
        volumes = await self._volumes(app)
        check = HealthCheck.from_dict(release.health)
        started = []
        for a in actions:
            if a.kind is ActionKind.RUN:
                started.append(await run.start_replica(self.engine, self._spec(app, release, a.process, volumes)))
        self._watch_logs(started)
        results = await asyncio.gather(
            *(
                run.wait_ready(
                    self.engine,
                    r,
                    check=check,
                    host_header=self.host_header(app.name),
                    timeout=self.settings.deploy_timeout,
                )
                for r in started
            ),
            return_exceptions=True,
        )
        failed = [r for r, res in zip(started, results, strict=True) if isinstance(res, BaseException)]
        await run.stop_replicas(self.engine, failed, 0)
        removing = [a.replica for a in actions if a.kind is ActionKind.REMOVE and a.replica]
        keep = [r for r in await asyncio.to_thread(self.engine.list_replicas, app.name) if r not in removing]
        self._publish_route(app.name, routes_for({app.name: self._desired(app)}, keep)[app.name])
        targets = [Target("127.0.0.1", r.host_port) for r in removing if r.process == WEB and r.host_port]
        if targets:
            await self.ingress.drain(targets, self.settings.drain_timeout)
        await run.stop_replicas(self.engine, removing, self.settings.stop_timeout)
        if failed:
            raise DeployFailed(f"{len(failed)} new replica(s) failed their health checks: {results[0]}")

    # ---- one-off commands
    async def run_command(self, name: str, command: str, out: LogBuffer) -> int:
        app = await self._app(name)
        if app.release is None:
            raise Conflict(f"{name} has no release yet: deploy it first")
        release = await asyncio.to_thread(self.state.get_release, name, app.release)
        await asyncio.to_thread(self.engine.ensure_network, self.network)
        loop = asyncio.get_running_loop()
        return await asyncio.to_thread(
            self.engine.run_once,
            app=name,
            image=release.image,
            command=command,
            env=self._spec(app, release, "run", {}).env(),
            network=self.network,
            volumes=await self._volumes(app),
            on_output=lambda line: loop.call_soon_threadsafe(out.append, line),
            timeout=self.settings.deploy_timeout * 10,
        )

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

        self._build_saved = self._spawn(save(), f"save-build-{build.id}")

    # ---- reconcile
    def _publish_route(self, app: str, route: Route) -> None:
        self._routes[app] = route
        self._push()

    def _push(self) -> None:
        """Hand the proxy (and DNS) every route at once, apps' and static ones: one atomic swap."""
        self.ingress.publish({**self._static, **self._routes})

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
        for action in actions:
            if self._unsettled(action.app, marks):
                continue
            try:
                await self._act(action, {a.name: a for a in apps})
            except LbsoloError as e:
                log.warning("reconcile: %s %s failed: %s", action.kind, action.app, e.message)
        if actions:
            actual = await asyncio.to_thread(self.engine.list_replicas)
        self._watch_logs((r for r in actual if r.app in desired), adopted=True)
        self.collector.prune()
        routes = routes_for(desired, actual)
        for app, route in self._routes.items():
            if self._unsettled(app, marks):
                routes[app] = route
        if routes != self._routes:
            self._routes = routes
            self._push()
        for app, route in routes.items():
            if route.targets and not any(a.app == app and a.kind is not ActionKind.REMOVE for a in actions):
                self._restarts.pop(app, None)
        return actions

    async def _act(self, action: Action, apps: dict[str, App]) -> None:
        if action.kind is ActionKind.REMOVE:
            assert action.replica is not None
            log.info("removing %s (not wanted)", action.replica.name)
            await asyncio.to_thread(self.engine.stop_and_remove, action.replica.id, self.settings.stop_timeout)
            return
        restarts, not_before = self._restarts.get(action.app, (0, 0.0))
        if time.monotonic() < not_before:
            return
        # Exponential backoff per app: 0.5 s, 1 s, 2 s, ... up to a minute between restarts.
        self._restarts[action.app] = (restarts + 1, time.monotonic() + min(0.5 * 2.0**restarts, 60.0))
        if restarts + 1 == CRASH_LOOP_AFTER:
            log.warning("%s is crash-looping (%d restarts in a row)", action.app, restarts + 1)
        if action.kind is ActionKind.RESTART:
            assert action.replica is not None
            log.info("restarting %s", action.replica.name)
            self.bus.emit(
                EventKind.REPLICA_CRASHED, action.app, f"{action.replica.name} stopped", replica=action.replica.name
            )
            await asyncio.to_thread(self.engine.start, action.replica.id)
            self.bus.emit(
                EventKind.REPLICA_RESTARTED, action.app, f"{action.replica.name} restarted", restarts=restarts + 1
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
            self.bus.emit(EventKind.REPLICA_RESTARTED, action.app, f"{replica.name} started", restarts=restarts + 1)

    async def recover(self) -> int:
        """After a restart: releases whose rollout was interrupted never became current; mark them failed."""
        count = 0
        for app in await asyncio.to_thread(self.state.list_apps):
            for r in await asyncio.to_thread(self.state.list_releases, app.name):
                if r.status in (ReleaseStatus.PENDING, ReleaseStatus.DEPLOYING) and r.version != app.release:
                    r.status, r.error = ReleaseStatus.FAILED, f"interrupted at step {r.step} by a daemon restart"
                    await self._save(r)
                    count += 1
        return count

    def serving_replicas(self) -> int:
        return sum(len(r.targets) for r in self._routes.values())

    async def reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except EngineError as e:
                log.warning("reconcile skipped: %s", e.message)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval)
                await asyncio.sleep(0.2)  # let a burst of events settle into one pass
            except TimeoutError:
                pass

    async def watch_events(self) -> None:
        """Wake the reconcile loop on container deaths and removals, as the engine reports them."""
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()

        def pump() -> None:
            # A daemon thread, not to_thread: the event stream blocks forever and must not hold
            # up the interpreter's exit.
            try:
                for event in self.engine.events():
                    if event["action"] in ("die", "stop", "kill", "destroy", "oom"):
                        loop.call_soon_threadsafe(self.wake)
            except Exception as e:
                log.warning("docker events: %s; retrying", e)
            with contextlib.suppress(RuntimeError):  # the loop may be closed at shutdown
                loop.call_soon_threadsafe(ended.set)

        while True:
            ended.clear()
            threading.Thread(target=pump, name="docker-events", daemon=True).start()
            await ended.wait()
            await asyncio.sleep(2.0)
