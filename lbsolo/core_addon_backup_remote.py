"""Add-on backups kept in an S3-compatible bucket too: the target's use cases, composed into
core_addon_backups.AddonBackups.

`addons:backups:target` sets (or clears) an add-on's target: it is checked at once (a small
object written and deleted) and saved on the add-on record only if that worked, with a key
generated (`--encrypt`) or given (`--key-file`) kept under $LBSOLO_HOME/backup-keys/<key id>.key
(0600; keys are never replaced, so older backups still open). With a target, each verified
backup is uploaded — its dump (sealed by addon_backup_crypt when the target encrypts) and its
manifest, which records where it went and how the upload went — to `<prefix>/<add-on>/`. A
listing merges the bucket's backups with the local ones; a restore of a backup whose file is
not here downloads it to a `.part` file, opens and checks it before it is published; pruning a
schedule's backups prunes the bucket's beyond `keep` too.

The bucket is addon_backup_remote.py's (the only importer of the S3 library); this module never
dumps, loads or restores (core_addon_backups.py does) and changes no record but the target.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lbsolo import addon_backup_crypt as crypt
from lbsolo import addon_dumps as dumps
from lbsolo.addon_backup_files import BackupFiles, write_private
from lbsolo.addon_backup_remote import PART_SIZE, RemoteError, RemoteStore, Target
from lbsolo.build import LogBuffer
from lbsolo.core_context import CoreContext
from lbsolo.errors import InvalidInput, LbsoloError, NotFound, StorageError
from lbsolo.models_addons import Addon

log = logging.getLogger("lbsolo.core")

TARGET_SET = "addon.backup.target"  # an event kind (EventKind's are plain strings)


async def checked_target(
    url: str,
    endpoint: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    encrypt: bool,
    key_hex: str | None,
    part_size: int = PART_SIZE,
) -> tuple[Target, bytes | None]:
    """A target parsed and checked (a small object written and deleted), with its key: generated
    (`encrypt`), given (`key_hex`) or none. Nothing is saved: the caller records it."""
    if encrypt and key_hex:
        raise InvalidInput("--encrypt generates a key and --key-file brings one: not both")
    target = Target.parse(url, endpoint or "", region, access_key_id, secret_access_key)
    key = crypt.parse_key(key_hex.encode()) if key_hex else crypt.generate_key() if encrypt else None
    await asyncio.to_thread(RemoteStore(target, part_size=part_size).check)
    return target, key


def target_record(target: Target, key: bytes | None) -> dict[str, Any]:
    """A target as a record keeps it: the address, the credentials, and the key's id if it seals."""
    return {**target.to_dict(), "encrypt": key is not None, "key_id": crypt.key_id(key) if key else None}


def target_shown(target: Target, key: bytes | None, key_file: Path | None, *, generated: bool) -> dict[str, Any]:
    """What setting a target answers: the target masked, the key's id and file, a generated key once."""
    out: dict[str, Any] = {"target": target.public(), "encrypt": key is not None}
    if key:
        out.update(key_id=crypt.key_id(key), key_file=str(key_file))
        if generated:
            out["key"] = key.hex()
    return out


