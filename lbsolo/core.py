"""lbsolo's use cases: apps, deploys, releases, config, scale, routes, disk.

Core owns the desired state (apps, their current release and formation, in State). The
decisions are pure functions (`plan`, `routes_for`, `rollback_target`); the Platform class runs
them and does the I/O. Core pushes routes into the proxy and DNS through an Ingress: those
modules never import core.

Platform composes two parts over one context (core_context.py): the rollout steps that put a
release in service (core_rollout.py) and the reconcile loop (core_reconcile.py); the use cases
are here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lbsolo import run
from lbsolo.build import Builder, LogBuffer, SourceSpec
from lbsolo.build_git import clone, clone_policy, redact
from lbsolo.build_source import pack
from lbsolo.config import Settings
from lbsolo.core_context import AppLock, CoreContext, Ingress
from lbsolo.core_plan import (
    Action,
    RestartHistory,
    images_to_remove,
    rollback_target,
    static_routes_for,
)
from lbsolo.core_reconcile import CRASH_LOOP_AFTER, Reconciler
from lbsolo.core_rollout import DeployJob, Rollouts
from lbsolo.engine import Engine
from lbsolo.errors import Conflict, DeployFailed, InvalidInput, LbsoloError, NotFound
from lbsolo.events import EventBus, EventKind
from lbsolo.models import (
    WEB,
    App,
    Build,
    HealthCheck,
    Release,
    Replica,
    StaticRoute,
    masked_config,
    release_secrets,
    validate_app_name,
    validate_config_key,
    validate_custom_domain,
    validate_domain,
    validate_mount_path,
    validate_process_name,
    validate_volume_name,
)
from lbsolo.proxy import Route
from lbsolo.run_logs import LogLine, LogStore
from lbsolo.state import State

log = logging.getLogger("lbsolo.core")


class Platform:
    """The use cases the API calls, and the reconcile loop the daemon supervises.

    It composes the rollout steps (`rollouts`) and the reconcile loop (`reconciler`) over one
    CoreContext (`ctx`), which holds what all three share.
    """

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
        ctx = CoreContext(settings, state, engine, ingress, bus or EventBus(), logs or LogStore(settings.logs_dir))
        self._compose(ctx, builder)

    @classmethod
    def over(cls, ctx: CoreContext, builder: Builder) -> Platform:
        """A Platform over a context made beforehand (the daemon's, whose builder records builds into it)."""
        platform = cls.__new__(cls)
        platform._compose(ctx, builder)
        return platform

    def _compose(self, ctx: CoreContext, builder: Builder) -> None:
        self.ctx = ctx
        self.builder = builder
        self.rollouts = Rollouts(ctx)
        self.reconciler = Reconciler(ctx)
        self._static_lock = asyncio.Lock()
        # What the API and the daemon read of the context, by name.
        self.settings, self.state, self.engine, self.ingress = ctx.settings, ctx.state, ctx.engine, ctx.ingress
        self.bus, self.logs, self.collector, self.jobs = ctx.bus, ctx.logs, ctx.collector, ctx.jobs

    # ---- the reconcile loop, for the daemon
    async def reconcile(self) -> list[Action]:
        return await self.reconciler.reconcile()

    async def reconcile_forever(self) -> None:
        await self.reconciler.reconcile_forever()

    async def watch_events(self) -> None:
        await self.reconciler.watch_events()

    async def recover(self) -> int:
        return await self.reconciler.recover()

    def wake(self) -> None:
        self.ctx.wake()

    def serving_replicas(self) -> int:
        return self.reconciler.serving_replicas()

    def lock(self, app: str) -> AppLock:
        return self.ctx.lock(app)

    def host_header(self, app: str) -> str:
        return self.ctx.host_header(app)

    # ---- apps
    async def create_app(self, name: str) -> App:
        validate_app_name(name)
        async with self.lock(name):  # a reconcile pass that read the apps before this keeps its route
            app = await asyncio.to_thread(self.state.create_app, App(name=name))
            self.ctx.publish_route(name, Route(app=name))
        self.bus.emit(EventKind.APP_CREATED, name, f"{name} created")
        return app

    async def list_apps(self) -> list[dict[str, Any]]:
        apps = await asyncio.to_thread(self.state.list_apps)
        return [self._describe(a) for a in apps]

    async def get_app(self, name: str) -> dict[str, Any]:
        return self._describe(await self.ctx.app(name))

    def _describe(self, app: App) -> dict[str, Any]:
        route = self.ctx.routes.get(app.name)
        restarts = self.ctx.restarts.get(app.name, RestartHistory()).in_a_row
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
            "request_buffering": app.request_buffering,
            "created_at": app.created_at,
        }

    async def destroy_app(self, name: str, *, images: bool = False, volumes: bool = False) -> dict[str, Any]:
        await self.ctx.app(name)
        async with self.lock(name):
            replicas = await asyncio.to_thread(self.engine.list_replicas, name)
            self.ctx.routes.pop(name, None)
            self.ctx.push()
            await run.stop_replicas(self.engine, replicas, self.settings.stop_timeout)
            await asyncio.to_thread(self.state.delete_app, name)
            self.bus.emit(EventKind.APP_DESTROYED, name, f"{name} destroyed", containers=len(replicas))
            removed = await asyncio.to_thread(self.engine.remove_app_images, name) if images else []
            vols = await asyncio.to_thread(self.engine.remove_app_volumes, name) if volumes else 0
            await asyncio.to_thread(self.logs.forget, name)
            if not await asyncio.to_thread(self.state.list_apps):
                # The last app is gone: don't leave a network (and its address pool) behind.
                await asyncio.to_thread(self.engine.remove_network, self.ctx.network)
        # The app's lock stays: a reconcile pass that read the app before sees it changed hands.
        self.ctx.restarts.pop(name, None)
        return {"name": name, "containers": len(replicas), "images": len(removed), "volumes": vols}

    async def releases(self, name: str) -> list[dict[str, Any]]:
        app = await self.ctx.app(name)
        rows = await asyncio.to_thread(self.state.list_releases, name)
        shown = []
        for r in rows:
            secret = release_secrets(r, app, rows)  # the release's own record, never today's list
            shown.append({**r.to_dict(), "config": masked_config(r.config, secret), "secrets": sorted(secret)})
        return shown

    async def replicas(self, name: str) -> list[Replica]:
        await self.ctx.app(name)
        return await asyncio.to_thread(self.engine.list_replicas, name)

    # ---- metrics
    async def request_metrics(self, name: str) -> dict[str, Any]:
        """The proxy's counters for one app since the daemon started."""
        await self.ctx.app(name)
        return self.ingress.metrics().get(name, {})

    # ---- logs
    async def read_logs(self, name: str, **filters: Any) -> list[LogLine]:
        await self.ctx.app(name)
        await self.logs.flush()
        return await asyncio.to_thread(self.logs.read, name, **filters)

    async def follow_logs(self, name: str) -> AsyncIterator[LogLine]:
        await self.ctx.app(name)
        async for line in self.logs.follow(name):
            yield line

    # ---- deploy: build -> release -> rollout
    async def deploy(self, name: str, context: Path, build_args: dict[str, str] | None = None) -> DeployJob:
        app = await self.ctx.app(name)
        job = DeployJob(app=app.name, output=LogBuffer())
        build_job = self.builder.submit(app.name, context, job.output, build_args)
        job.output.append(f"-----> Building {app.name} (build {build_job.build.id})")
        self.bus.emit(EventKind.DEPLOY_STARTED, app.name, f"deploy of {app.name} started", build=build_job.build.id)
        job.task = self.ctx.spawn(self._deploy(job, build_job.done, build_job.build.id), f"deploy-{app.name}")
        return job

    async def deploy_git(self, name: str, url: str, ref: str | None) -> DeployJob:
        """Deploy a git URL at a branch, tag or commit; the first one becomes the app's repository.

        Only https, ssh and git URLs, unless the admin allows local ones (settings.git_allow_local).
        """
        clone_policy(url, self.settings.git_allow_local)
        job = await self._deploy_clone(name, url, ref)
        await self.set_repo(name, url, replace_existing=False)  # once it cloned: a typo is not kept
        return job

    async def deploy_pushed(self, name: str, ref: str) -> DeployJob:
        """A push webhook's deploy: the app's own repository (set by its owner) at the pushed ref."""
        app = await self.ctx.app(name)
        if not app.repo:
            raise Conflict(
                f"{name} has no repository to deploy from: set it with `lbsolo hooks:url {name} --repo URL` "
                "(push webhooks never take the URL from their payload)"
            )
        return await self._deploy_clone(name, app.repo, ref)

    async def set_repo(self, name: str, url: str, *, replace_existing: bool = True) -> str:
        """Store the git URL push webhooks deploy; returns it redacted, as it may be shown."""
        clone_policy(url, self.settings.git_allow_local)
        async with self.lock(name):
            app = await self.ctx.app(name)
            if replace_existing or not app.repo:
                app.repo = url
                await self.ctx.save(app)
        return redact(app.repo)

    async def hook(self, name: str) -> dict[str, str]:
        """The app's push webhook: its secret, and the repository it deploys (credentials redacted)."""
        secret = await self.hook_secret(name)
        return {"secret": secret, "repo": redact((await self.ctx.app(name)).repo)}

    async def _deploy_clone(self, name: str, url: str, ref: str | None) -> DeployJob:
        self.settings.uploads_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="git-", dir=self.settings.uploads_dir) as tmp:
            commit = await clone(
                url, ref, Path(tmp) / "src", home=Path(tmp) / "home", allow_local=self.settings.git_allow_local
            )
            archive = Path(tmp).with_suffix(".tar")

            def pack_to_file() -> None:
                with pack(Path(tmp) / "src", self.settings.max_upload_bytes) as packed, archive.open("wb") as f:
                    shutil.copyfileobj(packed, f)

            await asyncio.to_thread(pack_to_file)
        job = await self.deploy(name, archive)
        job.output.append(f"       source: {redact(url)} at {commit[:12]}")
        return job

    async def hook_secret(self, name: str, create: bool = True) -> str:
        """The app's inbound webhook secret; made on first request."""
        # Reading takes no lock: unauthenticated webhook calls must not count as changes of the app.
        app = await self.ctx.app(name)
        if not app.hook_secret and not create:
            raise NotFound(f"{name} has no webhook yet (see: lbsolo hooks:url {name})")
        if not app.hook_secret:
            async with self.lock(name):  # saved like any change of the app, never over one
                app = await self.ctx.app(name)
                if not app.hook_secret:
                    app.hook_secret = secrets.token_urlsafe(24)
                    await self.ctx.save(app)
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
            release = await self.rollouts.release(
                job.app, out, description="deploy", image=image_id, processes=spec.processes, health=spec.health
            )
            job.result = self.rollouts.ok(job.app, release)
            self.rollouts.emit_result(job)
            try:
                cleaned = await self.gc(job.app)
                if cleaned["removed"]:
                    out.append(f"       removed {len(cleaned['removed'])} old image(s) (keeping the last releases')")
            except LbsoloError as e:
                log.warning("image clean-up of %s failed: %s", job.app, e.message)
        except LbsoloError as e:
            out.append(f" !     {e.message}")
            job.result = {"ok": False, "app": job.app, "error": {"code": e.code, "message": e.message}}
            self.rollouts.emit_result(job)
        except Exception as e:
            log.exception("deploy of %s crashed", job.app)
            job.result = {"ok": False, "app": job.app, "error": {"code": "error", "message": str(e)}}
            self.rollouts.emit_result(job)
        finally:
            out.close()
            await asyncio.to_thread(self._store_build_log, build_id, out.lines)

    def _store_build_log(self, build_id: str, lines: list[str]) -> None:
        directory = self.settings.logs_dir / "builds"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"{build_id}.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
        except OSError as e:  # a full disk: the deploy's outcome stands, only its stored log is lost
            log.warning("cannot store the log of build %s: %s", build_id, e.strerror or e)

    async def cancel_builds(self, name: str, build_id: str | None = None) -> list[str]:
        await self.ctx.app(name)
        return self.builder.cancel(name, build_id)

    async def builds(self, name: str) -> list[Build]:
        await self.ctx.app(name)
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
        app = await self.ctx.app(app_name)
        out.append(f"-----> Test phase: {command}")
        await asyncio.to_thread(self.engine.ensure_network, self.ctx.network)
        loop = asyncio.get_running_loop()
        env = {**app.config, "LBSOLO_APP": app_name, "LBSOLO_PROCESS": "test"}
        code = await asyncio.to_thread(
            self.engine.run_once,
            app=app_name,
            image=image,
            command=command,
            env=env,
            network=self.ctx.network,
            on_output=lambda line: loop.call_soon_threadsafe(out.append, f"       | {line}"),
            timeout=self.settings.build_timeout,
        )
        if code != 0:
            raise DeployFailed(f"the test phase failed (exit {code}); nothing was released")
        out.append("       tests passed")

    # ---- config, rollback, promote, resources, volumes: each makes a release
    async def config(self, name: str) -> dict[str, str]:
        app = await self.ctx.app(name)
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
            app = await self.ctx.app(name)
            releases = await asyncio.to_thread(self.state.list_releases, name)
            target = rollback_target(releases, app.release, version)
            out.append(f"-----> Rolling back {name} to {target.label} (image {target.image[7:19]}, no rebuild)")
            secret = release_secrets(target, app, releases)

            def restore(app: App) -> None:
                # Which keys are secret comes back with the values; a key secret now stays masked.
                app.secrets = sorted((secret | set(app.secrets)) & set(target.config))
                app.config = dict(target.config)

            return await self.rollouts.release(
                name, out, description=f"rollback to {target.label}", base=target, app_changes=restore
            )

        return await self.rollouts.run_job(name, work)

    async def promote(self, source: str, target: str) -> DeployJob:
        src = await self.ctx.app(source)
        await self.ctx.app(target)
        if src.release is None:
            raise Conflict(f"{source} has no release to promote")
        rel = await asyncio.to_thread(self.state.get_release, source, src.release)

        async def work(out: LogBuffer) -> Release:
            out.append(f"-----> Promoting {source} {rel.label} to {target} (same image, {target}'s config)")
            return await self.rollouts.release(
                target,
                out,
                description=f"promote {source} {rel.label}",
                image=rel.image,
                processes=rel.processes,
                health=rel.health,
            )

        return await self.rollouts.run_job(target, work)

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
        validate_volume_name(volume)
        validate_mount_path(path)

        def change(app: App) -> None:
            app.volumes[volume] = path

        return await self._app_change(name, f"volume {volume}:{path}", change)

    async def _app_change(self, name: str, what: str, change: Any) -> DeployJob | None:
        """Apply a change to the app; a deployed app gets it as a new release, rolled out."""
        app = await self.ctx.app(name)
        if app.release is None:
            async with self.lock(name):
                app = await self.ctx.app(name)
                change(app)
                await self.ctx.save(app)
            return None

        async def work(out: LogBuffer) -> Release:
            return await self.rollouts.release(name, out, description=what, app_changes=change)

        return await self.rollouts.run_job(name, work)

    async def set_domains(self, name: str, add: list[str], remove: list[str]) -> list[str]:
        """Custom domains: routed by the proxy and answered by the DNS as soon as they change."""
        added = [validate_custom_domain(d, self.settings.domain) for d in add]
        removed = {validate_domain(d) for d in remove}  # one stored before a name was reserved can go
        async with self.lock(name):
            app = await self.ctx.app(name)
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
            await self.ctx.save(app)
            route = self.ctx.routes.get(name, Route(app=name))
            self.ctx.publish_route(name, replace(route, domains=tuple(app.domains)))
        return app.domains

    async def https(self, name: str) -> dict[str, Any]:
        return self._https(await self.ctx.app(name))

    async def set_https(self, name: str, redirect: bool | None) -> dict[str, Any]:
        """`redirect` sends the app's plain-HTTP requests to https:// (308) from now on; None changes nothing."""
        if redirect is None:
            return await self.https(name)
        # Under the app's lock: a rollout in progress saves the app and its route when it ends.
        async with self.lock(name):
            app = await self.ctx.app(name)
            if redirect != app.https_redirect:
                app.https_redirect = redirect
                await self.ctx.save(app)
                route = self.ctx.routes.get(name, Route(app=name))
                self.ctx.publish_route(name, replace(route, https_redirect=redirect))
        return self._https(app)

    async def proxy_settings(self, name: str) -> dict[str, Any]:
        return self._proxy_settings(await self.ctx.app(name))

    async def set_proxy_settings(self, name: str, request_buffering: bool | None) -> dict[str, Any]:
        """`request_buffering` off streams the app's request bodies to it as they arrive; None changes nothing."""
        if request_buffering is None:
            return await self.proxy_settings(name)
        async with self.lock(name):  # as set_https: a rollout in progress publishes the saved app's route
            app = await self.ctx.app(name)
            if request_buffering != app.request_buffering:
                app.request_buffering = request_buffering
                await self.ctx.save(app)
                route = self.ctx.routes.get(name, Route(app=name))
                self.ctx.publish_route(name, replace(route, request_buffering=request_buffering))
        return self._proxy_settings(app)

    @staticmethod
    def _proxy_settings(app: App) -> dict[str, Any]:
        return {"name": app.name, "request_buffering": app.request_buffering}

    def _https(self, app: App) -> dict[str, Any]:
        # Without an HTTPS listener the flag is kept but has no effect; say so instead of hiding it.
        return {"name": app.name, "redirect": app.https_redirect, "active": bool(self.settings.proxy_https_port)}

    # ---- static routes: services on this machine that lbsolo does not run
    async def load_static_routes(self) -> None:
        """At startup: put the stored static routes into the proxy and DNS."""
        statics = await asyncio.to_thread(self.state.list_routes)
        self.ctx.static = static_routes_for(statics)
        self.ctx.push()

    async def static_routes(self) -> list[dict[str, Any]]:
        return [self._describe_static(r) for r in await asyncio.to_thread(self.state.list_routes)]

    def _describe_static(self, route: StaticRoute) -> dict[str, Any]:
        return {**route.to_dict(), "url": self.settings.app_url(route.name)}

    async def add_static_route(self, name: str, to: str, domains: Iterable[str] = ()) -> dict[str, Any]:
        """Route `<name>.<domain>` (and `domains`) to `to`; the name must not be an app's (state checks it)."""
        route = StaticRoute.create(name, to, domains)
        for domain in route.domains:
            validate_custom_domain(domain, self.settings.domain)
        async with self._static_lock:
            taken = {d: a.name for a in await asyncio.to_thread(self.state.list_apps) for d in a.domains}
            taken |= {
                d: f"static route {r.name}" for r in await asyncio.to_thread(self.state.list_routes) for d in r.domains
            }
            clash = sorted(d for d in route.domains if d in taken)
            if clash:
                raise Conflict(f"{', '.join(clash)} already belongs to {taken[clash[0]]}")
            await asyncio.to_thread(self.state.add_route, route)
            self.ctx.static = {**self.ctx.static, **static_routes_for([route])}
            self.ctx.push()
        return self._describe_static(route)

    async def remove_static_route(self, name: str) -> None:
        async with self._static_lock:
            await asyncio.to_thread(self.state.delete_route, name)
            self.ctx.static = {k: v for k, v in self.ctx.static.items() if k != name}
            self.ctx.push()

    async def set_health(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        async with self.lock(name):
            app = await self.ctx.app(name)
            merged = {**(app.health or {}), **values}
            HealthCheck.from_dict(merged)
            app.health = merged
            await self.ctx.save(app)
        return merged

    # ---- disk: image retention
    async def gc(self, name: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Remove images older than the last `keep_releases` releases of each app, and build leftovers."""
        apps = [await self.ctx.app(name)] if name else await asyncio.to_thread(self.state.list_apps)
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
            app = await self.ctx.app(name)
            if app.release is not None:
                release = await asyncio.to_thread(self.state.get_release, name, app.release)
                unknown = set(formation) - set(release.process_types())
                if unknown:
                    raise InvalidInput(
                        f"{name} {release.label} has no process type {', '.join(sorted(unknown))} "
                        f"(it has: {', '.join(release.process_types())})"
                    )
            app.formation = {**app.formation, **formation}
            await self.ctx.save(app)
            shown = ", ".join(f"{k}={v}" for k, v in sorted(app.formation.items()))
            self.bus.emit(EventKind.SCALED, name, shown, formation=app.formation)
            if app.release is not None:
                await self.rollouts.converge(app)
        return await self.get_app(name)

    # ---- one-off commands
    async def run_command(self, name: str, command: str, out: LogBuffer) -> int:
        app = await self.ctx.app(name)
        if app.release is None:
            raise Conflict(f"{name} has no release yet: deploy it first")
        release = await asyncio.to_thread(self.state.get_release, name, app.release)
        await asyncio.to_thread(self.engine.ensure_network, self.ctx.network)
        loop = asyncio.get_running_loop()
        return await asyncio.to_thread(
            self.engine.run_once,
            app=name,
            image=release.image,
            command=command,
            env=self.ctx.spec(app, release, "run", {}).env(),
            network=self.ctx.network,
            volumes=await self.ctx.volumes(app),
            on_output=lambda line: loop.call_soon_threadsafe(out.append, line),
            timeout=self.settings.deploy_timeout * 10,
        )
