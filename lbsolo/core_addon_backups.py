"""Add-on backups' use cases: back up now, list, verify, restore, export, import, schedules.

A backup is the add-on's dump (addon_dumps.dump_command) streamed from its container into a
file under $LBSOLO_HOME/backups/<add-on>/ (addon_backup_files.py), with the tables' rows (or
Redis' keys) counted just before and just after it. Every backup is then verified: restored
into a throw-away container of the same image and counted again (addon_scratch.py). A restore
or an import is checked before it touches the add-on: the dump's kind and major by its first
bytes, its wholeness by its last, a stored backup's checksum, and — for a file from outside,
or a Redis or MariaDB backup not verified yet — a whole load into a throw-away container;
Postgres restores in one transaction. Scheduled backups run from the daemon's loop
(`run_schedules`), pruned to the add-on's `backup_keep`; a run missed while the daemon was
down runs once when it is back. Blocking engine and file calls run off the event loop.

With a bucket as the add-on's target, verified backups are uploaded, listed and downloaded
through core_addon_backup_remote.py. It changes no add-on record other than its schedule, and
creates or attaches nothing (core_addons.py does); the dump commands and checks are addon_dumps.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import shutil
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbsolo import addon_dumps as dumps
from lbsolo.addon_backup_files import BackupFiles
from lbsolo.addon_kinds import Credentials, Kind, kind_of
from lbsolo.addon_scratch import DUMP_TIMEOUT, BackupFailed, DumpSink, Scratch, WriteFailed, file_sha256, last_line
from lbsolo.build import LogBuffer
from lbsolo.core_addon_access import refuse_while_upgrading
from lbsolo.core_addon_backup_remote import BackupRemote
from lbsolo.core_addon_schedules import BackupSchedules
from lbsolo.core_context import CoreContext
from lbsolo.core_rollout import DeployJob
from lbsolo.engine import Services
from lbsolo.errors import Conflict, DiskFull, EngineError, InvalidInput, LbsoloError, StorageError, TooLarge
from lbsolo.models_addons import Addon, AddonStatus

log = logging.getLogger("lbsolo.core")

DISK_MARGIN = 256 * 1024 * 1024  # an import stops when the disk has less than this left

# Event kinds (EventKind's are plain strings: these need no change there).
BACKUP_SUCCEEDED = "addon.backup.succeeded"
BACKUP_FAILED = "addon.backup.failed"
RESTORED = "addon.restored"


@dataclass
class Received:
    """An uploaded dump, whole on disk as a `.part` file, its kind and major already accepted."""

    backup_id: str
    path: Path
    size: int
    sha256: str
    found: dumps.Sniffed


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def shown(m: dict[str, Any]) -> dict[str, Any]:
    """A manifest as a listing shows it: the counts summed, not per table."""
    out = {k: v for k, v in m.items() if k not in ("counts", "counts_after")}
    counts = m.get("counts_after") or m.get("counts") or {}
    out["tables"], out["rows"] = len(counts), sum(counts.values())
    return out


class AddonBackups:
    """The backup use cases, over the core's context, the engine's Services part and the backup files."""

    def __init__(self, ctx: CoreContext, services: Services, files: BackupFiles | None = None) -> None:
        self.ctx = ctx
        self.services = services
        self.files = files or BackupFiles(ctx.settings.home / "backups")
        self.scratch = Scratch(services, ready_timeout=ctx.settings.addon_ready_timeout)
        self.remote = BackupRemote(ctx, self.files)  # the S3 target: uploads, remote listing, downloads
        self.schedules = BackupSchedules(ctx, self.files, self.backup, self.remote.prune)

    # ---- reading
    async def _addon(self, name: str, *, running: bool = False) -> Addon:
        addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
        if running:
            refuse_while_upgrading(addon, "back up or restore")
        if running and addon.status != AddonStatus.RUNNING:
            raise Conflict(f"{name} is {addon.status}, not running")
        return addon

    async def list(self, name: str) -> dict[str, Any]:
        addon = await self._addon(name)
        manifests = await asyncio.to_thread(self.files.list, name)
        due = await self.schedules.due(addon, manifests)
        merged = await self.remote.listing(name, manifests)
        return {
            "addon": name,
            "kind": addon.kind,
            "schedule": addon.backup_schedule,
            "keep": addon.backup_keep,
            "next_run": due,
            "target": merged["target"],
            "remote_error": merged.get("remote_error"),
            "backups": [shown(m) for m in merged["manifests"]],
        }

    async def info(self, name: str, backup_id: str) -> dict[str, Any]:
        await self._addon(name)
        return await asyncio.to_thread(self.files.read, name, dumps.check_backup_id(backup_id))

    async def dump_file(self, name: str, backup_id: str) -> tuple[Path, str]:
        """A stored backup's file and the name a download gives it."""
        addon = await self._addon(name)
        m = await asyncio.to_thread(self.files.read, name, dumps.check_backup_id(backup_id))
        path = self.files.dump_path(name, backup_id, m.get("kind", addon.kind))
        if not await asyncio.to_thread(path.is_file):
            raise StorageError(f"backup {backup_id} of {name} has lost its file {path.name}")
        return path, f"{name}-{path.name}"

    async def delete(self, name: str, backup_id: str) -> None:
        addon = await self._addon(name)
        async with self.ctx.lock(name):
            m = await asyncio.to_thread(self.files.read, name, dumps.check_backup_id(backup_id))
            await asyncio.to_thread(self.files.remove, name, backup_id, m.get("kind", addon.kind))
            await self.remote.delete(name, backup_id, str(m.get("kind", addon.kind)))

    # ---- jobs: each runs in the background, its output streamed like a deploy's
    def _job(self, name: str, what: str, work: Any) -> DeployJob:
        job = DeployJob(app=name, output=LogBuffer())

        async def body() -> None:
            out = job.output
            try:
                job.result = {"ok": True, "addon": name, **await work(out)}
            except LbsoloError as e:
                out.append(f" !     {e.message}")
                job.result = {"ok": False, "addon": name, "error": {"code": e.code, "message": e.message}}
            except Exception as e:
                log.exception("%s of %s crashed", what, name)
                out.append(f" !     internal error: {e}")
                job.result = {"ok": False, "addon": name, "error": {"code": "error", "message": str(e)}}
            finally:
                out.close()

        job.task = self.ctx.spawn(body(), f"addon-{what}-{name}")
        return job

    def _emit(self, kind: str, name: str, message: str, **data: Any) -> None:
        self.ctx.bus.emit(kind, name, message, **data)

    # ---- backing up
    async def backup(self, name: str, *, source: str = "backup") -> DeployJob:
        """Dump the add-on now, then verify the dump by a restore into a throw-away container."""
        await self._addon(name, running=True)

        async def work(out: LogBuffer) -> dict[str, Any]:
            try:
                m = await self._backup(name, source, out)
            except LbsoloError as e:
                self._emit(BACKUP_FAILED, name, f"backup of {name} failed: {e.message}", source=source)
                raise
            m = await self._verify(name, m, out)
            try:
                m = await self.remote.upload(name, m, out)
            except LbsoloError as e:
                self._emit(BACKUP_FAILED, name, f"backup of {name} failed: {e.message}", source=source)
                raise
            self._emit(BACKUP_SUCCEEDED, name, f"backup {m['id']} of {name} made and verified", backup=m["id"])
            return {"backup": shown(m)}

        return self._job(name, "backup", work)

    async def _backup(self, name: str, source: str, out: LogBuffer) -> dict[str, Any]:
        async with self.ctx.lock(name):
            return await self.take(await self._addon(name, running=True), source, out)

    async def take(self, addon: Addon, source: str, out: LogBuffer) -> dict[str, Any]:
        """Dump the add-on into a new stored backup (not verified yet) and return its manifest.
        The caller holds the add-on's lock (an upgrade dumps inside its own)."""
        name = addon.name
        k, creds = kind_of(addon.kind), Credentials.from_dict(addon.credentials)
        backup_id = dumps.new_backup_id(time.time(), await asyncio.to_thread(self.files.ids, name))
        out.append(f"-----> Backing up {name} ({addon.kind} {addon.version}) as {backup_id}")
        before = await self.scratch.counts(name, k, creds)
        created, started = time.time(), time.monotonic()
        path, sink = await self._dump(name, k, creds, backup_id, addon.version)
        seconds = time.monotonic() - started
        after = await self.scratch.counts(name, k, creds)
        m = dumps.manifest(
            backup_id=backup_id,
            addon=name,
            kind=k,
            version=addon.version,
            created=created,
            size=sink.size,
            sha256=sink.sha256(),
            counts=before,
            counts_after=after,
            source=source,
        )
        m.update(file=path.name, dump_seconds=round(seconds, 3))
        await asyncio.to_thread(self.files.save, name, m)
        rate = f"{_size(sink.size / seconds)}/s" if seconds > 0 else "-"
        out.append(f"       {_size(sink.size)} in {seconds:.1f}s ({rate}); {len(after)} tables/databases counted")
        return m

    async def final(self, addon: Addon, out: LogBuffer, source: str = "final") -> dict[str, Any]:
        """A backup made and verified under the caller's lock: `addons:destroy`'s last, or `lbsolo backup`'s."""
        m = await self.take(addon, source, out)
        m = await self._verify(addon.name, m, out)
        self._emit(BACKUP_SUCCEEDED, addon.name, f"{source} backup {m['id']} of {addon.name} made and verified")
        return m

    async def _dump(
        self, name: str, k: Kind, creds: Credentials, backup_id: str, version: str
    ) -> tuple[Path, DumpSink]:
        part = await asyncio.to_thread(self.files.new_part, name, backup_id, k.name)
        try:
            with await asyncio.to_thread(open, part, "wb", 1024 * 1024) as f:
                sink = DumpSink(f)
                code, err = await self.scratch.run(name, dumps.dump_command(k, creds), sink=sink, timeout=DUMP_TIMEOUT)
                if code != 0:
                    raise BackupFailed(f"the dump of {name} failed (exit {code}): {last_line(err)}")
                if sink.size == 0:
                    raise BackupFailed(f"the dump of {name} is empty")
                await asyncio.to_thread(sink.sync)
            found = dumps.sniff(bytes(sink.head))
            dumps.check_restorable(found, k, version, "the new dump")
            dumps.check_complete(k, sink.tail)
            return await asyncio.to_thread(self.files.publish, part), sink
        except WriteFailed as e:
            raise StorageError.writing("a backup", part, e.error) from e.error
        except OSError as e:
            raise EngineError(f"reading the dump of {name}: {e}") from e
        finally:
            await asyncio.to_thread(part.unlink, missing_ok=True)

    # ---- verifying
    async def verify(self, name: str, backup_id: str) -> DeployJob:
        """Restore a stored backup into a throw-away container and check it (again)."""
        await self._addon(name)
        m = await asyncio.to_thread(self.files.read, name, dumps.check_backup_id(backup_id))

        async def work(out: LogBuffer) -> dict[str, Any]:
            return {"backup": shown(await self._verify(name, m, out))}

        return self._job(name, "verify", work)

    async def _verify(self, name: str, m: dict[str, Any], out: LogBuffer) -> dict[str, Any]:
        k = kind_of(m["kind"])
        path = self.files.dump_path(name, m["id"], k.name)
        out.append(f"-----> Verifying {m['id']}: a restore into a throw-away {k.name} {m['version']}")
        started = time.monotonic()
        try:
            if not await asyncio.to_thread(path.is_file):
                raise BackupFailed(f"its file {path.name} is missing")
            restored, sha = await self.scratch.load(name, k, str(m["version"]), path, out)
            if sha != m.get("sha256"):
                raise BackupFailed("its file changed since it was made (the checksum differs): it is corrupt")
            problems = dumps.compare_counts(m.get("counts") or {}, m.get("counts_after") or {}, restored)
            if m.get("source") != "import" and problems:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                raise BackupFailed("the restored copy differs from the source: " + "; ".join(problems[:3]) + more)
        except LbsoloError as e:
            m.update(verified=False, verify_error=e.message, verified_at=time.time())
            await asyncio.to_thread(self.files.save, name, m)
            self._emit(BACKUP_FAILED, name, f"backup {m['id']} of {name} failed its verification: {e.message}")
            raise BackupFailed(f"backup {m['id']} does not verify: {e.message}") from e
        seconds = time.monotonic() - started
        m.update(verified=True, verify_error=None, verified_at=time.time(), verify_seconds=round(seconds, 3))
        await asyncio.to_thread(self.files.save, name, m)
        rows = sum(restored.values())
        out.append(f"       verified in {seconds:.1f}s: {len(restored)} tables/databases, {rows} rows/keys match")
        return m

    # ---- restoring
    async def restore(self, name: str, backup_id: str) -> DeployJob:
        """Put a stored backup's data back into the running add-on, once it passes every check; one
        whose file is only in the add-on's bucket is downloaded first (and checked before it is kept)."""
        addon = await self._addon(name, running=True)
        k = kind_of(addon.kind)
        fetch = await self.remote.needs_fetch(name, dumps.check_backup_id(backup_id))
        m = fetch or await asyncio.to_thread(self.files.read, name, backup_id)
        path = self.files.dump_path(name, backup_id, str(m.get("kind", k.name)))
        what = f"backup {backup_id}"
        dumps.check_restorable(
            dumps.Sniffed(str(m.get("kind")), str(m.get("major") or "") or None), k, addon.version, what
        )
        if fetch is None:
            await asyncio.to_thread(self._check_file, k, addon.version, path, what, m.get("sha256"))

        async def work(out: LogBuffer) -> dict[str, Any]:
            if fetch is not None:
                await self.remote.fetch(
                    name, m, out, lambda part: self._check_file(k, addon.version, part, what, m.get("sha256"))
                )
            checked = m
            if m.get("verified") is not True and k.name != "postgres":
                # A MariaDB or Redis load cannot be undone: the file proves it loads elsewhere first.
                checked = await self._verify(name, m, out)
            return await self._restore_into(name, path, out, checked)

        return self._job(name, "restore", work)

    def _check_file(self, k: Kind, version: str, path: Path, what: str, sha: str | None = None) -> None:
        """Blocking: the file is the kind and major the add-on takes, whole, and (if known) unchanged."""
        try:
            with open(path, "rb") as f:
                head = f.read(dumps.SNIFF_BYTES)
                f.seek(max(0, path.stat().st_size - 256))
                tail = f.read()
        except FileNotFoundError:
            raise InvalidInput(f"{what} has lost its file {path.name}") from None
        dumps.check_restorable(dumps.sniff(head), k, version, what)
        dumps.check_complete(k, tail)
        if sha is not None and file_sha256(path) != sha:
            raise InvalidInput(f"{what} is corrupt: its file changed since it was made (the checksum differs)")

    async def _restore_into(self, name: str, path: Path, out: LogBuffer, m: dict[str, Any]) -> dict[str, Any]:
        async with self.ctx.lock(name):
            addon = await self._addon(name, running=True)
            started = time.monotonic()
            counts = await self.load(addon, path, m["id"], out)
            seconds = time.monotonic() - started
        problems = dumps.compare_counts(m.get("counts") or {}, m.get("counts_after") or {}, counts)
        out.append(
            f"       restored in {seconds:.1f}s: {len(counts)} tables/databases, {sum(counts.values())} rows/keys"
        )
        if problems and m.get("source") != "import":
            out.append(f"       note: now {'; '.join(problems[:3])} (apps may have written since)")
        self._emit(RESTORED, name, f"{name} restored from {m['id']}", backup=m["id"])
        return {"backup": shown(m), "restore_seconds": round(seconds, 3)}

    async def load(self, addon: Addon, path: Path, what: str, out: LogBuffer) -> dict[str, int]:
        """Load a dump file into the running add-on and count what it then holds. The caller holds
        the add-on's lock and has checked the file (kind, major, wholeness)."""
        name, k, creds = addon.name, kind_of(addon.kind), Credentials.from_dict(addon.credentials)
        out.append(f"-----> Restoring {what} into {name}")
        if k.name == "redis":
            await self.scratch.replace_redis(name, k, addon.version, creds, path)
        else:
            code, err = await self.scratch.run(name, dumps.restore_command(k, creds), stdin=path, timeout=DUMP_TIMEOUT)
            if code != 0:
                kept = "; nothing changed (one transaction)" if k.name == "postgres" else ""
                raise BackupFailed(f"the restore into {name} failed (exit {code}){kept}: {last_line(err)}")
        return await self.scratch.counts(name, k, creds)

    # ---- importing a dump from outside, and exporting one
    async def receive(self, name: str, chunks: AsyncIterator[bytes], limit: int) -> Received:
        """Write an uploaded dump to a `.part` file: its first bytes are sniffed as they arrive (a
        foreign kind or a newer major is refused before the rest is read), its size capped, its
        end checked. Nothing of the add-on is touched."""
        addon = await self._addon(name, running=True)
        k = kind_of(addon.kind)
        backup_id = dumps.new_backup_id(time.time(), await asyncio.to_thread(self.files.ids, name))
        part = await asyncio.to_thread(self.files.new_part, name, backup_id, k.name)
        found: dumps.Sniffed | None = None
        next_disk_check = 0
        try:
            with open(part, "wb", 1024 * 1024) as f:
                sink = DumpSink(f)
                async for chunk in chunks:
                    if sink.size + len(chunk) > limit:
                        raise TooLarge(f"the dump is over the limit of {limit} bytes (LBSOLO_MAX_UPLOAD_BYTES)")
                    sink(chunk)  # a page-cache write, as the API's other uploads do
                    if found is None and len(sink.head) >= dumps.SNIFF_BYTES:
                        found = dumps.sniff(bytes(sink.head))
                        dumps.check_restorable(found, k, addon.version)
                    if sink.size >= next_disk_check:
                        next_disk_check = sink.size + 64 * 1024 * 1024
                        if shutil.disk_usage(part.parent).free < DISK_MARGIN:
                            raise DiskFull(f"the disk holding {part.parent} is nearly full: the import stopped")
            if found is None:
                found = dumps.sniff(bytes(sink.head))
                dumps.check_restorable(found, k, addon.version)
            dumps.check_complete(k, sink.tail)
        except WriteFailed as e:
            await asyncio.to_thread(part.unlink, missing_ok=True)
            raise StorageError.writing("an imported dump", part, e.error) from e.error
        except BaseException:
            await asyncio.to_thread(part.unlink, missing_ok=True)
            raise
        return Received(backup_id, part, sink.size, sink.sha256(), found)

    async def import_dump(self, name: str, received: Received) -> DeployJob:
        """Load a received dump into a throw-away container first (a dump that does not load is
        refused, the add-on untouched), then into the add-on; it is kept as a backup."""
        try:
            addon = await self._addon(name, running=True)
        except LbsoloError:
            await asyncio.to_thread(received.path.unlink, missing_ok=True)
            raise
        k = kind_of(addon.kind)

        async def work(out: LogBuffer) -> dict[str, Any]:
            part = received.path
            out.append(f"-----> Received {_size(received.size)}: a {received.found.kind} {received.found.major} dump")
            out.append(f"-----> Checking that it loads: a throw-away {k.name} {addon.version}")
            try:
                restored, _sha = await self.scratch.load(name, k, addon.version, part, out)
            except LbsoloError as e:
                raise BackupFailed(f"the dump does not load, so {name} was not touched: {e.message}") from e
            path = await asyncio.to_thread(self.files.publish, part)
            m = dumps.manifest(
                backup_id=received.backup_id,
                addon=name,
                kind=k,
                version=addon.version,
                created=time.time(),
                size=received.size,
                sha256=received.sha256,
                counts=restored,
                counts_after=restored,
                source="import",
            )
            m.update(file=path.name, source_major=received.found.major, verified=True, verified_at=time.time())
            await asyncio.to_thread(self.files.save, name, m)
            return await self._restore_into(name, path, out, m)

        async def guarded(out: LogBuffer) -> dict[str, Any]:
            try:
                return await work(out)
            finally:
                await asyncio.to_thread(received.path.unlink, missing_ok=True)  # published: gone already

        return self._job(name, "import", guarded)

    async def export(self, name: str) -> tuple[str, AsyncIterator[bytes]]:
        """A fresh dump of the add-on, streamed as it is made (nothing kept); its file name.

        The dump's exit status is known only at its end: a failed one ends the stream with an
        error, and the HTTP answer is cut short instead of ending cleanly."""
        addon = await self._addon(name, running=True)
        k, creds = kind_of(addon.kind), Credentials.from_dict(addon.credentials)
        filename = f"{name}-{dumps.new_backup_id(time.time(), ())}.{dumps.dump_extension(k.name)}"
        pieces: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)
        stop = threading.Event()

        def sink(piece: bytes) -> None:
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    pieces.put(piece, timeout=0.5)
                    return
            raise WriteFailed(BrokenPipeError("the export's reader went away"))

        async def produce() -> None:
            outcome: BaseException | None = None
            try:
                code, err = await self.scratch.run(name, dumps.dump_command(k, creds), sink=sink, timeout=DUMP_TIMEOUT)
                if code != 0:
                    outcome = BackupFailed(f"the dump of {name} failed (exit {code}): {last_line(err)}")
            except BaseException as e:
                outcome = e
            with contextlib.suppress(queue.Full):
                await asyncio.to_thread(pieces.put, outcome, True, 5)

        async def body() -> AsyncIterator[bytes]:
            producer = asyncio.ensure_future(produce())
            try:
                while True:
                    item = await asyncio.to_thread(pieces.get)
                    if isinstance(item, bytes):
                        yield item
                        continue
                    if item is not None:
                        log.warning("export of %s failed: %s", name, getattr(item, "message", item))
                        raise item
                    return
            finally:
                stop.set()
                with contextlib.suppress(queue.Empty):
                    while True:
                        pieces.get_nowait()
                await asyncio.wait([producer], timeout=10)

        return filename, body()

    async def resume(self) -> None:
        """On start: the throw-away containers and half-written files a killed daemon left go."""
        try:
            removed = await asyncio.to_thread(self.services.remove_scratch_services)
        except LbsoloError as e:
            log.warning("could not remove leftover throw-away containers: %s", e.message)
            removed = 0
        parts = await asyncio.to_thread(self.files.clean_parts)
        if removed or parts:
            log.info("removed %d throw-away containers and %d half-written backups", removed, parts)
