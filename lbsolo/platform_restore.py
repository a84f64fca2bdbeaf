"""`lbsolo restore`: a whole-platform backup brought back into $LBSOLO_HOME, with no daemon running.

Run by the CLI, not the daemon: a restore replaces the very state a daemon would be serving, so
none may run on the home (refused while one answers on its socket); afterwards `lbsolo up`
adopts what is restored like after any restart — the releases' images are there, the volumes
hold their data, the add-ons' records with their verified backups beside them.

The order makes it all or nothing. Refused first, before anything is read: a running daemon, a
home that already has apps (unless --force: never a silent merge), an engine that does not
answer. Then the archive is checked and staged beside the home (platform_archive.read_archive:
version, free space, every entry's checksum): a cut, changed, newer or wrongly-keyed backup stops
here and only the staging directory is removed. Then the engine: images loaded, volumes created
and filled (undone — volumes removed, newly loaded images removed — if a step fails). Only then
are the files moved into the home. The restored home keeps the backed-up platform's instance id
($LBSOLO_HOME/instance), which its images' labels and volumes' names carry.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from lbsolo import __version__
from lbsolo import platform_archive as pa
from lbsolo.addon_backup_files import PLATFORM_FOLDER
from lbsolo.addon_backup_remote import Target
from lbsolo.config import Settings
from lbsolo.errors import Conflict, InvalidInput
from lbsolo.state import SCHEMA, schema_of

FALLBACK_IMAGE = "busybox:latest"
BACKUP_NAME = re.compile(r"^lbsolo-backup-[0-9]{8}T[0-9]{6}Z(-[0-9]{1,2})?\.tar$")
RESTORE_MARKER = ".platform-restore"  # core_addons.RESTORE_MARKER (not imported: the CLI stays off the core)


class RestoreEngine(Protocol):
    def ping(self) -> str: ...
    def instance_leftovers(self) -> int: ...
    def volume_name(self, app: str, name: str) -> str: ...
    def volume_exists(self, volume: str) -> bool: ...
    def remove_volume(self, volume: str) -> None: ...
    def import_volume(self, volume: str, app: str, image: str, archive: Path) -> None: ...
    def image_present(self, image: str) -> bool: ...
    def remove_image(self, image: str) -> None: ...
    def load_images(self, archive: Path) -> None: ...


def daemon_answers(settings: Settings) -> bool:
    """Whether a daemon listens on the home's API socket."""
    path = settings.socket_path
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def home_apps(settings: Settings) -> int:
    """How many apps and add-ons the home's state has (0: no state, or an empty one)."""
    try:
        data = json.loads(settings.state_path.read_bytes() or b"{}")
    except FileNotFoundError:
        return 0
    except ValueError:
        return 1  # unreadable: not ours to overwrite without --force
    return len(data.get("apps") or {}) + len(data.get("addons") or {})


def check_home(settings: Settings, force: bool) -> None:
    """Refuse a home a daemon serves, or one with apps (without force): before anything is read."""
    home = settings.home
    if daemon_answers(settings):
        raise Conflict(f"a daemon is running on {home}: stop it first (restore replaces the state it serves)")
    if (n := home_apps(settings)) and not force:
        raise Conflict(f"{home} already has {n} apps and add-ons: restore never merges; restore into an empty "
                       "LBSOLO_HOME, or pass --force to replace them")  # fmt: skip


def home_target(settings: Settings) -> dict[str, Any]:
    """The platform backups' bucket as the home's state records it ({}: none, or no state)."""
    try:
        data = json.loads(settings.state_path.read_bytes() or b"{}")
    except (OSError, ValueError):
        return {}
    for doc in (data.get("settings") or {}).values():
        if isinstance(doc, dict) and doc.get("name") == "platform_backup":
            return dict(doc.get("target") or {})
    return {}


def fetch(target: Target, name: str, dest_dir: Path, say: Callable[[str], None] = lambda _line: None) -> Path:
    """Download the platform backup `name` from the target's `platform/` folder into dest_dir
    (a `.part` renamed once whole); its path. Sealed ones stay sealed: the restore opens them."""
    if not BACKUP_NAME.match(name):
        raise InvalidInput(f"{name!r} is not a backup's name (lbsolo-backup-<time>.tar, see: lbsolo backup --status)")
    from lbsolo.addon_backup_remote import RemoteStore

    dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    part = dest_dir / f".{name}.part"
    store = RemoteStore(target)
    try:
        size = store.download(target.key(PLATFORM_FOLDER, name), part)
        final = dest_dir / name
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
    say(f"downloaded {name} from {target.url}/{PLATFORM_FOLDER}/ ({size / 1e6:,.1f} MB)")
    return final


