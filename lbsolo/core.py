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
import shutil
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from lbsolo import run
from lbsolo.build import Builder, LogBuffer
from lbsolo.config import Settings
from lbsolo.core_addon_backups import AddonBackups
from lbsolo.core_addons import Addons
from lbsolo.core_alerts import Alerts
from lbsolo.core_certs import Certificates
from lbsolo.core_cluster import ClusterOps
from lbsolo.core_context import AppLock, CoreContext, Ingress
from lbsolo.core_cron import CronJobs
from lbsolo.core_deploy import Deploys
from lbsolo.core_drains import Drains
from lbsolo.core_plan import (
    Action,
    RestartHistory,
)
from lbsolo.core_platform_backup import ArchiveEngine, PlatformBackup
from lbsolo.core_platform_backup_runs import PlatformBackups
from lbsolo.core_preview_addons import PreviewAddons
from lbsolo.core_previews import Previews
from lbsolo.core_reconcile import CRASH_LOOP_AFTER, Reconciler
from lbsolo.core_releases import ReleaseChanges
from lbsolo.core_rollout import DeployJob, Rollouts
from lbsolo.core_routing import Routing
from lbsolo.core_sleep import Sleepers
from lbsolo.engine import Engine, Services
from lbsolo.errors import Conflict, InvalidInput
from lbsolo.events import EventBus, EventKind
from lbsolo.export_k8s import export_target
from lbsolo.export_k8s import manifests as k8s_manifests
from lbsolo.models import (
    WEB,
    App,
    Build,
    HealthCheck,
    Replica,
    looks_secret,
    masked_config,
    release_secrets,
    validate_app_name,
)
from lbsolo.proxy import Route
from lbsolo.run_logs import LogLine, LogStore
from lbsolo.state import State

log = logging.getLogger("lbsolo.core")


