"""Scheduled add-on backups: the cron schedule of each add-on, when its next backup is due, the
daemon's loop that runs the due ones, and the pruning of old scheduled backups to `backup_keep`.

The schedule and keep live on the Addon record (so they survive restarts); when the current
schedule was set is kept beside the backups (addon_backup_files). A backup is due at the
schedule's first time after the last scheduled backup (or the last attempt, or the setting of
the schedule): a run missed while the daemon was down is due at once, runs once, and raises an
event saying so. Backups themselves are made by the backup use case handed in (core_addon_backups);
a prune prunes the add-on's bucket too, through the function handed in (core_addon_backup_remote).
It must not change an add-on record other than its schedule and keep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lbsolo import addon_dumps as dumps
from lbsolo.addon_backup_files import BackupFiles
from lbsolo.core_context import CoreContext
from lbsolo.core_rollout import DeployJob
from lbsolo.errors import LbsoloError
from lbsolo.models_addons import Addon, AddonStatus

log = logging.getLogger("lbsolo.core")

SCHEDULE_TICK = 30.0  # seconds between two looks at the schedules
BACKUP_MISSED = "addon.backup.missed"  # an event kind (EventKind's are plain strings)

StartBackup = Callable[..., Awaitable[DeployJob]]
PruneRemote = Callable[[str, int], Awaitable[list[str]]]


class BackupSchedules:
    """The add-ons' backup schedules, over the core's context and the backup files."""

    def __init__(
        self, ctx: CoreContext, files: BackupFiles, start_backup: StartBackup, prune_remote: PruneRemote | None = None
    ) -> None:
        self.ctx = ctx
        self.files = files
        self.start_backup = start_backup
        self.prune_remote = prune_remote  # the bucket's copies beyond keep (core_addon_backup_remote)
        self._attempted: dict[str, float] = {}  # add-on -> when its last scheduled backup was tried

    async def set(self, name: str, schedule: str | None, keep: int | None = None) -> dict[str, Any]:
        """Back the add-on up on a cron schedule (None, "" or "off": no more), keeping the newest
        `keep` scheduled backups; returns the schedule with its next run."""
        text = None if schedule in (None, "", "off", "none") else dumps.check_schedule(str(schedule))
        if keep is not None:
            dumps.check_keep(keep)
        async with self.ctx.lock(name):
            addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
            addon.backup_schedule = text
            if keep is not None:
                addon.backup_keep = keep
            await asyncio.to_thread(self.ctx.state.save_addon, addon)
            await asyncio.to_thread(self.files.set_schedule_since, name, text, time.time())
        self._attempted.pop(name, None)
        due = await self.due(addon) if text else None
        return {"addon": name, "schedule": text, "keep": addon.backup_keep, "next_run": due}

    async def due(self, addon: Addon, manifests: list[dict[str, Any]] | None = None) -> float | None:
        """When the add-on's next scheduled backup is due (in the past: missed, due now); None: no schedule."""
        if not addon.backup_schedule:
            return None
        if manifests is None:
            manifests = await asyncio.to_thread(self.files.list, addon.name)
        last = max((float(m.get("created") or 0) for m in manifests if m.get("source") == "scheduled"), default=None)
        since = await asyncio.to_thread(self.files.schedule_since, addon.name)
        if since is None:  # a schedule set some other way (an old record): counted from now on
            since = time.time()
            await asyncio.to_thread(self.files.set_schedule_since, addon.name, addon.backup_schedule, since)
        return dumps.schedule_due(addon.backup_schedule, since, last, self._attempted.get(addon.name))

    async def run_due(self) -> list[str]:
        """Run the backups that are due (one each, however many runs were missed), then prune each
        add-on's scheduled backups to its `backup_keep`; returns the add-ons backed up."""
        ran = []
        for addon in await asyncio.to_thread(self.ctx.state.list_addons):
            if addon.status != AddonStatus.RUNNING:
                continue
            due, now = await self.due(addon), time.time()
            if due is None or due > now:
                continue
            assert addon.backup_schedule
            if dumps.schedule_missed(addon.backup_schedule, due, now):
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(due))
                message = f"the scheduled backup of {addon.name} due {when} did not run; running it now"
                self.ctx.bus.emit(BACKUP_MISSED, addon.name, message, due=due)
            self._attempted[addon.name] = now
            job = await self.start_backup(addon.name, source="scheduled")
            if job.task is not None:
                await job.task
            if not job.result.get("ok"):
                error = (job.result.get("error") or {}).get("message")
                log.warning("the scheduled backup of %s failed: %s", addon.name, error)
            await self.prune(addon.name, addon.kind, addon.backup_keep)
            ran.append(addon.name)
        return ran

    async def prune(self, name: str, kind: str, keep: int) -> list[str]:
        """Remove the oldest scheduled backups beyond `keep` (backups made by hand or imported stay)."""
        async with self.ctx.lock(name):
            manifests = await asyncio.to_thread(self.files.list, name)
            gone = dumps.to_prune([m for m in manifests if m.get("source") == "scheduled"], keep)
            for backup_id in gone:
                await asyncio.to_thread(self.files.remove, name, backup_id, kind)
        if gone:
            log.info("pruned %d scheduled backups of %s (keeping %d)", len(gone), name, keep)
        if self.prune_remote is not None:
            try:
                await self.prune_remote(name, keep)
            except LbsoloError as e:
                log.warning("pruning the bucket's backups of %s: %s", name, e.message)
        return gone

    async def run_forever(self, tick: float = SCHEDULE_TICK) -> None:
        """The daemon's loop: the due backups, every `tick` seconds."""
        while True:
            try:
                await self.run_due()
            except LbsoloError as e:
                log.warning("scheduled backups: %s", e.message)
            await asyncio.sleep(tick)
