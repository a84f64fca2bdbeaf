"""A preview app's own add-ons: each of the parent's, cloned from its latest backup on this machine.

With `previews:settings APP --with-addons`, every add-on attached to the parent gets a twin of the
same kind and version, attached to the preview under the same config var, and the parent add-on's
newest local backup is loaded into it (none yet: the twin starts empty, and the preview's note
says so). The parent's add-ons themselves are only read (their backup files), never touched.
A preview's add-ons are removed before the preview app itself (their containers leave its network
first), without a final backup.

A part of core_previews.Previews; it must not decide what a preview takes of its parent's config
(previews.preview_config does) and never attach a parent's add-on to a preview.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

from lbsolo.build import LogBuffer
from lbsolo.core_addons import Addons
from lbsolo.core_context import CoreContext
from lbsolo.core_rollout import DeployJob
from lbsolo.errors import Conflict, DeployFailed, NotFound
from lbsolo.models import validate_app_name

log = logging.getLogger("lbsolo.core")


def addon_names(preview: str, kind: str, tries: int = 4) -> list[str]:
    """Names a preview's add-on may take: `<preview>-<kind>` when it fits, then hashed ones."""
    names = [f"{preview}-{kind}"] if len(preview) + len(kind) < 30 else []
    for salt in range(tries):
        tail = "-" + hashlib.sha256(f"{preview}#{kind}#{salt}".encode()).hexdigest()[:6]
        names.append(f"{preview[: 30 - len(tail)].rstrip('-')}{tail}")
    return [validate_app_name(n, "add-on name") for n in dict.fromkeys(names)]


async def finished(job: DeployJob | None) -> dict[str, Any]:
    """Wait for a job; DeployFailed with its error unless it ended well. Its result."""
    if job is None:
        return {"ok": True}
    if job.task is not None:
        await asyncio.shield(job.task)
    if not job.result.get("ok"):
        error = job.result.get("error") or {}
        raise DeployFailed(str(error.get("message") or "it failed"))
    return job.result


class PreviewAddons:
    """Cloning a parent's add-ons for a preview, and removing a preview's."""

    def __init__(self, ctx: CoreContext, addons: Addons | None) -> None:
        self.ctx = ctx
        self.addons = addons  # None: this daemon runs no add-ons

    async def clone(self, parent: str, preview: str) -> list[str]:
        """Give `preview` a twin of each add-on attached to `parent`, loaded from its latest local
        backup; notes on what it lacks. Raises (the caller removes the preview) when one fails."""
        attached = [a for a in await asyncio.to_thread(self.ctx.state.list_addons) if parent in a.attachments]
        if not attached:
            return []
        if self.addons is None:
            return ["add-ons are off on this daemon: the preview has none"]
        notes = []
        for source in attached:
            name = await self._free_name(preview, source.kind)
            job = await self.addons.create(
                source.kind, preview, name=name, version=source.version, as_var=source.attachments[parent]
            )
            await finished(job)
            latest = await asyncio.to_thread(self._latest_backup, source.name, source.kind)
            if latest is None:
                notes.append(f"{name} starts empty: {source.name} has no backup on this machine")
                continue
            backup_id, path = latest
            out = LogBuffer()
            try:
                async with self.ctx.lock(name):
                    addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
                    await self.addons.backups.load(addon, path, f"backup {backup_id} of {source.name}", out)
            finally:
                out.close()
            notes.append(f"{name}: {source.name}'s backup {backup_id}")
        return notes

    async def _free_name(self, preview: str, kind: str) -> str:
        apps = {a.name for a in await asyncio.to_thread(self.ctx.state.list_apps)}
        taken = apps | {a.name for a in await asyncio.to_thread(self.ctx.state.list_addons)}
        taken |= {r.name for r in await asyncio.to_thread(self.ctx.state.list_routes)}
        for name in addon_names(preview, kind):
            if name not in taken:
                return name
        raise Conflict(f"no free name for {preview}'s {kind} add-on")

    def _latest_backup(self, addon: str, kind: str) -> tuple[str, Any] | None:
        """Blocking: the newest backup of `addon` whose file is on this machine (id, path)."""
        assert self.addons is not None
        files = self.addons.backups.files
        for m in files.list(addon):
            path = files.dump_path(addon, m["id"], str(m.get("kind") or kind))
            if path.is_file():
                return m["id"], path
        return None

    async def remove(self, preview: str) -> list[str]:
        """Remove the add-ons attached to `preview` (all its own), with their data; their names."""
        if self.addons is None:
            return []
        removed = []
        for addon in await asyncio.to_thread(self.ctx.state.list_addons):
            if preview not in addon.attachments:
                continue
            async with self.ctx.lock(addon.name):
                # The preview goes next: no release of it to detach from, only the record.
                current = await asyncio.to_thread(self.ctx.state.get_addon, addon.name)
                current.attachments.pop(preview, None)
                await asyncio.to_thread(self.ctx.state.save_addon, current)
            if current.attachments:  # attached elsewhere by hand since: not the preview's alone
                log.warning("%s stays: attached to %s too", addon.name, ", ".join(sorted(current.attachments)))
                continue
            with contextlib.suppress(NotFound):
                await self.addons.destroy(addon.name, confirm=addon.name, backup=False)
            removed.append(addon.name)
        return removed
