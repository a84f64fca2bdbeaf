"""The daemon's side of `lbsolo backup`: stage what brings the platform back, stream it as one archive.

Runs inside the daemon because it alone may read the state while it changes, runs add-ons'
backups and talks to the engine for images and volumes. The entries are staged first under
$LBSOLO_HOME/tmp/ (the manifest, written first, carries every entry's size and sha256, so it
can only be written once they exist); then the archive is written from the staged files into
the HTTP answer in pieces by a thread, never held whole, and the staging directory removed.
Staged: a copy of the state (written atomically, so a copy is a consistent file), the admin
token file, the TLS, ACME, git and backup-keys directories (each as one tar), every app volume (read through
a throw-away container of the app's image), each running add-on's fresh verified backup
(core_addon_backups: take, then verify), and the images of every release whose image is still
present and those the add-ons run, in one `docker save`. The archive's format is platform_archive.py's; restoring is
platform_restore.py's. Encryption is the CLI's: the passphrase never reaches the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from lbsolo import __version__
from lbsolo import platform_archive as pa
from lbsolo.addon_kinds import kind_of
from lbsolo.build import LogBuffer
from lbsolo.core_addon_backups import AddonBackups
from lbsolo.core_context import CoreContext
from lbsolo.models_addons import AddonStatus
from lbsolo.state import SCHEMA

log = logging.getLogger("lbsolo.core")

KEYS = "backup-keys"  # core_addon_backup_remote's keys directory
FALLBACK_IMAGE = "busybox:latest"  # a volume of an app without a release image is read through this


class ArchiveEngine(Protocol):
    def volume_name(self, app: str, name: str) -> str: ...
    def volume_exists(self, volume: str) -> bool: ...
    def export_volume(self, volume: str, image: str, out: Path) -> int: ...
    def image_present(self, image: str) -> bool: ...
    def image_tags(self, image_id: str) -> list[str]: ...
    def save_images(self, names: list[str], out: Path) -> int: ...


Copied = Callable[[Path], None]  # told of the file a streamed backup was copied into


def _write_file(
    dest: Path,
    manifest: pa.Manifest,
    files: list[tuple[pa.Entry, Path]],
    sink: Callable[[BinaryIO], pa.Writable] = lambda f: f,
) -> Path:
    """Blocking: the archive written to dest's `.part` (0600, a free name: `-2`… if dest exists),
    fsynced, renamed; the file's path. Nothing is left of a failed one."""
    for n in range(1, 100):
        final = dest if n == 1 else dest.with_name(f"{dest.stem}-{n}{dest.suffix}")
        part = final.with_name(final.name + ".part")
        if final.exists():
            continue
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                pa.write_archive(sink(f), manifest, files)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, final)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return final
    raise FileExistsError(f"no free name for {dest}")