def restore(
    settings: Settings,
    source: Path,
    *,
    force: bool,
    key_for: pa.KeyFor,
    engine_for: Callable[[str], RestoreEngine],
    say: Callable[[str], None] = lambda _line: None,
    free: Callable[[Path], int] = pa.free_bytes,
) -> pa.Manifest:
    home = settings.home
    check_home(settings, force)
    engine_for("0" * 12).ping()  # no engine: refused before the archive is read
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.restore-", dir=home.parent))
    try:
        with open(source, "rb") as f:
            manifest, paths = pa.read_archive(
                pa.open_source(f, key_for),
                staging,
                version=__version__,
                schema=SCHEMA,
                needed=lambda m: 2 * m.total,  # the staged copy, then the engine's and the home's
                free=free,
            )
        say(f"checked {len(manifest.entries)} entries ({manifest.total / 1e6:,.1f} MB) of a backup made by lbsolo "
            f"{manifest.lbsolo}")  # fmt: skip
        state = json.loads(paths["state.json"].read_bytes())
        if schema_of(state) > SCHEMA:
            raise pa.NewerBackup(f"the backup's state is of schema {schema_of(state)}; this lbsolo reads {SCHEMA}")
        engine = engine_for(manifest.instance)
        if engine.instance_leftovers() and not force:
            raise Conflict(f"the engine already has containers or volumes of the backed-up platform (instance "
                           f"{manifest.instance}): is it still running here? Remove them, or pass --force")  # fmt: skip
        _into_engine(engine, manifest, paths, state, say)
        _into_home(settings, manifest, paths, staging)
        say(f"restored into {home}: start it with lbsolo up")
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _into_engine(
    engine: RestoreEngine, m: pa.Manifest, paths: dict[str, Path], state: dict[str, Any], say: Callable[[str], None]
) -> None:
    loaded: list[str] = []
    created: list[str] = []
    try:
        for entry in m.entries:
            if entry.kind == "images":
                ids = [str(i) for i in entry.meta.get("ids") or []]
                absent = [i for i in ids if not engine.image_present(i)]
                engine.load_images(paths[entry.name])
                loaded += absent
                say(f"loaded {len(ids)} images ({entry.size / 1e6:,.1f} MB)")
        current = _current_images(state)
        for entry in m.entries:
            if entry.kind != "volume":
                continue
            app, name = str(entry.meta["app"]), str(entry.meta["volume"])
            volume = engine.volume_name(app, name)
            if engine.volume_exists(volume):  # only with --force: replaced, never merged
                engine.remove_volume(volume)
            image = current.get(app)
            holder = image if image and engine.image_present(image) else FALLBACK_IMAGE
            created.append(volume)
            engine.import_volume(volume, app, holder, paths[entry.name])
            say(f"volume {name} of {app} filled ({entry.size / 1e6:,.1f} MB)")
    except BaseException:
        for volume in created:
            engine.remove_volume(volume)
        for image in loaded:
            with contextlib.suppress(Exception):
                engine.remove_image(image)
        raise


def _current_images(state: dict[str, Any]) -> dict[str, str]:
    """app -> the image of its current release, from the state's raw tables."""
    releases = {(r.get("app"), r.get("version")): r.get("image") for r in (state.get("releases") or {}).values()}
    return {
        str(a["name"]): str(releases[(a["name"], a.get("release"))])
        for a in (state.get("apps") or {}).values()
        if releases.get((a.get("name"), a.get("release")))
    }


def _into_home(settings: Settings, m: pa.Manifest, paths: dict[str, Path], staging: Path) -> None:
    """Move the staged files into place; each replaces what was there (only with --force)."""
    home = settings.home
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    for entry in m.entries:
        path = paths[entry.name]
        if entry.kind == "dir":
            name = str(entry.meta["dir"])
            if name not in ("tls", "acme", "git", "backup-keys"):
                raise pa.BadBackup(f"the backup names an unknown directory {name!r}")
            unpacked = staging / f"dir-{name}"
            pa.untar_directory(path, unpacked)
            target = home / name
            if target.exists():
                shutil.rmtree(target)
            os.replace(unpacked, target)
            os.chmod(target, 0o700)
        elif entry.kind == "addon":
            addon, file = str(entry.meta["addon"]), Path(str(entry.meta["file"])).name
            folder = home / "backups" / addon
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(path, folder / file)
            if file.endswith(".json"):  # its manifest: `lbsolo up` loads this backup into a new container
                (folder / RESTORE_MARKER).write_text(str(entry.meta["backup"]) + "\n")
    (home / "instance").write_text(m.instance + "\n")
    if "token" in paths:
        os.chmod(paths["token"], 0o600)
        os.replace(paths["token"], settings.token_path)
    os.chmod(paths["state.json"], 0o600)
    os.replace(paths["state.json"], settings.state_path)  # last: the home counts as restored once it is there
