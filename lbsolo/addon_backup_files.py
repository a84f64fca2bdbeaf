"""Where add-on backups are kept: files under $LBSOLO_HOME/backups/<add-on>/, and their manifests.

Each backup is a dump file `<id>.<dump|rdb|sql>` with a JSON manifest `<id>.json` beside it
(what addon_dumps.manifest makes), both mode 0600 in directories of mode 0700. A dump is
written as `<id>.<ext>.part` and renamed only once whole, so a listing never shows a half
file; `.part` files a killed daemon left are removed on the next start. Manifests are replaced
atomically. Blocking file I/O: callers in the event loop go through asyncio.to_thread. It
decides nothing about backups (core_addon_backups.py does) and runs no engine call.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from lbsolo.addon_dumps import check_backup_id, dump_extension
from lbsolo.errors import NotFound, StorageError

PLATFORM_FOLDER = "platform"  # backups/platform/ holds the platform's own backups: no add-on takes the name
SCHEDULE_FILE = "schedule.json"  # when the current schedule was set: a first run missed while down still runs


def write_private(path: Path, data: bytes) -> None:
    """Write path whole or not at all (a temp file renamed over it), mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError.writing("a backup's manifest", path, e) from e


class BackupFiles:
    """The backups directory of one lbsolo home."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, addon: str) -> Path:
        """The add-on's directory, made (0700) on first use."""
        path = self.root / addon
        if not path.is_dir():
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.mkdir(mode=0o700, exist_ok=True)
        return path

    def dump_path(self, addon: str, backup_id: str, kind: str) -> Path:
        return self.root / addon / f"{check_backup_id(backup_id)}.{dump_extension(kind)}"

    def manifest_path(self, addon: str, backup_id: str) -> Path:
        return self.root / addon / f"{check_backup_id(backup_id)}.json"

    def new_part(self, addon: str, backup_id: str, kind: str) -> Path:
        """A fresh, empty `.part` file (0600) for a dump being written; the caller opens it."""
        path = self.dir(addon) / f"{check_backup_id(backup_id)}.{dump_extension(kind)}.part"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as e:
            raise StorageError.writing("a backup", path, e) from e
        return path

    def publish(self, part: Path) -> Path:
        """The whole dump takes its final name (`.part` dropped)."""
        final = part.with_suffix("")
        os.replace(part, final)
        return final

    def ids(self, addon: str) -> list[str]:
        """The add-on's backup ids with a manifest, newest first (ids sort by time)."""
        folder = self.root / addon
        if not folder.is_dir():
            return []
        out = []
        for path in folder.glob("*.json"):
            with contextlib.suppress(Exception):
                out.append(check_backup_id(path.stem))
        return sorted(out, reverse=True)

    def list(self, addon: str) -> list[dict[str, Any]]:
        """The manifests of the add-on's backups, newest first; an unreadable one is skipped."""
        out = []
        for backup_id in self.ids(addon):
            with contextlib.suppress(OSError, ValueError, NotFound):
                out.append(self.read(addon, backup_id))
        return out

    def read(self, addon: str, backup_id: str) -> dict[str, Any]:
        path = self.manifest_path(addon, backup_id)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise NotFound(f"{addon} has no backup {backup_id} (see: lbsolo addons:backups {addon})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a manifest")
        return data

    def save(self, addon: str, manifest: dict[str, Any]) -> None:
        self.dir(addon)
        path = self.manifest_path(addon, str(manifest["id"]))
        write_private(path, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def remove(self, addon: str, backup_id: str, kind: str) -> None:
        """The dump first, then its manifest: a listed backup always has its file, or says it has none."""
        for path in (self.dump_path(addon, backup_id, kind), self.manifest_path(addon, backup_id)):
            path.unlink(missing_ok=True)

    def clean_parts(self) -> int:
        """Remove the `.part` files (and manifest temp files) a killed daemon left; how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for path in [*folder.glob("*.part"), *folder.glob(".*.tmp")]:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
        return removed

    def schedule_since(self, addon: str) -> float | None:
        """When the add-on's current schedule was set (None: not known)."""
        try:
            return float(json.loads((self.root / addon / SCHEDULE_FILE).read_bytes())["since"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def set_schedule_since(self, addon: str, schedule: str | None, since: float) -> None:
        write_private(self.dir(addon) / SCHEDULE_FILE, json.dumps({"schedule": schedule, "since": since}).encode())
