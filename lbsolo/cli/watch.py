"""Redeploy on save: watchdog tells us a file changed; we wait for a quiet moment, then act.

The only module that imports watchdog. It knows nothing about deploying: the caller passes
what to run for each batch of changes. Ignored files (.dockerignore rules) and `.git` never count.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from lbsolo.build_source import ALWAYS_SKIPPED, Rule, ignore_rules, is_ignored


def relevant(root: Path, path: str, rules: list[Rule]) -> bool:
    """Whether a changed path inside root should trigger a redeploy."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(root).as_posix()
    except ValueError:
        return False
    if rel in ("", "."):
        return False
    first = rel.split("/", 1)[0]
    if first in ALWAYS_SKIPPED or "__pycache__" in rel.split("/") or rel.endswith((".pyc", "~", ".swp")):
        return False
    return not is_ignored(rel, rules)


class _Changes(FileSystemEventHandler):
    def __init__(self, root: Path, rules: list[Rule]) -> None:
        self.root, self.rules = root, rules
        self.last = 0.0
        self.pending = threading.Event()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
        if any(p and relevant(self.root, p, self.rules) for p in paths):
            self.last = time.monotonic()
            self.pending.set()


def watch(
    root: Path,
    on_change: Callable[[], None],
    *,
    debounce: float = 0.5,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
) -> None:
    """Call on_change after each burst of relevant changes under root, until stop is set (or Ctrl+C).

    `ready` is set once changes are being watched.
    """
    root = Path(os.path.abspath(root))
    rules = ignore_rules(root)
    handler = _Changes(root, rules)
    observer = Observer()
    observer.schedule(handler, str(root), recursive=True)
    observer.start()
    if ready is not None:
        ready.set()
    stop = stop or threading.Event()
    try:
        while not stop.is_set():
            if not handler.pending.wait(0.2):
                continue
            # Debounce: an editor's save is often several events; wait for a quiet moment.
            while time.monotonic() - handler.last < debounce and not stop.is_set():
                time.sleep(0.05)
            handler.pending.clear()
            on_change()
    finally:
        observer.stop()
        observer.join(timeout=5)
