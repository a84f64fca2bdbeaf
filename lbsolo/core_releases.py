"""The use cases that change an app by making a release: config, rollback, promote, resources,
volumes. Each change of a deployed app becomes a new release rolled out with zero downtime (through
core_rollout.Rollouts); an app with no release yet keeps the change for its first deploy.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lbsolo.build import LogBuffer
from lbsolo.core_context import CoreContext
from lbsolo.core_plan import rollback_target
from lbsolo.core_rollout import DeployJob, Rollouts
from lbsolo.errors import Conflict, InvalidInput
from lbsolo.events import EventKind
from lbsolo.models import (
    App,
    Release,
    masked_config,
    release_secrets,
    validate_config_key,
    validate_mount_path,
    validate_process_name,
    validate_volume_name,
)


class ReleaseChanges:
    """Config, rollback, promote, resources and volumes: each a release (Platform hands these over)."""

    def __init__(self, ctx: CoreContext, rollouts: Rollouts) -> None:
        self.ctx = ctx
        self.rollouts = rollouts

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
        self.ctx.bus.emit(EventKind.CONFIG_CHANGED, name, "config changed", set=sorted(values), unset=sorted(unset))
        what = ", ".join([*(f"set {k}" for k in values), *(f"unset {k}" for k in unset)])
        return await self._app_change(name, f"config: {what}", change)

    async def rollback(self, name: str, version: int | None) -> DeployJob:
        async def work(out: LogBuffer) -> Release:
            app = await self.ctx.app(name)
            releases = await asyncio.to_thread(self.ctx.state.list_releases, name)
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
        rel = await asyncio.to_thread(self.ctx.state.get_release, source, src.release)

        async def work(out: LogBuffer) -> Release:
            out.append(f"-----> Promoting {source} {rel.label} to {target} (same image, {target}'s config)")
            return await self.rollouts.release(
                target,
                out,
                description=f"promote {source} {rel.label}",
                image=rel.image,
                processes=rel.processes,
                health=rel.health,
                cron=rel.cron,
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
            async with self.ctx.lock(name):
                app = await self.ctx.app(name)
                change(app)
                await self.ctx.save(app)
            return None

        async def work(out: LogBuffer) -> Release:
            return await self.rollouts.release(name, out, description=what, app_changes=change)

        return await self.rollouts.run_job(name, work)