class PlatformBackup:
    def __init__(self, ctx: CoreContext, engine: ArchiveEngine, addon_backups: AddonBackups | None) -> None:
        self.ctx, self.engine, self.addon_backups = ctx, engine, addon_backups

    async def stream(
        self, copy: Path | None = None, on_copied: Copied | None = None
    ) -> tuple[str, AsyncIterator[bytes]]:
        """Stage everything, then the archive's bytes as they are written; its file name. With
        `copy` (a folder), the same bytes go to a file there too, handed to on_copied once whole."""
        name, manifest, files, staging = await self._prepare()
        return name, self._body(manifest, files, staging, (copy / name, on_copied) if copy else None)

    async def to_file(self, folder: Path) -> Path:
        """Stage everything, then write the archive into folder (mode 0600), renamed once whole."""
        name, manifest, files, staging = await self._prepare()
        try:
            return await asyncio.to_thread(_write_file, folder / name, manifest, files)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)

    async def _prepare(self) -> tuple[str, pa.Manifest, list[tuple[pa.Entry, Path]], Path]:
        s = self.ctx.settings
        staging = s.tmp_dir / f"platform-backup-{uuid.uuid4().hex[:8]}"
        await asyncio.to_thread(staging.mkdir, mode=0o700, parents=True, exist_ok=True)
        try:
            files = await self._stage(staging)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            raise
        manifest = pa.Manifest(lbsolo=__version__, schema=SCHEMA, instance=self.ctx.engine.instance)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(manifest.created))
        return f"lbsolo-backup-{stamp}.tar", manifest, files, staging

    async def _stage(self, staging: Path) -> list[tuple[pa.Entry, Path]]:
        s, state = self.ctx.settings, self.ctx.state
        files: list[tuple[pa.Entry, Path]] = []

        async def add(path: Path, name: str, kind: str, **meta: object) -> None:
            files.append((await asyncio.to_thread(pa.file_entry, path, name, kind, **meta), path))

        await asyncio.to_thread(shutil.copyfile, s.state_path, staging / "state.json")
        await add(staging / "state.json", "state.json", "state")
        if s.token_path.exists():
            await asyncio.to_thread(shutil.copyfile, s.token_path, staging / "token")
            await add(staging / "token", "token", "token")
        # backup-keys: the keys that open the add-ons' and the platform's sealed uploads in a bucket.
        dirs = (("tls", s.tls_dir), ("acme", s.acme_dir), ("git", s.home / "git"), (KEYS, s.home / KEYS))
        for name, folder in dirs:
            if await asyncio.to_thread(pa.tar_directory, folder, staging / f"{name}.tar"):
                await add(staging / f"{name}.tar", f"dirs/{name}.tar", "dir", dir=name)

        apps = await asyncio.to_thread(state.list_apps)
        images: dict[str, str] = {}  # image id -> the name it is saved under
        for app in apps:
            releases = await asyncio.to_thread(state.list_releases, app.name)
            current = next((r.image for r in releases if r.version == app.release), None)
            for release in releases:
                if release.image not in images and await asyncio.to_thread(self.engine.image_present, release.image):
                    tags = await asyncio.to_thread(self.engine.image_tags, release.image)
                    images[release.image] = tags[0] if tags else release.image
            for volume_name in sorted(app.volumes):
                volume = self.engine.volume_name(app.name, volume_name)
                if not await asyncio.to_thread(self.engine.volume_exists, volume):
                    continue  # added but never mounted by a release: nothing in it yet
                holder = current if current and current in images else FALLBACK_IMAGE
                out = staging / f"volume-{app.name}-{volume_name}.tar"
                await asyncio.to_thread(self.engine.export_volume, volume, holder, out)
                await add(out, f"volumes/{app.name}/{volume_name}.tar", "volume", app=app.name, volume=volume_name)

        started = time.monotonic()
        addon_images = await self._stage_addons(staging, add)
        addons_s = time.monotonic() - started
        for image in addon_images:
            if await asyncio.to_thread(self.engine.image_present, image):
                images[image] = image  # the add-on's official image: a new machine may have no registry

        if images:  # last: the biggest, and the restore loads them first
            out = staging / "images.tar"
            await asyncio.to_thread(self.engine.save_images, sorted(set(images.values())), out)
            await add(out, "images/images.tar", "images", ids=sorted(images))
        log.info(
            "platform backup staged: %d entries, %.1f MB; add-ons' backups %.1f s, images %.1f s",
            len(files),
            sum(e.size for e, _ in files) / 1e6,
            addons_s,
            time.monotonic() - started - addons_s,
        )
        return files

    async def _stage_addons(self, staging: Path, add: object) -> list[str]:
        """Each running add-on's fresh verified backup; the images the add-ons run."""
        if self.addon_backups is None:
            return []
        b, images = self.addon_backups, []
        for addon in await asyncio.to_thread(self.ctx.state.list_addons):
            if addon.status != AddonStatus.RUNNING:
                continue
            images.append(kind_of(addon.kind).image(addon.version))
            out = LogBuffer()
            async with self.ctx.lock(addon.name):
                m = await b.final(addon, out, source="platform")
            dump = b.files.dump_path(addon.name, str(m["id"]), addon.kind)
            manifest = b.files.manifest_path(addon.name, str(m["id"]))
            for path in (dump, manifest):
                copy = staging / f"addon-{addon.name}-{path.name}"
                await asyncio.to_thread(shutil.copyfile, path, copy)
                await add(copy, f"addons/{addon.name}/{path.name}", "addon", addon=addon.name,  # type: ignore[operator]
                          backup=str(m["id"]), file=path.name)  # fmt: skip
        return images

    def _body(
        self,
        manifest: pa.Manifest,
        files: list[tuple[pa.Entry, Path]],
        staging: Path,
        copy: tuple[Path, Copied | None] | None,
    ) -> AsyncIterator[bytes]:
        pieces: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)
        stop = threading.Event()
        copied: list[Path] = []

        class Pipe:
            def __init__(self, also: BinaryIO | None) -> None:
                self.also = also

            def write(self, data: bytes) -> int:
                if self.also is not None:
                    self.also.write(data)
                while not stop.is_set():
                    with contextlib.suppress(queue.Full):
                        pieces.put(bytes(data), timeout=0.5)
                        return len(data)
                raise BrokenPipeError("the backup's reader went away")

        def produce() -> None:
            outcome: BaseException | None = None
            try:
                if copy is None:
                    pa.write_archive(Pipe(None), manifest, files)
                else:
                    copied.append(_write_file(copy[0], manifest, files, lambda f: Pipe(f)))
            except BaseException as e:
                outcome = e
            with contextlib.suppress(queue.Full):
                pieces.put(outcome, timeout=5)

        async def body() -> AsyncIterator[bytes]:
            producer = asyncio.ensure_future(asyncio.to_thread(produce))
            try:
                while True:
                    item = await asyncio.to_thread(pieces.get)
                    if isinstance(item, bytes):
                        yield item
                        continue
                    if item is not None:
                        log.warning("platform backup failed: %s", item)
                        raise item
                    if copy is not None and copy[1] is not None and copied:
                        copy[1](copied[0])
                    return
            finally:
                stop.set()
                with contextlib.suppress(queue.Empty):
                    while True:
                        pieces.get_nowait()
                await asyncio.wait([producer], timeout=10)
                await asyncio.to_thread(shutil.rmtree, staging, True)

        return body()
