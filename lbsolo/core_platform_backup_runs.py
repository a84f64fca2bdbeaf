"""The platform backups the daemon keeps: on a cron schedule, in $LBSOLO_HOME/backups/platform/,
and in an S3-compatible bucket when a target is set.

`lbsolo backup --schedule "0 4 * * *" --keep 7` stores the schedule, keep and target in the
state's settings (document `platform_backup`: it survives restarts and is in the platform's own
backups). A scheduled run writes an archive (core_platform_backup.PlatformBackup.to_file) into
the folder, mode 0600, with a small JSON record beside it (source, size, where it was uploaded);
the newest `keep` scheduled ones stay, here and in the bucket (those made by hand are never
pruned). When a run is due, and whether it was missed while the daemon was down, are the add-on
schedules' own decisions (addon_dumps.schedule_due, schedule_missed): a missed run runs once on
start and raises an event saying so; a failed run raises `platform.backup.failed`.

With a target (the add-on targets' checks, keys and store: core_addon_backup_remote,
addon_backup_remote), each scheduled backup and each one streamed to `lbsolo backup` is uploaded
to `<prefix>/platform/<file>` — sealed, when the target encrypts, as an encrypted platform backup
with a key file (platform_archive's header, then addon_backup_crypt's chunks), so that the object
downloaded is a file `lbsolo restore --key-file` opens — with its record beside it. A streamed
backup's copy here is removed once uploaded: its owner has the file.

It never restores (platform_restore.py does, in the CLI) and changes no state but its setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from lbsolo import addon_dumps as dumps
from lbsolo import platform_archive as pa
from lbsolo.addon_backup_files import PLATFORM_FOLDER as FOLDER
from lbsolo.addon_backup_files import write_private
from lbsolo.addon_backup_remote import RemoteStore, Target
from lbsolo.core_addon_backup_remote import checked_target, load_key, save_key, target_record, target_shown
from lbsolo.core_context import CoreContext
from lbsolo.core_platform_backup import PlatformBackup
from lbsolo.errors import LbsoloError, NotFound

log = logging.getLogger("lbsolo.core")

SETTING = "platform_backup"  # the state's settings document
DEFAULT_KEEP = 7
SCHEDULE_TICK = 30.0
# Event kinds (EventKind's are plain strings).
BACKUP_SUCCEEDED = "platform.backup.succeeded"
BACKUP_FAILED = "platform.backup.failed"
BACKUP_MISSED = "platform.backup.missed"
TARGET_SET = "platform.backup.target"


def record_path(archive: Path) -> Path:
    return archive.with_suffix(".json")


class PlatformBackups:
    """The kept platform backups, over the core's context and the backup that makes an archive."""

    def __init__(self, ctx: CoreContext, backup: PlatformBackup) -> None:
        self.ctx = ctx
        self.backup = backup
        self.folder = ctx.settings.home / "backups" / FOLDER
        self.keys_dir = ctx.settings.home / "backup-keys"
        self._attempted: float | None = None  # when the last scheduled run was tried
        self._failure: dict[str, Any] | None = None  # the last failed run or upload: when and why
        self._running = asyncio.Lock()

    # ---- the setting
    async def setting(self) -> dict[str, Any]:
        doc = await asyncio.to_thread(self.ctx.state.get_setting, SETTING)
        return {"schedule": doc.get("schedule"), "keep": int(doc.get("keep") or DEFAULT_KEEP),
                "since": doc.get("since"), "target": dict(doc.get("target") or {})}  # fmt: skip

    async def _save(self, doc: dict[str, Any]) -> None:
        await asyncio.to_thread(self.ctx.state.save_setting, SETTING, doc)

    async def set_schedule(self, schedule: str | None, keep: int | None = None) -> dict[str, Any]:
        """Back the platform up on a cron schedule (None, "" or "off": no more), keeping the newest
        `keep` scheduled backups; the schedule with its next run."""
        text = None if schedule in (None, "", "off", "none") else dumps.check_schedule(str(schedule))
        if keep is not None:
            dumps.check_keep(keep)
        async with self.ctx.lock(f"platform:{SETTING}"):
            doc = await self.setting()
            doc.update(schedule=text, since=time.time())
            if keep is not None:
                doc["keep"] = keep
            await self._save(doc)
        self._attempted = None
        return {"schedule": text, "keep": doc["keep"], "next_run": await self.due(doc)}

    async def set_target(
        self,
        url: str | None,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        encrypt: bool = False,
        key_hex: str | None = None,
    ) -> dict[str, Any]:
        """Keep platform backups in s3://bucket/prefix at endpoint too (url None: here only), checked first."""
        if url is None:
            async with self.ctx.lock(f"platform:{SETTING}"):
                doc = await self.setting()
                doc["target"] = {}
                await self._save(doc)
            self.ctx.bus.emit(TARGET_SET, None, "platform backups are kept here only")
            return {"target": None, "encrypt": False}
        target, key = await checked_target(url, endpoint, region, access_key_id, secret_access_key, encrypt, key_hex)
        async with self.ctx.lock(f"platform:{SETTING}"):
            doc = await self.setting()
            key_file = await asyncio.to_thread(save_key, self.keys_dir, key) if key else None
            doc["target"] = target_record(target, key)
            await self._save(doc)
        how = " (encrypted)" if key else ""
        self.ctx.bus.emit(TARGET_SET, None, f"platform backups go to {target.url} too{how}", url=target.url)
        return target_shown(target, key, key_file, generated=encrypt)

    # ---- when
    async def due(self, doc: dict[str, Any] | None = None) -> float | None:
        """When the next scheduled backup is due (in the past: missed, due now); None: no schedule."""
        doc = doc or await self.setting()
        if not doc["schedule"]:
            return None
        records = await asyncio.to_thread(self._records)
        last = max((float(r.get("created") or 0) for r in records if r.get("source") == "scheduled"), default=None)
        since = float(doc.get("since") or time.time())
        return dumps.schedule_due(doc["schedule"], since, last, self._attempted)

    # ---- the folder
    def _records(self) -> list[dict[str, Any]]:
        """Blocking: the records of the backups here, newest first (one whose archive is gone: skipped)."""
        if not self.folder.is_dir():
            return []
        out = []
        for path in self.folder.glob("lbsolo-backup-*.json"):
            with contextlib.suppress(OSError, ValueError):
                r = json.loads(path.read_bytes())
                if isinstance(r, dict) and (self.folder / str(r.get("file"))).is_file():
                    out.append(r)
        return sorted(out, key=lambda r: (float(r.get("created") or 0), str(r.get("id"))), reverse=True)

    def _save_record(self, r: dict[str, Any]) -> None:
        write_private(self.folder / f"{r['id']}.json", json.dumps(r, indent=1, sort_keys=True).encode())

    def _remove(self, backup_id: str) -> None:
        """The archive first, then its record."""
        (self.folder / f"{backup_id}.tar").unlink(missing_ok=True)
        (self.folder / f"{backup_id}.json").unlink(missing_ok=True)

    def _clean_parts(self) -> None:
        """What a killed daemon left: half-written archives, and streamed copies not uploaded yet."""
        if self.folder.is_dir():
            for path in self.folder.glob("*.part"):
                path.unlink(missing_ok=True)
            for path in self.folder.glob("lbsolo-backup-*.tar"):
                if not record_path(path).exists():
                    path.unlink(missing_ok=True)

    # ---- taking one
    async def take(self, source: str = "scheduled") -> dict[str, Any]:
        """A backup into the folder now, uploaded when a target is set; its record. A failure raises
        an event and the error; an upload that fails keeps the archive here (its record says why)."""
        async with self._running:
            started = time.monotonic()
            try:
                await asyncio.to_thread(self.folder.mkdir, mode=0o700, parents=True, exist_ok=True)
                path = await self.backup.to_file(self.folder)
            except LbsoloError as e:
                self._failed(f"the {source} platform backup failed: {e.message}")
                raise
            except OSError as e:
                self._failed(f"the {source} platform backup failed: {e}")
                raise LbsoloError(f"the platform backup failed: {e}") from e
            r = {"id": path.stem, "file": path.name, "created": time.time(), "source": source,
                 "size": path.stat().st_size, "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
            await asyncio.to_thread(self._save_record, r)
            self.ctx.bus.emit(BACKUP_SUCCEEDED, None, f"{source} platform backup {path.name} made", backup=r["id"])
            log.info("%s platform backup %s: %.1f MB in %.1f s", source, path.name, r["size"] / 1e6, r["seconds"])
            r = await self.upload(path, r)
            return r

    def copied(self, path: Path) -> None:
        """A backup streamed to `lbsolo backup` was copied here whole: upload it, then remove the copy."""

        async def upload() -> None:
            r = {"id": path.stem, "file": path.name, "created": time.time(), "source": "manual",
                 "size": path.stat().st_size}  # fmt: skip
            try:
                await self.upload(path, r)
            finally:
                await asyncio.to_thread(self._remove, path.stem)

        self.ctx.spawn(upload(), f"platform-backup-upload-{path.stem}")

    def _failed(self, message: str) -> None:
        self._failure = {"at": time.time(), "error": message}
        log.warning("%s", message)
        self.ctx.bus.emit(BACKUP_FAILED, None, message)

    async def copy_folder(self) -> Path | None:
        """Where a backup streamed to `lbsolo backup` is copied for its upload; None: no target, no copy."""
        if await self._target() is None:
            return None
        await asyncio.to_thread(self.folder.mkdir, mode=0o700, parents=True, exist_ok=True)
        return self.folder

    # ---- the bucket
    async def _target(self) -> tuple[Target, dict[str, Any]] | None:
        t = (await self.setting())["target"]
        return (Target.from_dict(t), t) if t.get("bucket") else None

    async def upload(self, path: Path, r: dict[str, Any]) -> dict[str, Any]:
        """Upload an archive and its record when a target is set; the record, saying where it went or why not."""
        found = await self._target()
        if found is None:
            return r
        target, t = found
        store = RemoteStore(target)
        obj = target.key(FOLDER, path.name)
        started = time.monotonic()
        try:
            key = None
            if t.get("encrypt"):
                key = await asyncio.to_thread(load_key, self.keys_dir, str(t.get("key_id")), "lbsolo backup:target")
            head = pa.sealed_header(pa.KDF_KEY_FILE) if key else b""
            sent = await asyncio.to_thread(store.upload, path, obj, seal_with=key, head=head)
            r["remote"] = {"ok": True, "url": f"s3://{target.bucket}/{obj}", "object": obj, "size": sent["size"],
                           "encrypted": key is not None, "key_id": t.get("key_id") if key else None,
                           "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
            record = json.dumps(r, indent=1, sort_keys=True).encode()
            await asyncio.to_thread(store.put_bytes, target.key(FOLDER, f"{path.stem}.json"), record)
        except LbsoloError as e:
            r["remote"] = {"ok": False, "url": target.url, "error": e.message}
            self._failed(f"platform backup {path.name} was made but not uploaded to {target.url}: {e.message}")
        if (self.folder / path.name).is_file() and r.get("source") != "manual":
            await asyncio.to_thread(self._save_record, r)
        return r

    async def _remote_records(self, target: Target) -> dict[str, dict[str, Any]]:
        store = RemoteStore(target)
        objects = await asyncio.to_thread(store.list, target.key(FOLDER))
        names = {o.key.rsplit("/", 1)[-1] for o in objects}
        out = {}
        for name in sorted(names):
            if not (name.startswith("lbsolo-backup-") and name.endswith(".json")):
                continue
            try:
                r = json.loads(await asyncio.to_thread(store.read_bytes, target.key(FOLDER, name)))
            except (ValueError, NotFound) as e:
                log.warning("skipping the unreadable record %s in %s: %s", name, target.url, e)
                continue
            if isinstance(r, dict) and r.get("file") in names and f"{r.get('id')}.json" == name:
                out[str(r["id"])] = r
        return out

    # ---- running the schedule
    async def run_due(self) -> bool:
        """The scheduled backup if it is due (once, however many runs were missed), then the
        pruning to `keep`; whether one ran."""
        doc = await self.setting()
        due, now = await self.due(doc), time.time()
        if due is None or due > now:
            return False
        if dumps.schedule_missed(doc["schedule"], due, now):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(due))
            message = f"the scheduled platform backup due {when} did not run; running it now"
            self.ctx.bus.emit(BACKUP_MISSED, None, message, due=due)
        self._attempted = now
        with contextlib.suppress(LbsoloError):  # said by an event already
            await self.take("scheduled")
        await self.prune(doc["keep"])
        return True

    async def prune(self, keep: int) -> list[str]:
        """Remove the oldest scheduled backups beyond keep, here and in the bucket (those by hand stay)."""
        records = await asyncio.to_thread(self._records)
        gone = dumps.to_prune([r for r in records if r.get("source") == "scheduled"], keep)
        for backup_id in gone:
            await asyncio.to_thread(self._remove, backup_id)
        found = await self._target()
        if found is not None:
            target, _ = found
            try:
                remote = await self._remote_records(target)
                far = dumps.to_prune([r for r in remote.values() if r.get("source") == "scheduled"], keep)
                store = RemoteStore(target)
                for backup_id in far:
                    for name in (remote[backup_id]["file"], f"{backup_id}.json"):
                        await asyncio.to_thread(store.delete, target.key(FOLDER, name))
                gone += [b for b in far if b not in gone]
            except LbsoloError as e:
                log.warning("pruning the platform backups in %s: %s", target.url, e.message)
        if gone:
            log.info("pruned %d scheduled platform backups (keeping %d)", len(gone), keep)
        return gone

    async def run_forever(self, tick: float = SCHEDULE_TICK) -> None:
        await asyncio.to_thread(self._clean_parts)
        while True:
            try:
                await self.run_due()
            except LbsoloError as e:
                log.warning("scheduled platform backups: %s", e.message)
            await asyncio.sleep(tick)

    # ---- reading
    async def status(self) -> dict[str, Any]:
        """The schedule, keep, next run, target (masked), the last failure, and the backups here
        and in the bucket, newest first, each with its `location`."""
        doc = await self.setting()
        here = {str(r["id"]): {**r, "location": "local"} for r in await asyncio.to_thread(self._records)}
        out: dict[str, Any] = {"schedule": doc["schedule"], "keep": doc["keep"], "next_run": await self.due(doc),
                               "folder": str(self.folder), "target": None, "last_failure": self._failure}  # fmt: skip
        found = await self._target()
        if found is not None:
            target, t = found
            out["target"] = {**target.public(), "encrypt": bool(t.get("encrypt")), "key_id": t.get("key_id")}
            try:
                for backup_id, r in (await self._remote_records(target)).items():
                    if backup_id in here:
                        here[backup_id]["location"] = "local+remote"
                    else:
                        here[backup_id] = {**r, "location": "remote"}
            except LbsoloError as e:
                out["remote_error"] = e.message
        out["backups"] = sorted(here.values(), key=lambda r: (float(r.get("created") or 0), r["id"]), reverse=True)
        return out
