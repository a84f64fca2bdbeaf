"""Add-ons' use cases: create a database for an app, attach it to more apps, detach, destroy.

An add-on is one container of its kind's image on a named volume (through the engine's Services
part), on the networks of the apps attached to it and no others. Attaching gives the app the
add-on's URL as a secret config var, which makes a new release rolled out like any config
change. Creation is undone whole if any step fails (nothing half-made); a daemon killed during
one finds the record still `creating` on its next start and removes what was made (`resume`).
The kinds' knowledge (images, environment, URLs, readiness) is addon_kinds.py's; who reaches
an add-on (expose, rotate, promote, shell) is core_addon_access.py's, composed here as `access`;
new versions (addons:upgrade) are core_addon_upgrade.py's, composed as `upgrades`; logs and
CPU/memory readings core_addon_observe.py's, composed as `observe`. Destroying
takes a final, verified backup first (through the backups part) unless told not to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lbsolo.addon_backup_files import PLATFORM_FOLDER
from lbsolo.addon_kinds import Credentials, kind_of
from lbsolo.build import LogBuffer
from lbsolo.core_addon_access import AddonAccess, redis_errors, refuse_while_upgrading
from lbsolo.core_addon_backups import AddonBackups
from lbsolo.core_addon_observe import AddonObserve
from lbsolo.core_addon_upgrade import AddonUpgrades
from lbsolo.core_context import CoreContext
from lbsolo.core_rollout import DeployJob
from lbsolo.engine import Services
from lbsolo.errors import Conflict, EngineError, InvalidInput, LbsoloError, NotFound
from lbsolo.events import EventKind
from lbsolo.models import validate_app_name, validate_config_key
from lbsolo.models_addons import Addon, AddonStatus

log = logging.getLogger("lbsolo.core")

RESTORE_MARKER = ".platform-restore"  # written by lbsolo restore beside the backup to load (platform_restore.py)

SetConfig = Callable[..., Awaitable[DeployJob | None]]
ADDON_RESTARTED = "addon.restarted"  # an event kind (EventKind's are plain strings)


class Addons:
    """The add-on use cases, over the core's context and the engine's Services part.

    `set_config` is the platform's own config change (a release of the app, rolled out);
    `backups` the backups part, for the final backup of a destroy and an upgrade's dump.
    """

    def __init__(self, ctx: CoreContext, services: Services, set_config: SetConfig, backups: AddonBackups) -> None:
        self.ctx = ctx
        self.services = services
        self.set_config = set_config
        self.backups = backups
        self.access = AddonAccess(ctx, services, set_config, self._wait_ready)
        self.upgrades = AddonUpgrades(ctx, services, set_config, self, backups)
        self.observe = AddonObserve(ctx, services)

    # ---- reading
    async def list(self) -> list[dict[str, Any]]:
        addons = await asyncio.to_thread(self.ctx.state.list_addons)
        return await self._with_stats([await self._shown(a) for a in addons])

    async def info(self, name: str) -> dict[str, Any]:
        addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
        return (await self._with_stats([await self._shown(addon)]))[0]

    async def _with_stats(self, shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each running container's CPU and memory now (`stats`, None: not running or no reading), read at once."""
        containers = [out["container"] for out in shown]
        ids = [c["id"] if c and c["state"] == "running" else None for c in containers]
        for out, numbers in zip(shown, await self.observe.stats(ids), strict=True):
            out["stats"] = numbers
        return shown

    async def _shown(self, addon: Addon) -> dict[str, Any]:
        out = addon.public()
        # A rotation keeps its next and retiring passwords on the record too: none is shown.
        out["credentials"] = {k: ("********" if "password" in k else v) for k, v in addon.credentials.items()}
        out["rotating"] = any(k.startswith(("next_", "retiring_")) for k in addon.credentials)
        record = await asyncio.to_thread(self.services.find_service, addon.name)
        out["container"] = (
            None if record is None else {"state": record["state"], "image": record["image"], "id": record["id"]}
        )
        out["url"] = kind_of(addon.kind).url(self._credentials(addon, masked=True), addon.name)
        out.update({k: v for k, v in self.access.exposure(addon).items() if k in ("exposed_url", "public")})
        return out

    @staticmethod
    def _credentials(addon: Addon, masked: bool = False) -> Credentials:
        creds = Credentials.from_dict(addon.credentials)
        return Credentials(creds.user, "********", creds.database) if masked else creds

    # ---- creating
    async def create(
        self, kind: str, app: str, *, name: str | None = None, version: str | None = None, as_var: str | None = None
    ) -> DeployJob:
        """Provision an add-on for `app` and attach it; runs in the background, output streamed."""
        k = kind_of(kind)
        version = k.check_version(version or self.default_version(kind))
        name = validate_app_name(name or f"{app}-{kind}", "add-on name")
        if name == PLATFORM_FOLDER:
            raise InvalidInput(f"invalid add-on name {name!r}: its backups' folder holds the platform's own")
        var = validate_config_key(as_var or k.url_var)
        target = await self.ctx.app(app)
        self._check_free_var(target.config, var, app)
        addon = Addon(name, kind, version, credentials=k.credentials(name).to_dict())
        await asyncio.to_thread(self.ctx.state.create_addon, addon)
        job = DeployJob(app=app, output=LogBuffer())

        async def body() -> None:
            out = job.output
            try:
                await self._provision(addon, app, out)
                job.result = await self._attach(addon, app, var, out)
                self.ctx.bus.emit(EventKind.CONFIG_CHANGED, app, f"add-on {name} attached", set=[var], unset=[])
            except LbsoloError as e:
                out.append(f" !     {e.message}")
                job.result = {"ok": False, "app": app, "error": {"code": e.code, "message": e.message}}
            except Exception as e:
                log.exception("creating add-on %s crashed", name)
                out.append(f" !     internal error: {e}")
                job.result = {"ok": False, "app": app, "error": {"code": "error", "message": str(e)}}
            finally:
                out.close()

        job.task = self.ctx.spawn(body(), f"addon-create-{name}")
        return job

    def default_version(self, kind: str) -> str:
        return str(getattr(self.ctx.settings, f"addon_{kind}_version"))

    @staticmethod
    def _check_free_var(config: dict[str, str], var: str, app: str) -> None:
        if var in config:
            raise Conflict(f"{app} already has {var}: attach with --as ANOTHER_NAME, or unset it first")

    async def _provision(self, addon: Addon, app: str, out: LogBuffer) -> None:
        out.append(f"-----> Creating {addon.kind} {addon.version} add-on {addon.name} for {app}")
        await self.provision(addon, [await self.ctx.ensure_network(app)], out)

    async def provision(self, addon: Addon, networks: list[str], out: LogBuffer) -> None:
        """Image, volume, container on `networks`, ready; undone whole if a step fails."""
        try:
            await self._start(addon, networks, out)
        except BaseException:
            await self.undo(addon)
            raise
        addon.status = AddonStatus.RUNNING
        await asyncio.to_thread(self.ctx.state.save_addon, addon)
        out.append(f"-----> {addon.name} is running")

    async def _start(self, addon: Addon, networks: list[str], out: LogBuffer) -> None:
        k = kind_of(addon.kind)
        creds = self._credentials(addon)
        image = k.image(addon.version)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(
                self.services.pull_image,
                image,
                lambda line: loop.call_soon_threadsafe(out.append, f"       {line}"),
            )
        except EngineError as e:
            raise InvalidInput(f"no image {image} here, and it could not be pulled: {e.message}") from e
        volume = await asyncio.to_thread(self.services.ensure_service_volume, addon.name)
        await asyncio.to_thread(self.services.seed_service_files, addon.name, image, (volume, k.data_path),
                                k.files(creds))  # fmt: skip
        await asyncio.to_thread(
            lambda: self.services.run_service(
                service=addon.name,
                kind=addon.kind,
                image=image,
                env=k.environment(creds),
                command=k.command(creds),
                volume=(volume, k.data_path),
                networks=networks,
            )
        )
        out.append("-----> Waiting until it takes connections")
        await self._wait_ready(addon)

    async def _wait_ready(self, addon: Addon) -> None:
        k = kind_of(addon.kind)
        command = k.ready_command(self._credentials(addon))
        deadline = time.monotonic() + self.ctx.settings.addon_ready_timeout
        while True:
            record = await asyncio.to_thread(self.services.find_service, addon.name)
            if record is None or record["state"] in ("exited", "dead"):
                logs = await asyncio.to_thread(self.ctx.engine.logs, record["id"], 20) if record else ""
                raise EngineError(f"{addon.name} stopped while starting: {logs.strip()[-400:]}")
            if record["running"]:
                code = await asyncio.to_thread(
                    self.ctx.engine.exec, record["id"], command, on_output=lambda _line: None, timeout=10
                )
                if code == 0:
                    return
            if time.monotonic() > deadline:
                raise EngineError(
                    f"{addon.name} did not take connections within {self.ctx.settings.addon_ready_timeout:.0f}s"
                )
            await asyncio.sleep(0.25)

    async def undo(self, addon: Addon) -> None:
        """Remove an add-on whole: container, volume, record."""
        try:
            await asyncio.to_thread(self.services.remove_service, addon.name, volume=True)
        finally:
            await asyncio.to_thread(self.ctx.state.delete_addon, addon.name)

    async def resume(self) -> None:
        """On start: creations a killed daemon left half done are undone (after the upgrades'
        own, which may remove the add-on they were making); the rest keep running."""
        await self.upgrades.resume()
        for addon in await asyncio.to_thread(self.ctx.state.list_addons):
            try:
                if addon.status == AddonStatus.CREATING:
                    log.warning("add-on %s was being created when lbsolo stopped: removing what was made", addon.name)
                    await self.undo(addon)
                    continue
                await self.access.resume(addon)
                if addon.status == AddonStatus.RETIRED:
                    continue  # stopped on purpose by its upgrade
                record = await asyncio.to_thread(self.services.find_service, addon.name)
                if record is None and addon.status == AddonStatus.RUNNING:
                    await self._restored(addon)
                elif record is not None and not record["running"]:
                    await asyncio.to_thread(self.services.start_service, addon.name)
            except LbsoloError as e:
                log.warning("add-on %s: %s", addon.name, e.message)

    async def _restored(self, addon: Addon) -> None:
        """A record without its container after `lbsolo restore`: the container made again on the
        networks of its apps and loaded from the verified backup the restore named beside it."""
        marker = self.backups.files.dir(addon.name) / RESTORE_MARKER
        try:
            backup_id = (await asyncio.to_thread(marker.read_text)).strip()
        except FileNotFoundError:
            log.warning("add-on %s has no container (removed outside lbsolo?)", addon.name)
            return
        out = LogBuffer()
        networks = [await self.ctx.ensure_network(app) for app in sorted(addon.attachments)]
        async with self.ctx.lock(addon.name):
            await self._start(addon, networks, out)
            path = self.backups.files.dump_path(addon.name, backup_id, addon.kind)
            counts = await self.backups.load(addon, path, f"backup {backup_id}", out)
            if addon.exposed:  # published again where addons:expose had put it, once its data is in
                try:
                    await self.replace(addon)
                except LbsoloError as e:
                    log.warning("add-on %s is restored but not exposed on %s:%s again: %s", addon.name,
                                addon.exposed.get("address"), addon.exposed.get("port"), e.message)  # fmt: skip
        await asyncio.to_thread(marker.unlink, missing_ok=True)
        log.info("add-on %s restored from backup %s (%d tables/databases)", addon.name, backup_id, len(counts))

    async def replace(self, addon: Addon) -> None:
        """Recreate the add-on's container (its version's image, same volume, networks and port), ready."""
        k = kind_of(addon.kind)
        publish = (k.port, addon.exposed["address"], addon.exposed["port"]) if addon.exposed else None
        await self.access.recreate(addon, publish)

    async def admin(self, addon: Addon, script: str) -> str:
        said = await self.access.admin(addon, [self._credentials(addon)], script)
        if addon.kind == "redis":
            redis_errors(said, addon.name)  # redis-cli exits 0 on an ERR answer
        return said

    async def wait_ready(self, addon: Addon) -> None:
        await self._wait_ready(addon)

    # ---- keeping them up
    async def heal(self) -> list[str]:
        """A pass like the reconcile loop's, over add-ons: one that should run but whose container
        stopped (crashed past Docker's own restarts, or stopped from outside) is started again.
        One being changed (its lock held: expose, restore, upgrade, rotation, destroy), being made,
        retired or upgraded is left to that change. Returns the names started."""
        started = []
        for addon in await asyncio.to_thread(self.ctx.state.list_addons):
            if addon.status != AddonStatus.RUNNING or addon.upgrade.get("step") or addon.upgrade.get("from"):
                continue
            lock = self.ctx.lock(addon.name)
            if lock.locked():
                continue
            async with lock:
                try:
                    record = await asyncio.to_thread(self.services.find_service, addon.name)
                    if record is None or record["running"] or record["state"] == "restarting":
                        continue
                    await asyncio.to_thread(self.services.start_service, addon.name)
                except LbsoloError as e:
                    log.warning("add-on %s is down and could not be started: %s", addon.name, e.message)
                    continue
            log.warning("add-on %s was %s: started it again", addon.name, record["state"])
            self.ctx.bus.emit(ADDON_RESTARTED, addon.name, f"add-on {addon.name} was {record['state']}: started again")
            started.append(addon.name)
        return started

    async def heal_forever(self) -> None:
        while True:
            await self.heal()
            await asyncio.sleep(self.ctx.settings.reconcile_interval)

    # ---- attaching
    async def attach(self, name: str, app: str, as_var: str | None = None) -> DeployJob | None:
        async with self.ctx.lock(name):
            addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
            refuse_while_upgrading(addon, "attach")
            if addon.status != AddonStatus.RUNNING:
                raise Conflict(f"{name} is {addon.status}, not running")
            if app in addon.attachments:
                raise Conflict(f"{name} is already attached to {app} as {addon.attachments[app]}")
            var = validate_config_key(as_var or kind_of(addon.kind).url_var)
            target = await self.ctx.app(app)
            self._check_free_var(target.config, var, app)
            return await self._attach_job(addon, app, var)

    async def _attach(self, addon: Addon, app: str, var: str, out: LogBuffer) -> dict[str, Any]:
        job = await self._attach_job(addon, app, var)
        if job is None:
            out.append(f"-----> {var} set on {app}: its first deploy gets it")
            return {"ok": True, "app": app, "addon": addon.name, "release": None}
        async for line in job.output.follow():
            out.append(line)
        if job.task is not None:
            await job.task
        return {**job.result, "addon": addon.name}

    async def _attach_job(self, addon: Addon, app: str, var: str) -> DeployJob | None:
        network = await self.ctx.ensure_network(app)
        await asyncio.to_thread(self.services.connect_service, addon.name, network)
        addon.attachments[app] = var
        await asyncio.to_thread(self.ctx.state.save_addon, addon)
        url = kind_of(addon.kind).url(self._credentials(addon), addon.name)
        return await self.set_config(app, {var: url}, [], secret=True)

    async def detach(self, name: str, app: str) -> DeployJob | None:
        async with self.ctx.lock(name):
            addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
            refuse_while_upgrading(addon, "detach")
            var = addon.attachments.pop(app, None)
            if var is None:
                raise NotFound(f"{name} is not attached to {app}")
            await asyncio.to_thread(self.ctx.state.save_addon, addon)
            job = await self.set_config(app, {}, [var])
            await asyncio.to_thread(self.services.disconnect_service, name, self.ctx.network(app))
            return job

    # ---- destroying
    async def destroy(self, name: str, *, confirm: str, detach: bool = False, backup: bool = True) -> dict[str, Any]:
        """Remove the add-on and its data, after a final verified backup (kept under the backups
        directory, restorable into another add-on) unless `backup` is False."""
        if confirm != name:
            raise InvalidInput(f"destroying {name} deletes its data: confirm with --confirm {name}")
        async with self.ctx.lock(name):
            addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
            if addon.attachments and not detach:
                apps = ", ".join(sorted(addon.attachments))
                raise Conflict(f"{name} is attached to {apps}: detach it first, or destroy with --detach")
            refuse_while_upgrading(addon, "destroy")
            for app, var in sorted(addon.attachments.items()):
                job = await self.set_config(app, {}, [var])
                if job is not None and job.task is not None:
                    await job.task
            # After the detaching releases: what the apps wrote until then is in it.
            final = await self._final_backup(addon) if backup else None
            await asyncio.to_thread(self.services.remove_service, name, volume=True)
            await asyncio.to_thread(self.ctx.state.delete_addon, name)
        return {"name": name, "detached": sorted(addon.attachments), "final_backup": final}

    async def _final_backup(self, addon: Addon) -> dict[str, Any] | None:
        """A running add-on's last backup, verified; a stopped one (retired, failed) has none to take."""
        record = await asyncio.to_thread(self.services.find_service, addon.name)
        if addon.status != AddonStatus.RUNNING or record is None or not record["running"]:
            return None
        out = LogBuffer()
        try:
            m = await self.backups.final(addon, out)
        except LbsoloError as e:
            detached = f" ({', '.join(sorted(addon.attachments))} detached)" if addon.attachments else ""
            raise Conflict(
                f"the final backup of {addon.name} failed, so its data was kept{detached}: {e.message} "
                f"(destroy with --no-backup to go without one)"
            ) from e
        finally:
            out.close()
        path = self.backups.files.dump_path(addon.name, m["id"], addon.kind)
        return {"id": m["id"], "path": str(path), "size": m.get("size")}