class Platform:
    """The use cases the API calls, and the reconcile loop the daemon supervises.

    It composes the rollout steps (`rollouts`), the reconcile loop (`reconciler`), the deploy
    pipeline (`deploys`) and routing (`routing`) over one CoreContext (`ctx`), which holds what
    they share; the use cases below that are theirs hand over to them.
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
        services: Services | None = None,
    ) -> None:
        ctx = CoreContext(settings, state, engine, ingress, bus or EventBus(), logs or LogStore(settings.logs_dir))
        self._compose(ctx, builder, services)

    @classmethod
    def over(
        cls,
        ctx: CoreContext,
        builder: Builder,
        services: Services | None = None,
        certs: Certificates | None = None,
        wakes: asyncio.Queue[str] | None = None,
        archive: ArchiveEngine | None = None,
        cluster: ClusterOps | None = None,
    ) -> Platform:
        """A Platform over a context made beforehand (the daemon's, whose builder records builds into it;
        its proxy puts the names of sleeping apps a request waits for in `wakes`; `archive` saves images and
        volumes for whole-platform backups)."""
        platform = cls.__new__(cls)
        platform._compose(ctx, builder, services, certs, wakes, archive, cluster)
        return platform

    def _compose(
        self,
        ctx: CoreContext,
        builder: Builder,
        services: Services | None,
        certs: Certificates | None = None,
        wakes: asyncio.Queue[str] | None = None,
        archive: ArchiveEngine | None = None,
        cluster: ClusterOps | None = None,
    ) -> None:
        self.ctx = ctx
        # The cluster verbs (None: a platform built without an engine's cluster, as in unit tests).
        self.cluster = cluster
        self.builder = builder
        self.rollouts = Rollouts(ctx)
        self.reconciler = Reconciler(ctx)
        self.deploys = Deploys(ctx, builder, self.rollouts)
        self.routing = Routing(ctx)
        self.changes = ReleaseChanges(ctx, self.rollouts)
        # Idle apps put to sleep, woken by the requests the proxy holds for them (none without a proxy's queue).
        self.sleepers = Sleepers(ctx, self.rollouts.converge, wakes if wakes is not None else asyncio.Queue())
        # Scheduled jobs: each run is a `lbsolo run` (run_command below).
        self.cron = CronJobs(ctx, self.run_command)
        # Alerts: rules looked at every few seconds and fed by the bus; incidents to webhooks and email.
        self.alerts = Alerts(ctx, certs)
        # Without the engine's Services part (tests' fakes) there are no add-ons, and the API says so.
        self.backups: AddonBackups | None = None if services is None else AddonBackups(ctx, services)
        self.addons: Addons | None = (
            None if services is None or self.backups is None else Addons(ctx, services, self.set_config, self.backups)
        )
        # Log drains: every line of an app's log (and of its add-ons) also to its drains (syslog, HTTPS).
        self.drains = Drains(ctx, None if self.addons is None else self.addons.observe.follow_logs)
        # Preview apps of pull requests, made and removed by the push webhook's pull request events.
        self.previews = Previews(
            ctx, self.deploys, PreviewAddons(ctx, self.addons), self.create_app, self.destroy_app
        )
        # Whole-platform backups, taken by hand or on schedule: they need an engine that saves images and volumes.
        self.platform_backups: PlatformBackups | None = (
            None if archive is None else PlatformBackups(ctx, PlatformBackup(ctx, archive, self.backups))
        )
        # ACME certificates: made by the daemon, which wires them to the proxy (None: the API says ACME is off).
        self.certs = certs
        # What the API and the daemon read of the context, by name.
        self.settings, self.state, self.engine, self.ingress = ctx.settings, ctx.state, ctx.engine, ctx.ingress
        self.bus, self.logs, self.collector, self.jobs = ctx.bus, ctx.logs, ctx.collector, ctx.jobs

    # ---- sleeping apps
    async def set_sleep(self, name: str, after: float | None, with_workers: bool = False) -> dict[str, Any]:
        return await self.sleepers.set_sleep(name, after, with_workers)

    async def sleep_settings(self, name: str) -> dict[str, Any]:
        return self.sleepers.describe(await self.ctx.app(name))

    # ---- the reconcile loop, for the daemon
    async def reconcile(self) -> list[Action]:
        return await self.reconciler.reconcile()

    async def reconcile_forever(self) -> None:
        await self.reconciler.reconcile_forever()

    async def watch_events(self) -> None:
        await self.reconciler.watch_events()

    async def recover(self) -> int:
        failed = await self.reconciler.recover()
        await self.previews.recover()
        return failed

    def wake(self) -> None:
        self.ctx.wake()

    @property
    def pause_note(self) -> str | None:
        """Set while the daemon hands over to its successor: the API refuses changes, saying this."""
        return self.ctx.pause_note

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
            await asyncio.to_thread(shutil.rmtree, self.cron.log_dir / name, True)
            await asyncio.to_thread(self.engine.remove_network, self.ctx.network(name))
            if not await asyncio.to_thread(self.state.list_apps):
                # The network all apps shared before each had its own: gone with the last app.
                await asyncio.to_thread(self.engine.remove_network, self.ctx.shared_network)
        # The app's lock stays: a reconcile pass that read the app before sees it changed hands.
        self.ctx.restarts.pop(name, None)
        await self.previews.parent_destroyed(name)
        return {"name": name, "containers": len(replicas), "images": len(removed), "volumes": vols}

    async def releases(self, name: str) -> list[dict[str, Any]]:
        app = await self.ctx.app(name)
        rows = await asyncio.to_thread(self.state.list_releases, name)
        shown = []
        for r in rows:
            secret = release_secrets(r, app, rows)  # the release's own record, never today's list
            shown.append({**r.to_dict(), "config": masked_config(r.config, secret), "secrets": sorted(secret)})
        return shown

    async def export_k8s(self, name: str, registry: str | None = None, volume_size: str = "1Gi") -> list[dict]:
        """The app's current release as Kubernetes manifests (lbsolo.export_k8s): secret values are in
        its Secret, so this is the admin's to read. The image is `<registry>/<app>:v<N>`."""
        app = await self.ctx.app(name)
        if app.release is None:
            raise InvalidInput(f"{name} has no release yet: deploy it first, then export it")
        rows = await asyncio.to_thread(self.state.list_releases, name)
        release = next(r for r in rows if r.version == app.release)
        secret = release_secrets(release, app, rows) | {k for k in release.config if looks_secret(k)}
        target = export_target(name, release.label, registry, volume_size, self.settings)
        return k8s_manifests(app, release, secret, target)

    async def recent_releases(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest releases of every app, newest first: what, when, how it went (no config)."""
        rows = await asyncio.to_thread(self.state.recent_releases, limit)
        keys = ("app", "version", "status", "description", "created_at", "error")
        return [{k: v for k, v in r.to_dict().items() if k in keys} for r in rows]

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

    # ---- config, rollback, promote, resources, volumes: each makes a release (core_releases)
    async def config(self, name: str) -> dict[str, str]:
        return await self.changes.config(name)

    async def set_config(
        self, name: str, values: dict[str, str], unset: list[str], secret: bool = False
    ) -> DeployJob | None:
        return await self.changes.set_config(name, values, unset, secret)

    async def rollback(self, name: str, version: int | None) -> DeployJob:
        return await self.changes.rollback(name, version)

    async def promote(self, source: str, target: str) -> DeployJob:
        return await self.changes.promote(source, target)

    async def set_resources(self, name: str, process: str, memory: str | None, cpus: float | None) -> DeployJob | None:
        return await self.changes.set_resources(name, process, memory, cpus)

    async def add_volume(self, name: str, volume: str, path: str) -> DeployJob | None:
        return await self.changes.add_volume(name, volume, path)

    # ---- static routes: services on this machine that lbsolo does not run

    async def set_health(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        async with self.lock(name):
            app = await self.ctx.app(name)
            merged = {**(app.health or {}), **values}
            HealthCheck.from_dict(merged)
            app.health = merged
            await self.ctx.save(app)
        return merged

    # ---- disk: image retention

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
    async def run_command(
        self, name: str, command: str, out: LogBuffer, *, timeout: float | None = None, container: str | None = None
    ) -> int:
        """`lbsolo run` (and each scheduled job's run): a one-off container of the current release
        with its config, named `container` if given, removed after; its exit code."""
        app = await self.ctx.app(name)
        if app.release is None:
            raise Conflict(f"{name} has no release yet: deploy it first")
        release = await asyncio.to_thread(self.state.get_release, name, app.release)
        network = await self.ctx.ensure_network(name)
        loop = asyncio.get_running_loop()
        return await asyncio.to_thread(
            self.engine.run_once,
            app=name,
            image=release.image,
            command=command,
            env=self.ctx.spec(app, release, "run", {}).env(),
            network=network,
            volumes=await self.ctx.volumes(app),
            on_output=lambda line: loop.call_soon_threadsafe(out.append, line),
            timeout=self.settings.deploy_timeout * 10 if timeout is None else timeout,
            name=container,
        )

    # ---- delegated to the composed parts (core_deploy.Deploys, core_routing.Routing)
    async def deploy(self, name: str, context: Path, build_args: dict[str, str] | None = None) -> DeployJob:
        return await self.deploys.deploy(name, context, build_args)

    async def deploy_git(self, name: str, url: str, ref: str | None) -> DeployJob:
        return await self.deploys.deploy_git(name, url, ref)

    async def deploy_pushed(self, name: str, ref: str) -> DeployJob:
        return await self.deploys.deploy_pushed(name, ref)

    async def set_repo(self, name: str, url: str, *, replace_existing: bool = True) -> str:
        return await self.deploys.set_repo(name, url, replace_existing=replace_existing)

    async def hook(self, name: str) -> dict[str, str]:
        return await self.deploys.hook(name)

    async def hook_secret(self, name: str, create: bool = True) -> str:
        return await self.deploys.hook_secret(name, create)

    async def cancel_builds(self, name: str, build_id: str | None = None) -> list[str]:
        return await self.deploys.cancel_builds(name, build_id)

    async def builds(self, name: str) -> list[Build]:
        return await self.deploys.builds(name)

    async def build_log(self, name: str, build_id: str | None) -> list[str]:
        return await self.deploys.build_log(name, build_id)

    async def gc(self, name: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        return await self.deploys.gc(name, dry_run)

    async def disk_usage(self) -> dict[str, int]:
        return await self.deploys.disk_usage()

    async def set_domains(self, name: str, add: list[str], remove: list[str]) -> list[str]:
        return await self.routing.set_domains(name, add, remove)

    async def https(self, name: str) -> dict[str, Any]:
        return await self.routing.https(name)

    async def set_https(
        self,
        name: str,
        redirect: bool | None,
        hsts: bool | None = None,
        hsts_max_age: int | None = None,
        hsts_subdomains: bool | None = None,
    ) -> dict[str, Any]:
        return await self.routing.set_https(name, redirect, hsts, hsts_max_age, hsts_subdomains)

    async def proxy_settings(self, name: str) -> dict[str, Any]:
        return await self.routing.proxy_settings(name)

    async def set_proxy_settings(self, name: str, request_buffering: bool | None) -> dict[str, Any]:
        return await self.routing.set_proxy_settings(name, request_buffering)

    async def load_static_routes(self) -> None:
        return await self.routing.load_static_routes()

    async def static_routes(self) -> list[dict[str, Any]]:
        return await self.routing.static_routes()

    async def add_static_route(self, name: str, to: str, domains: Iterable[str] = ()) -> dict[str, Any]:
        return await self.routing.add_static_route(name, to, domains)

    async def remove_static_route(self, name: str) -> None:
        return await self.routing.remove_static_route(name)
