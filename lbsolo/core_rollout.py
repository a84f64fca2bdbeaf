"""Rolling a release out: named steps, each saved on the release as it starts.

release phase -> start the new replicas -> wait until they pass their checks -> swap traffic in
one route update -> drain the old replicas -> stop them. Any failure before the swap leaves the
previous release serving, untouched. Rollouts of one app are serialised by its lock; different
apps proceed in parallel. Scaling takes the same care: new replicas join after their checks,
surplus ones drain first.

Platform composes it over the core's context (core_context.py); the use cases that decide what
to release live in core. It must not read or change the reconcile loop's own state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from lbsolo import run
from lbsolo.build import LogBuffer
from lbsolo.core_context import CoreContext
from lbsolo.core_plan import ActionKind, Desired, plan, routes_for
from lbsolo.errors import Conflict, DeployFailed, LbsoloError
from lbsolo.events import EventKind
from lbsolo.models import WEB, App, DeployStep, HealthCheck, Release, ReleaseStatus, Replica
from lbsolo.proxy_routes import Target

log = logging.getLogger("lbsolo.core")


@dataclass
class DeployJob:
    """A release-making use case running in the background; its output streams like a deploy's."""

    app: str
    output: LogBuffer
    result: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class Rollouts:
    """Making a release and putting it in service, over the core's context."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx

    async def release(
        self,
        app_name: str,
        out: LogBuffer,
        *,
        description: str,
        image: str | None = None,
        processes: dict[str, str] | None = None,
        health: dict[str, Any] | None = None,
        cron: list[dict[str, Any]] | None = None,
        config: dict[str, str] | None = None,
        base: Release | None = None,
        app_changes: Any = None,
    ) -> Release:
        """Create the next release (from `base` or the current one, with changes) and roll it out."""
        ctx = self.ctx
        async with ctx.lock(app_name):
            app = await ctx.app(app_name)
            app.asleep = False  # a new release runs its formation (saved with the release it serves)
            if app_changes is not None:
                app_changes(app)
            current = await asyncio.to_thread(ctx.state.get_release, app_name, app.release) if app.release else None
            source = base or current
            if image is None and source is None:
                if app_changes is not None:
                    await ctx.save(app)  # nothing runs yet: the change applies to the first deploy
                raise Conflict(f"{app_name} has no release yet: deploy it first (lbsolo deploy --app {app_name})")
            version = await asyncio.to_thread(ctx.state.next_version, app_name)
            values = dict(config if config is not None else (base.config if base else app.config))
            release = Release(
                app=app_name,
                version=version,
                image=image or source.image,  # type: ignore[union-attr]
                description=description,
                config=values,
                secrets=sorted(k for k in values if k in set(app.secrets)),  # masks this release, whatever comes later
                processes=dict(processes if processes is not None else source.processes),  # type: ignore[union-attr]
                health={**(health if health is not None else source.health), **(app.health or {})},  # type: ignore[union-attr]
                cron=[dict(e) for e in (cron if cron is not None else source.cron if source else [])],
            )
            await asyncio.gather(
                asyncio.to_thread(ctx.engine.tag_image, release.image, f"lbsolo/{app_name}", release.label),
                ctx.save(release),
            )
            ctx.bus.emit(
                EventKind.RELEASE_CREATED, app_name, f"{release.label}: {description}", release=release.label,
                description=description,
            )  # fmt: skip
            out.append(f"-----> Releasing {release.label} ({description})")
            await self.rollout(app, release, out)
            return release

    async def _step(self, release: Release, step: DeployStep, status: ReleaseStatus | None = None) -> None:
        release.step = step
        if status is not None:
            release.status = status
        await self.ctx.save(release)

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

    async def _hold(self, step: DeployStep) -> None:
        """Fault injection for tests (LBSOLO_HOLD_AT_STEP): a rollout that has done `step`'s work waits forever.

        The test then kills the daemon there, at a known step; off (empty) in normal use.
        """
        if self.ctx.settings.hold_at_step == step:
            log.warning("rollout held after step %s (LBSOLO_HOLD_AT_STEP)", step)
            await asyncio.Event().wait()

    async def rollout(self, app: App, release: Release, out: LogBuffer) -> None:
        """Named steps; any failure before SWAP leaves the previous release serving untouched."""
        ctx = self.ctx
        name = app.name
        check = HealthCheck.from_dict(release.health)
        network = await ctx.ensure_network(name)
        volumes = await ctx.volumes(app)
        new: list[Replica] = []
        try:
            if release.command("release"):
                loop = asyncio.get_running_loop()
                await self._step(release, DeployStep.RELEASE_PHASE, ReleaseStatus.DEPLOYING)
                out.append(f"       release phase: {release.command('release')}")
                code = await asyncio.to_thread(
                    ctx.engine.run_once,
                    app=name,
                    image=release.image,
                    command=release.command("release") or "",
                    env=ctx.spec(app, release, "release", {}).env(),
                    network=network,
                    volumes=volumes,
                    on_output=lambda line: loop.call_soon_threadsafe(out.append, f"       | {line}"),
                    timeout=ctx.settings.deploy_timeout,
                )
                if code != 0:
                    raise DeployFailed(f"the release command exited with {code}; nothing was rolled out")
                await self._hold(DeployStep.RELEASE_PHASE)
            formation = {p: n for p, n in app.formation.items() if n > 0 and p in release.process_types()}
            async with self._stepping(release, DeployStep.START, ReleaseStatus.DEPLOYING):
                for process, count in sorted(formation.items()):
                    for _ in range(count):
                        replica = await run.start_replica(ctx.engine, ctx.spec(app, release, process, volumes))
                        new.append(replica)
                        where = f" on {replica.host}:{replica.host_port}" if replica.address else ""
                        out.append(f"       started {replica.name}{where}")
            ctx.watch_logs(new)
            await self._hold(DeployStep.START)
            async with self._stepping(release, DeployStep.WAIT_READY):
                await asyncio.gather(
                    *(
                        run.wait_ready(
                            ctx.engine,
                            r,
                            check=check,
                            host_header=ctx.host_header(name),
                            timeout=ctx.settings.deploy_timeout,
                        )
                        for r in new
                    )
                )
            out.append(f"       {len(new)} replica(s) healthy")
            await self._hold(DeployStep.WAIT_READY)
        except LbsoloError as e:
            release.status, release.error = ReleaseStatus.FAILED, e.message
            await ctx.save(release)
            await run.stop_replicas(ctx.engine, new, 0)
            raise DeployFailed(
                f"{release.label} failed to start; the previous release keeps serving. {e.message}"
            ) from e
        except BaseException:
            await asyncio.shield(run.stop_replicas(ctx.engine, new, 0))
            raise

        # The new replicas just passed their checks: they are the route, with no engine round
        # trip or state write between the check and the swap. Who is old is asked of the engine after.
        ctx.publish_route(name, routes_for({name: ctx.desired(app, release.version)}, new)[name])
        await self._step(release, DeployStep.SWAP)
        out.append("       traffic switched")
        await self._hold(DeployStep.SWAP)

        current = await asyncio.to_thread(ctx.engine.list_replicas, name)
        fresh = {r.id for r in new}
        old = [r for r in current if r.id not in fresh and not r.one_off]  # a one-off is its starter's
        await self._step(release, DeployStep.DRAIN)
        old_targets = [Target(*r.address) for r in old if r.process == WEB and r.address]
        if old_targets and not await ctx.ingress.drain(old_targets, ctx.settings.drain_timeout):
            out.append(f"       drain timed out after {ctx.settings.drain_timeout:.0f}s")
        await self._hold(DeployStep.DRAIN)
        await self._step(release, DeployStep.STOP_OLD)
        await run.stop_replicas(ctx.engine, old, ctx.settings.stop_timeout)
        await self._hold(DeployStep.STOP_OLD)

        for r in await asyncio.to_thread(ctx.state.list_releases, name):
            if r.status == ReleaseStatus.ACTIVE and r.version != release.version:
                r.status = ReleaseStatus.SUPERSEDED
                await ctx.save(r)
        app.release = release.version
        await ctx.save(app)
        ctx.restarts.pop(name, None)
        await self._step(release, DeployStep.DONE, ReleaseStatus.ACTIVE)
        out.append(f"-----> {name} {release.label} is serving at {ctx.settings.app_url(name)}")

    async def converge(self, app: App) -> None:
        """Bring replica counts to the formation: new ones join after passing checks, extra ones drain first."""
        ctx = self.ctx
        release = await asyncio.to_thread(ctx.state.get_release, app.name, app.release)
        actual = await asyncio.to_thread(ctx.engine.list_replicas, app.name)
        actions = plan({app.name: Desired(app.release, app.formation)}, actual)
        volumes = await ctx.volumes(app)
        check = HealthCheck.from_dict(release.health)
        started = []
        for a in actions:
            if a.kind is ActionKind.RUN:
                started.append(await run.start_replica(ctx.engine, ctx.spec(app, release, a.process, volumes)))
        ctx.watch_logs(started)
        results = await asyncio.gather(
            *(
                run.wait_ready(
                    ctx.engine,
                    r,
                    check=check,
                    host_header=ctx.host_header(app.name),
                    timeout=ctx.settings.deploy_timeout,
                )
                for r in started
            ),
            return_exceptions=True,
        )
        failed = [r for r, res in zip(started, results, strict=True) if isinstance(res, BaseException)]
        await run.stop_replicas(ctx.engine, failed, 0)
        removing = [a.replica for a in actions if a.kind is ActionKind.REMOVE and a.replica]
        gone = {r.id for r in removing}
        keep = [r for r in await asyncio.to_thread(ctx.engine.list_replicas, app.name) if r.id not in gone]
        ctx.publish_route(app.name, routes_for({app.name: ctx.desired(app)}, keep)[app.name])
        targets = [Target(*r.address) for r in removing if r.process == WEB and r.address]
        if targets:
            await ctx.ingress.drain(targets, ctx.settings.drain_timeout)
        await run.stop_replicas(ctx.engine, removing, ctx.settings.stop_timeout)
        if failed:
            raise DeployFailed(f"{len(failed)} new replica(s) failed their health checks: {results[0]}")

    async def run_job(self, app: str, work: Any) -> DeployJob:
        """Run a release-making use case in the background; its output streams like a deploy's."""
        ctx = self.ctx
        await ctx.app(app)
        job = DeployJob(app=app, output=LogBuffer())

        async def body() -> None:
            try:
                release = await work(job.output)
                job.result = self.ok(app, release)
            except LbsoloError as e:
                job.output.append(f" !     {e.message}")
                job.result = {"ok": False, "app": app, "error": {"code": e.code, "message": e.message}}
            except Exception as e:
                log.exception("%s of %s crashed", job.task.get_name() if job.task else "job", app)
                job.output.append(f" !     internal error: {e}")
                job.result = {"ok": False, "app": app, "error": {"code": "error", "message": str(e)}}
            finally:
                job.output.close()
                self.emit_result(job)

        job.task = ctx.spawn(body(), f"release-{app}")
        return job

    def emit_result(self, job: DeployJob) -> None:
        ctx = self.ctx
        r = job.result
        if r.get("ok"):
            ctx.bus.emit(
                EventKind.DEPLOY_SUCCEEDED,
                job.app,
                f"{job.app} {r['release']} is serving",
                release=r["release"],
                url=r["url"],
            )
        else:
            error = r.get("error") or {}
            message = str(error.get("message", "failed")).splitlines()[0]
            ctx.bus.emit(EventKind.DEPLOY_FAILED, job.app, message, code=error.get("code", "error"))

    def ok(self, app: str, release: Release) -> dict[str, Any]:
        return {"ok": True, "app": app, "release": release.label, "url": self.ctx.settings.app_url(app)}
