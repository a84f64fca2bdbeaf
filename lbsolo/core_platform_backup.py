"""The daemon's side of `lbsolo backup`: stage what brings the platform back, stream it as one archive.

Runs inside the daemon because it alone may read the state while it changes, runs add-ons'
backups and talks to the engine for images and volumes. The entries are staged first under
$LBSOLO_HOME/tmp/ (the manifest, written first, carries every entry's size and sha256, so it
can only be written once they exist); then the archive is written from the staged files into
the HTTP answer in pieces by a thread, never held whole, and the staging directory removed.
Staged: a copy of the state (written atomically, so a copy is a consistent file), the admin
token file, the TLS, ACME and git directories (each as one tar), every app volume (read through
a throw-away container of the app's image), each running add-on's fresh verified backup
(core_addon_backups: take, then verify), and the images of every release whose image is still
present and those the add-ons run, in one `docker save`. The archive's format is platform_archive.py's; restoring is
platform_restore.py's. Encryption is the CLI's: the passphrase never reaches the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from lbsolo import __version__
from lbsolo import platform_archive as pa
from lbsolo.addon_kinds import kind_of
from lbsolo.build import LogBuffer
from lbsolo.core_addon_backups import AddonBackups
from lbsolo.core_context import CoreContext
from lbsolo.models_addons import AddonStatus
from lbsolo.state import SCHEMA

log = logging.getLogger("lbsolo.core")

FALLBACK_IMAGE = "busybox:latest"  # a volume of an app without a release image is read through this


class ArchiveEngine(Protocol):
    def volume_name(self, app: str, name: str) -> str: ...
    def volume_exists(self, volume: str) -> bool: ...
    def export_volume(self, volume: str, image: str, out: Path) -> int: ...
    def image_present(self, image: str) -> bool: ...
    def image_tags(self, image_id: str) -> list[str]: ...
    def save_images(self, names: list[str], out: Path) -> int: ...


class PlatformBackup:
    def __init__(self, ctx: CoreContext, engine: ArchiveEngine, addon_backups: AddonBackups | None) -> None:
        self.ctx, self.engine, self.addon_backups = ctx, engine, addon_backups

    async def stream(self) -> tuple[str, AsyncIterator[bytes]]:
        """Stage everything, then the archive's bytes as they are written; its file name."""
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
        return f"lbsolo-backup-{stamp}.tar", self._body(manifest, files, staging)

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
        for name, folder in (("tls", s.tls_dir), ("acme", s.acme_dir), ("git", s.home / "git")):
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
        log.info("platform backup staged: %d entries, %.1f MB; add-ons' backups %.1f s, images %.1f s",
                 len(files), sum(e.size for e, _ in files) / 1e6, addons_s, time.monotonic() - started - addons_s)
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

    def _body(self, manifest: pa.Manifest, files: list[tuple[pa.Entry, Path]], staging: Path) -> AsyncIterator[bytes]:
        pieces: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)
        stop = threading.Event()

        class Pipe:
            def write(self, data: bytes) -> int:
                while not stop.is_set():
                    with contextlib.suppress(queue.Full):
                        pieces.put(bytes(data), timeout=0.5)
                        return len(data)
                raise BrokenPipeError("the backup's reader went away")

        def produce() -> None:
            outcome: BaseException | None = None
            try:
                pa.write_archive(Pipe(), manifest, files)
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
                    return
            finally:
                stop.set()
                with contextlib.suppress(queue.Empty):
                    while True:
                        pieces.get_nowait()
                await asyncio.wait([producer], timeout=10)
                await asyncio.to_thread(shutil.rmtree, staging, True)

        return body()