def save_key(keys_dir: Path, key: bytes) -> Path:
    """Blocking: the key under keys_dir/<key id>.key (0600), kept if already there (never replaced,
    so older backups still open)."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = keys_dir / f"{crypt.key_id(key)}.key"
    if not path.exists():
        write_private(path, key.hex().encode() + b"\n")
    return path


def load_key(keys_dir: Path, kid: str, bring: str) -> bytes:
    """Blocking: the key of id kid, or an error saying how to bring it (the command `bring`)."""
    path = keys_dir / f"{kid}.key"
    try:
        key = crypt.parse_key(path.read_bytes())
    except FileNotFoundError:
        raise InvalidInput(
            f"this backup was encrypted with key {kid}, which this server does not have: bring it with {bring}"
        ) from None
    except OSError as e:
        raise StorageError(f"cannot read the backup key {path}: {e.strerror}") from e
    if crypt.key_id(key) != kid:
        raise InvalidInput(f"the backup key file {path} holds another key than {kid}")
    return key


class BackupRemote:
    """The add-ons' backup targets, over the core's context and the local backup files."""

    def __init__(self, ctx: CoreContext, files: BackupFiles, *, part_size: int = PART_SIZE) -> None:
        self.ctx = ctx
        self.files = files
        self.part_size = part_size
        self.keys_dir = ctx.settings.home / "backup-keys"

    # ---- the target
    async def set_target(
        self,
        name: str,
        url: str | None,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        encrypt: bool = False,
        key_hex: str | None = None,
    ) -> dict[str, Any]:
        """Back the add-on up to s3://bucket/prefix at endpoint too (url None: local only again).
        The target is checked before it is saved; a key generated by `encrypt` is returned once."""
        if url is None:
            async with self.ctx.lock(name):
                addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
                addon.backup_target = {}
                await asyncio.to_thread(self.ctx.state.save_addon, addon)
            self.ctx.bus.emit(TARGET_SET, name, f"backups of {name} are kept here only")
            return {"addon": name, "target": None}
        await asyncio.to_thread(self.ctx.state.get_addon, name)  # a missing add-on: NotFound before any I/O
        target, key = await checked_target(url, endpoint, region, access_key_id, secret_access_key, encrypt, key_hex,
                                           self.part_size)  # fmt: skip
        async with self.ctx.lock(name):
            addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
            key_file = await asyncio.to_thread(save_key, self.keys_dir, key) if key else None
            addon.backup_target = target_record(target, key)
            await asyncio.to_thread(self.ctx.state.save_addon, addon)
        how = " (encrypted)" if key else ""
        self.ctx.bus.emit(TARGET_SET, name, f"backups of {name} go to {target.url} too{how}", url=target.url)
        return {"addon": name, **target_shown(target, key, key_file, generated=encrypt)}

    def _store(self, target: Target) -> RemoteStore:
        return RemoteStore(target, part_size=self.part_size)

    def _load_key(self, kid: str) -> bytes:
        return load_key(self.keys_dir, kid, "lbsolo addons:backups:target NAME s3://… --key-file PATH")

    @staticmethod
    def target_of(addon: Addon) -> Target | None:
        return Target.from_dict(addon.backup_target) if addon.backup_target.get("bucket") else None

    # ---- after a backup
    async def upload(self, name: str, m: dict[str, Any], out: LogBuffer) -> dict[str, Any]:
        """Upload a verified backup (its dump, then its manifest) when the add-on has a target;
        the manifest records where it went, or why the upload failed (RemoteError, the local copy kept)."""
        addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
        target = self.target_of(addon)
        if target is None:
            return m
        sealed = bool(addon.backup_target.get("encrypt"))
        kid = addon.backup_target.get("key_id") if sealed else None
        path = self.files.dump_path(name, m["id"], m["kind"])
        obj = target.key(name, path.name)
        out.append(f"-----> Uploading {m['id']} to {target.url}/{name}/" + (" (encrypted)" if sealed else ""))
        started = time.monotonic()
        try:
            key = await asyncio.to_thread(self._load_key, str(kid)) if sealed else None
            sent = await asyncio.to_thread(self._store(target).upload, path, obj, seal_with=key)
            m["remote"] = {
                "ok": True, "url": f"s3://{target.bucket}/{obj}", "endpoint": target.endpoint, "object": obj,
                "encrypted": sealed, "key_id": kid, "size": sent["size"], "etag": sent["etag"],
                "seconds": round(time.monotonic() - started, 3), "uploaded_at": time.time(),
            }  # fmt: skip
            manifest = json.dumps(m, indent=1, sort_keys=True).encode()
            await asyncio.to_thread(self._store(target).put_bytes, target.key(name, f"{m['id']}.json"), manifest)
        except LbsoloError as e:
            m["remote"] = {"ok": False, "url": target.url, "error": e.message, "at": time.time()}
            await asyncio.to_thread(self.files.save, name, m)
            raise RemoteError(
                f"backup {m['id']} was made and verified but not uploaded (kept here): {e.message}"
            ) from e
        await asyncio.to_thread(self.files.save, name, m)
        out.append(f"       uploaded {m['remote']['size']} bytes in {m['remote']['seconds']:.1f}s")
        return m

    # ---- listing
    async def listing(self, name: str, local: list[dict[str, Any]]) -> dict[str, Any]:
        """The local manifests and the bucket's, merged newest first, each with its `location`
        (local, remote, or both); with the target (masked), and the bucket's error if it failed."""
        addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
        target = self.target_of(addon)
        here = {str(m["id"]): {**m, "location": "local"} for m in local}
        await asyncio.to_thread(self._mark_lost, name, here.values())
        info: dict[str, Any] = {"target": None}
        if target is not None:
            info["target"] = {**target.public(), "encrypt": bool(addon.backup_target.get("encrypt"))}
            try:
                remote = await self._remote_manifests(target, name, skip=set())
            except LbsoloError as e:
                info["remote_error"] = e.message
                remote = {}
            for backup_id, rm in remote.items():
                if backup_id in here:
                    lost = here[backup_id]["location"] == "lost"
                    here[backup_id]["location"] = "remote" if lost else "local+remote"
                else:
                    here[backup_id] = {**rm, "location": "remote"}
        manifests = sorted(here.values(), key=lambda m: str(m["id"]), reverse=True)
        return {"manifests": manifests, **info}

    def _mark_lost(self, name: str, manifests: Any) -> None:
        """Blocking: a manifest whose file is gone (and not in the bucket) is `lost`."""
        for m in manifests:
            if not self.files.dump_path(name, m["id"], m["kind"]).is_file():
                m["location"] = "lost"

    async def _remote_manifests(self, target: Target, name: str, skip: set[str]) -> dict[str, dict[str, Any]]:
        """The bucket's manifests of the add-on by id (those in skip not read: an empty dict in their place)."""
        store = self._store(target)
        objects = await asyncio.to_thread(store.list, target.key(name))
        keys = {o.key.rsplit("/", 1)[-1] for o in objects}
        out: dict[str, dict[str, Any]] = {}
        for file in sorted(keys):
            stem, _, ext = file.rpartition(".")
            if ext != "json":
                continue
            try:
                backup_id = dumps.check_backup_id(stem)
            except InvalidInput:
                continue
            if backup_id in skip:
                out[backup_id] = {}
                continue
            try:
                m = json.loads(await asyncio.to_thread(store.read_bytes, target.key(name, file)))
            except (ValueError, NotFound) as e:
                log.warning("skipping the unreadable manifest %s of %s in %s: %s", file, name, target.url, e)
                continue
            if isinstance(m, dict) and m.get("id") == backup_id and m.get("kind"):
                out[backup_id] = m
        return out

    # ---- restoring a backup whose file is not here
    async def needs_fetch(self, name: str, backup_id: str) -> dict[str, Any] | None:
        """The manifest of a backup to download before a restore (its file is not here); None: it is here."""
        try:
            m = await asyncio.to_thread(self.files.read, name, backup_id)
        except NotFound:
            m = None
        if m is not None and await asyncio.to_thread(self.files.dump_path(name, backup_id, m["kind"]).is_file):
            return None
        addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
        target = self.target_of(addon)
        if target is None:
            if m is None:
                raise NotFound(f"{name} has no backup {backup_id} (see: lbsolo addons:backups {name})")
            return None  # the restore's own check says the file is lost
        try:
            data = await asyncio.to_thread(self._store(target).read_bytes, target.key(name, f"{backup_id}.json"))
        except NotFound:
            raise NotFound(
                f"{name} has no backup {backup_id}, here or in {target.url} (see: lbsolo addons:backups {name})"
            ) from None
        try:
            remote = json.loads(data)
        except ValueError:
            raise RemoteError(f"the manifest of {backup_id} in {target.url} is not JSON") from None
        if not isinstance(remote, dict) or remote.get("id") != backup_id:
            raise RemoteError(f"the manifest of {backup_id} in {target.url} is not this backup's")
        sealed = (remote.get("remote") or {}).get("encrypted")
        if sealed:
            await asyncio.to_thread(self._load_key, str(remote["remote"].get("key_id")))  # refused before any download
        return remote

    async def fetch(self, name: str, m: dict[str, Any], out: LogBuffer, check: Callable[[Path], None]) -> Path:
        """Download a backup's dump to a `.part` file (opened, if sealed), check it with check
        (blocking), then publish it and its manifest here; nothing is left of a failed one."""
        addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
        target = self.target_of(addon)
        if target is None:
            raise InvalidInput(f"{name} has no backup target: set it again to restore from the bucket")
        where = m.get("remote") or {}
        obj = where.get("object") or target.key(name, self.files.dump_path(name, m["id"], m["kind"]).name)
        key = await asyncio.to_thread(self._load_key, str(where["key_id"])) if where.get("encrypted") else None
        out.append(f"-----> Downloading {m['id']} from s3://{target.bucket}/{obj}" + (" (encrypted)" if key else ""))
        part = await asyncio.to_thread(self.files.new_part, name, m["id"], m["kind"])
        started = time.monotonic()
        try:
            size = await asyncio.to_thread(self._store(target).download, obj, part, open_with=key)
            await asyncio.to_thread(check, part)
            path = await asyncio.to_thread(self.files.publish, part)
        finally:
            await asyncio.to_thread(part.unlink, missing_ok=True)
        await asyncio.to_thread(os.chmod, path, 0o600)
        await asyncio.to_thread(self.files.save, name, m)
        out.append(f"       {size} bytes in {time.monotonic() - started:.1f}s, checked")
        return path

    # ---- pruning and removing
    async def prune(self, name: str, keep: int) -> list[str]:
        """Remove the bucket's oldest scheduled backups beyond keep (by hand or imported ones stay)."""
        addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
        target = self.target_of(addon)
        if target is None:
            return []
        manifests = await self._remote_manifests(target, name, skip=set())
        gone = dumps.to_prune([m for m in manifests.values() if m.get("source") == "scheduled"], keep)
        for backup_id in gone:
            await self._delete(target, name, manifests[backup_id])
        if gone:
            log.info("pruned %d scheduled backups of %s in %s (keeping %d)", len(gone), name, target.url, keep)
        return gone

    async def delete(self, name: str, backup_id: str, kind: str) -> None:
        """Remove a backup's copy in the bucket, if the add-on has a target and the backup is there."""
        addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
        target = self.target_of(addon)
        if target is not None:
            await self._delete(target, name, {"id": backup_id, "kind": kind})

    async def _delete(self, target: Target, name: str, m: dict[str, Any]) -> None:
        store = self._store(target)
        dump = (m.get("remote") or {}).get("object") or target.key(name, f"{m['id']}.{dumps.dump_extension(m['kind'])}")
        for obj in (dump, target.key(name, f"{m['id']}.json")):  # the dump first, as addon_backup_files does
            await asyncio.to_thread(store.delete, obj)
