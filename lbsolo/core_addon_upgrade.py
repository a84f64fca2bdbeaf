"""`addons:upgrade`: a new version of an add-on, in place or through a dump, never a silent major jump.

In place (same major): the container is recreated from the new version's image on the same
volume and waited for; if it does not become ready, the old version's container comes back.
Via a dump (a new major, only when asked): the old add-on is fenced read-only for its apps,
dumped (the dump is kept as one of its backups), a new add-on of the new version is made with
the same credentials and loaded from the dump, its rows/keys counted against the dump-time
readings; only then every attached app is moved to it (each a zero-downtime release, like a
credential rotation) and the old add-on is stopped and kept, retired, until `addons:destroy`.

Each step is saved on the old record (`upgrade`), so a daemon killed in the middle finds, on
its next start, either an upgrade to undo (before the switch: the new add-on removed, the fence
down) or one to finish (the switch: the remaining apps moved). The version rules and the fence
scripts are addon_upgrade.py's; making, waiting for and removing an add-on are core_addons'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from lbsolo import addon_upgrade as plan
from lbsolo.addon_dumps import compare_counts
from lbsolo.addon_kinds import Credentials, kind_of
from lbsolo.addon_upgrade import UpgradeStep, UpgradeWay
from lbsolo.build import LogBuffer
from lbsolo.core_addon_backups import AddonBackups
from lbsolo.core_context import CoreContext
from lbsolo.core_rollout import DeployJob
from lbsolo.engine import Services
from lbsolo.errors import Conflict, DeployFailed, EngineError, InvalidInput, LbsoloError, NotFound
from lbsolo.models import validate_app_name
from lbsolo.models_addons import Addon, AddonStatus

log = logging.getLogger("lbsolo.core")

SetConfig = Callable[..., Awaitable[DeployJob | None]]
Work = Callable[[LogBuffer], Awaitable[dict[str, Any]]]
UPGRADED = "addon.upgraded"
UPGRADE_FAILED = "addon.upgrade.failed"


class UpgradeFailed(LbsoloError):
    status = 409
    code = "upgrade_failed"


class Provisioner(Protocol):
    """What an upgrade asks of core_addons.Addons."""

    async def provision(self, addon: Addon, networks: list[str], out: LogBuffer) -> None: ...
    async def undo(self, addon: Addon) -> None: ...
    async def replace(self, addon: Addon) -> None: ...
    async def admin(self, addon: Addon, script: str) -> str: ...
    async def wait_ready(self, addon: Addon) -> None: ...


class AddonUpgrades:
    def __init__(
        self,
        ctx: CoreContext,
        services: Services,
        set_config: SetConfig,
        provisioner: Provisioner,
        backups: AddonBackups,
    ) -> None:
        self.ctx = ctx
        self.services = services
        self.set_config = set_config
        self.addons = provisioner
        self.backups = backups

    async def upgrade(
        self, name: str, version: str, *, via_dump: bool = False, new_name: str | None = None
    ) -> DeployJob:
        """Check the request now (a bad one changes nothing), then upgrade in the background. The
        checks and the marks on the records are made under the add-on's lock, so no rotation,
        expose or restore of it interleaves (they refuse while the mark is there)."""
        async with self.ctx.lock(name):
            addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
            k = kind_of(addon.kind)
            if addon.upgrade.get("from"):
                raise Conflict(f"{name} is the new add-on of {addon.upgrade['from']}'s upgrade, not ready yet")
            if addon.status != AddonStatus.RUNNING:
                raise Conflict(f"{name} is {addon.status}, not running: it cannot be upgraded")
            if addon.upgrade.get("step") == UpgradeStep.SWITCHING:
                return self._job(name, lambda out: self._finish_switch(name, out))  # asked again: finish it
            if addon.upgrade:
                raise Conflict(f"{name} is already being upgraded to {addon.upgrade.get('version')}")
            if any(key.startswith(("next_", "retiring_")) for key in addon.credentials):
                raise Conflict(f"{name} is rotating its credentials: upgrade it once that has finished")
            way = plan.way(k, addon.version, version, via_dump=via_dump)
            if way == UpgradeWay.IN_PLACE:
                if new_name:
                    raise InvalidInput("--name names the new add-on of a major upgrade: an in-place one keeps its name")
                return self._job(name, lambda out: self._in_place(name, version, out))
            target = validate_app_name(new_name or plan.upgraded_name(name, k, version), "add-on name")
            new = Addon(target, addon.kind, version, credentials=dict(addon.credentials))
            new.upgrade = {"from": name}
            await asyncio.to_thread(self.ctx.state.create_addon, new)  # the name is taken now, or refused
            addon.upgrade = {"to": target, "version": version, "step": UpgradeStep.DUMPING, "started": time.time()}
            await asyncio.to_thread(self.ctx.state.save_addon, addon)
            return self._job(name, lambda out: self._via_dump(name, target, out))

    def _job(self, name: str, work: Work) -> DeployJob:
        job = DeployJob(app=name, output=LogBuffer())

        async def body() -> None:
            out = job.output
            try:
                job.result = {"ok": True, "addon": name, **await work(out)}
            except LbsoloError as e:
                out.append(f" !     {e.message}")
                job.result = {"ok": False, "addon": name, "error": {"code": e.code, "message": e.message}}
                self.ctx.bus.emit(UPGRADE_FAILED, name, f"upgrade of {name} failed: {e.message}")
            except Exception as e:
                log.exception("upgrading %s crashed", name)
                out.append(f" !     internal error: {e}")
                job.result = {"ok": False, "addon": name, "error": {"code": "error", "message": str(e)}}
            finally:
                out.close()

        job.task = self.ctx.spawn(body(), f"addon-upgrade-{name}")
        return job

    # ---- in place
    async def _in_place(self, name: str, version: str, out: LogBuffer) -> dict[str, Any]:
        async with self.ctx.lock(name):
            addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
            k, old = kind_of(addon.kind), addon.version
            out.append(f"-----> Upgrading {name} in place: {k.name} {old} -> {version} (same major)")
            await self._pull(k.image(version), out)
            addon.upgrade = {"version": version, "way": UpgradeWay.IN_PLACE, "from": old}
            await asyncio.to_thread(self.ctx.state.save_addon, addon)
            addon.version = version
            try:
                await self.addons.replace(addon)
            except LbsoloError as e:
                out.append(f"       {version} did not start ({e.message}): putting {old} back")
                addon.version = old
                await self.addons.replace(addon)
                raise UpgradeFailed(f"{name} stays on {old}: {version} did not start: {e.message}") from e
            finally:
                addon.upgrade = {}
                await asyncio.to_thread(self.ctx.state.save_addon, addon)
        out.append(f"-----> {name} runs {k.name} {version} on the same data")
        self.ctx.bus.emit(UPGRADED, name, f"{name} upgraded in place to {k.name} {version}", version=version)
        return {"version": version, "way": str(UpgradeWay.IN_PLACE)}

    async def _pull(self, image: str, out: LogBuffer) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(
                self.services.pull_image, image, lambda line: loop.call_soon_threadsafe(out.append, f"       {line}")
            )
        except EngineError as e:
            raise InvalidInput(f"no image {image} here, and it could not be pulled: {e.message}") from e

    # ---- via a dump
    async def _via_dump(self, name: str, target: str, out: LogBuffer) -> dict[str, Any]:
        async with self.ctx.lock(name):
            addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
            new = await asyncio.to_thread(self.ctx.state.get_addon, target)
            k = kind_of(addon.kind)
            new.credentials = dict(addon.credentials)
            out.append(f"-----> Upgrading {name} ({k.name} {addon.version}) to {k.name} {new.version} as {target}")
            try:
                await self._pull(k.image(new.version), out)
                await self.addons.admin(addon, plan.fence(k, _creds(addon)))
                out.append(f"       {name} is read-only for its apps until they move (writes fail, none is lost)")
                m = await self.backups.take(addon, "upgrade", out)
                await self._step(addon, UpgradeStep.RESTORING)
                networks = [await self.ctx.ensure_network(app) for app in sorted(addon.attachments)]
                await self.addons.provision(new, networks, out)
                path = self.backups.files.dump_path(name, m["id"], k.name)
                counts = await self.backups.load(new, path, f"backup {m['id']}", out)
                problems = compare_counts(m.get("counts") or {}, m.get("counts_after") or {}, counts)
                if problems:
                    raise UpgradeFailed(f"{target} differs from the dump of {name}: " + "; ".join(problems[:3]))
                out.append(f"       {target} holds {len(counts)} tables/databases, {sum(counts.values())} "
                           "rows/keys: as the dump")  # fmt: skip
            except BaseException as e:
                try:
                    await self._undo(addon, new, out)
                except LbsoloError as undo_error:
                    if isinstance(e, LbsoloError):
                        raise UpgradeFailed(f"{e.message}; then undoing it: {undo_error.message}") from e
                    raise
                if isinstance(e, LbsoloError):
                    raise UpgradeFailed(f"nothing changed, {name} serves as before: {e.message}") from e
                raise
            await self._step(addon, UpgradeStep.SWITCHING)
            return await self._switch(addon, new, out, backup=m["id"])

    async def _step(self, addon: Addon, step: UpgradeStep) -> None:
        addon.upgrade = {**addon.upgrade, "step": step}
        await asyncio.to_thread(self.ctx.state.save_addon, addon)

    async def _undo(self, addon: Addon, new: Addon, out: LogBuffer | None) -> None:
        """Before the switch: the new add-on goes, the fence comes down, the old one is as it was.
        The mark stays until the fence is down (a next start tries again); a failure says so."""
        if out is not None:
            out.append(f"       undoing: removing {new.name}, {addon.name} writable again")
        await self.addons.undo(new)
        try:
            await self.addons.wait_ready(addon)
            await self.addons.admin(addon, plan.unfence(kind_of(addon.kind), _creds(addon)))
        except LbsoloError as e:
            raise UpgradeFailed(
                f"{addon.name} may still be read-only for its apps: {e.message}; lbsolo tries again on its next start"
            ) from e
        addon.upgrade = {}
        await asyncio.to_thread(self.ctx.state.save_addon, addon)

    async def _switch(self, addon: Addon, new: Addon, out: LogBuffer, backup: str = "") -> dict[str, Any]:
        """Move every attached app to the new add-on (a release each), then retire the old one."""
        k = kind_of(new.kind)
        url = k.url(_creds(new), new.name)
        for app, var in sorted(addon.attachments.items()):
            try:
                config = (await self.ctx.app(app)).config
            except NotFound:
                continue  # destroyed meanwhile: nothing to move
            if config.get(var) == url:
                new.attachments[app] = var
                continue  # moved before a failure or a restart: its release went out
            out.append(f"-----> Moving {app} ({var}) to {new.name}")
            network = await self.ctx.ensure_network(app)
            await asyncio.to_thread(self.services.connect_service, new.name, network)
            new.attachments[app] = var
            await asyncio.to_thread(self.ctx.state.save_addon, new)
            job = await self.set_config(app, {var: url}, [], secret=True)
            if job is not None:
                async for line in job.output.follow():
                    out.append(line)
                if job.task is not None:
                    await job.task
                if not (job.result or {}).get("ok", False):
                    why = ((job.result or {}).get("error") or {}).get("message", "its release failed")
                    raise DeployFailed(
                        f"{app} did not move to {new.name}: {why}. Run the same addons:upgrade again to finish"
                    )
        await asyncio.to_thread(self.services.stop_service, addon.name)
        new.backup_schedule, new.backup_keep = addon.backup_schedule, addon.backup_keep
        new.upgrade = {}
        await asyncio.to_thread(self.ctx.state.save_addon, new)
        moved = sorted(addon.attachments)
        addon.status, addon.attachments, addon.backup_schedule = AddonStatus.RETIRED, {}, None
        addon.upgrade = {"to": new.name, "version": new.version, "done": time.time()}
        await asyncio.to_thread(self.ctx.state.save_addon, addon)
        out.append(f"-----> {new.name} ({k.name} {new.version}) serves {', '.join(moved) or 'no app yet'}; "
                   f"{addon.name} is stopped and kept until `lbsolo addons:destroy {addon.name}`")  # fmt: skip
        self.ctx.bus.emit(UPGRADED, addon.name, f"{addon.name} upgraded to {k.name} {new.version} as {new.name}",
                          to=new.name, version=new.version, backup=backup)  # fmt: skip
        return {"version": new.version, "way": str(UpgradeWay.VIA_DUMP), "new": new.name, "moved": moved}

    async def _finish_switch(self, name: str, out: LogBuffer) -> dict[str, Any]:
        async with self.ctx.lock(name):
            addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
            if addon.status != AddonStatus.RUNNING or addon.upgrade.get("step") != UpgradeStep.SWITCHING:
                done = addon.upgrade
                return {"version": done.get("version"), "way": str(UpgradeWay.VIA_DUMP), "new": done.get("to")}
            new = await asyncio.to_thread(self.ctx.state.get_addon, addon.upgrade["to"])
            out.append(f"-----> Finishing the upgrade of {name} to {new.name}: moving the remaining apps")
            return await self._switch(addon, new, out)

    # ---- on start
    async def resume(self) -> None:
        """What a killed daemon left: an upgrade before its switch is undone, one in it finished,
        an in-place one takes the version its container runs."""
        for addon in await asyncio.to_thread(self.ctx.state.list_addons):
            if addon.status != AddonStatus.RUNNING or not addon.upgrade or addon.upgrade.get("from"):
                continue
            try:
                await self._resume(addon)
            except LbsoloError as e:
                log.warning("add-on %s: its upgrade could not be resumed: %s", addon.name, e.message)

    async def _resume(self, addon: Addon) -> None:
        step = addon.upgrade.get("step")
        if addon.upgrade.get("way") == UpgradeWay.IN_PLACE:
            # A container swap cut off in the middle is settled first (the new one kept only if it runs).
            await asyncio.to_thread(self.services.recover_replaced_service, addon.name)
            record = await asyncio.to_thread(self.services.find_service, addon.name)
            image = kind_of(addon.kind).image(str(addon.upgrade["version"]))
            if record is not None and record["running"] and record["image"] == image:
                addon.version = str(addon.upgrade["version"])
            addon.upgrade = {}
            await asyncio.to_thread(self.ctx.state.save_addon, addon)
            log.warning("add-on %s was upgraded in place when lbsolo stopped: it runs %s", addon.name, addon.version)
            return
        new = await asyncio.to_thread(self.ctx.state.find_addon, str(addon.upgrade.get("to")))
        if step == UpgradeStep.SWITCHING and new is not None:
            log.warning("add-on %s was moving its apps to %s when lbsolo stopped: finishing", addon.name, new.name)
            self.ctx.spawn(self._resume_switch(addon.name), f"addon-upgrade-{addon.name}")
            return
        log.warning("add-on %s was being upgraded when lbsolo stopped: undoing it", addon.name)
        if new is None:
            new = Addon(str(addon.upgrade.get("to")), addon.kind, str(addon.upgrade.get("version")))
        record = await asyncio.to_thread(self.services.find_service, addon.name)
        if record is not None and not record["running"]:
            await asyncio.to_thread(self.services.start_service, addon.name)  # a host restart stopped it
        await self._undo(addon, new, None)

    async def _resume_switch(self, name: str) -> None:
        out = LogBuffer()
        try:
            await self._finish_switch(name, out)
        except LbsoloError as e:
            log.warning("add-on %s: the upgrade could not finish: %s", name, e.message)
        finally:
            out.close()


def _creds(addon: Addon) -> Credentials:
    return Credentials.from_dict(addon.credentials)

