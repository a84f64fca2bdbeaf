"""The daemon's files under $LBSOLO_HOME: the home itself and the admin token, the instance's name
on a shared engine, private files written whole, and the scratch directories of this process.

Blocking file system calls, made before the loop runs or through asyncio.to_thread. It must not
know the API, the core or the engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path

from lbsolo.config import Settings


def ensure_home(settings: Settings) -> str:
    """Create the state directory (0700) and the admin token (0600); return the token."""
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)
    path = settings.token_path
    if not path.exists():
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    return path.read_text().strip()


def instance_id(settings: Settings) -> str:
    """Names this lbsolo home on a shared engine: it only ever touches its own containers.

    A hash of the home's path, unless the home was restored from a backup: then the backed-up
    platform's, kept in $LBSOLO_HOME/instance, which its images' labels and volumes' names carry."""
    with contextlib.suppress(OSError):
        kept = settings.instance_path.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{12}", kept):
            return kept
    return hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:12]


def write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def fresh_dir(path: Path) -> Path:
    """`path` as an empty private directory (what a crashed daemon left there is removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def spool_dir(tmp: Path) -> Path:
    """This process's own spool directory under `tmp`; those of processes no longer alive are
    removed (a daemon handing over still spools into its own while it finishes)."""
    tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in tmp.iterdir():
        alive = old.name.isdigit() and Path(f"/proc/{old.name}").exists() and int(old.name) != os.getpid()
        if alive:
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return fresh_dir(tmp / str(os.getpid()))
