"""The audit log: who changed what, from where, and how it ended — append-only JSON lines.

Every state-changing request that reaches the API's process (REST, UI forms, git pushes, push
webhooks; refused ones included) becomes one line of `$LBSOLO_HOME/audit/audit.log` (0600):
time, actor, source address, action (method and route template), the app or add-on it
concerns, the status code, and what changed where that is known without a secret value (config
keys, a formation, a release). The guard writes it (guard.py); routes add what they know through
`note()`, which needs no handle on the request.

Writing never blocks the event loop: `record` queues the line and one worker thread writes it,
flushed per line (no fsync), and rotates the file past `max_bytes`, keeping `keep` old ones (the
oldest dropped). Reading is blocking (call it through asyncio.to_thread).

It must not read request bodies, and it never holds a config value: callers note keys only.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from lbsolo.run_logs import rotate

log = logging.getLogger(__name__)

#: What a route knows of a change it made (config keys, formation, release), filled in while the
#: guard's call of the app runs; a dict shared by the tasks a response streams from.
_NOTE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("lbsolo_audit_note", default=None)

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Fields a note may carry; anything else is dropped, so a value can't slip in under a new name.
NOTE_FIELDS = frozenset(
    {
        "actor",
        "app",
        "addon",
        "set",
        "unset",
        "secret",
        "formation",
        "release",
        "version",
        "token",
        "role",
        "apps",
        "failed",
        "node",
        "advertise_addr",
    }
)


def note(**fields: Any) -> None:
    """Add what a route knows of its change to the audit line of the request being served."""
    current = _NOTE.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if k in NOTE_FIELDS and v is not None})


def begin_note() -> tuple[dict[str, Any], contextvars.Token[dict[str, Any] | None]]:
    """A fresh note for one request (the guard's); `end_note` with the token afterwards."""
    current: dict[str, Any] = {}
    return current, _NOTE.set(current)


def end_note(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _NOTE.reset(token)


def is_change(method: str, path: str) -> bool:
    """Whether a request is recorded: any change, and a git push (not a fetch, which is a POST too)."""
    if method not in CHANGES:
        return False
    return not (path.startswith("/git/") and not path.endswith("/git-receive-pack"))


def matches(
    entry: dict[str, Any], app: str | None = None, since: float | None = None, actor: str | None = None
) -> bool:
    """Whether an audit line passes `lbsolo audit`'s filters (an add-on counts as an app there)."""
    if app is not None and app not in (entry.get("app"), entry.get("addon")):
        return False
    if since is not None and float(entry.get("ts") or 0) < since:
        return False
    if actor is not None:
        who = str(entry.get("actor") or "")
        # "ci" finds "ci" and "git:ci"; "ui" finds every UI session; an exact name always matches.
        if who != actor and who.split(":", 1)[-1] != actor and who.split(":", 1)[0] != actor:
            return False
    return True


class AuditLog:
    """The append-only audit file with its rotation; `record` is safe on the event loop."""

    def __init__(self, path: Path, max_bytes: int = 16 * 1024 * 1024, keep: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.dropped = 0  # lines a failing disk did not take
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=100_000)
        self._file: BinaryIO | None = None
        self._size = 0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        """Queue one line; never blocks (a queue full of lines a dead disk won't take drops it)."""
        line = json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n"
        self._ensure_thread()
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued line is written (blocking)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        """Write what is queued, stop the writer and close the file (blocking)."""
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=5)
            self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            line = self._queue.get()
            try:
                if line is None:
                    self._close()
                    return
                self._write(line)
            finally:
                self._queue.task_done()

    def _open(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        f = os.fdopen(fd, "ab")
        self._size = f.tell()
        return f

    def _write(self, line: str) -> None:
        data = line.encode("utf-8", "replace")
        try:
            if self._file is None:
                self._file = self._open()
            if self._size and self._size + len(data) > self.max_bytes:
                self._close()
                rotate(self.path, self.keep)
                self._file = self._open()
            self._file.write(data)
            self._file.flush()
            self._size += len(data)
        except OSError as e:
            self.dropped += 1
            log.warning("audit log %s: a line was not written (%s)", self.path, e)
            self._close()

    def _close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()

    def files(self) -> list[Path]:
        """The audit files, oldest first."""
        old = [self.path.with_name(f"{self.path.name}.{i}") for i in range(self.keep, 0, -1)]
        return [p for p in [*old, self.path] if p.exists()]

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every stored line, oldest first (blocking); an unreadable line is skipped."""
        self.flush()
        for path in self.files():
            with contextlib.suppress(OSError), path.open("rb") as f:
                for raw in f:
                    with contextlib.suppress(ValueError):
                        yield json.loads(raw)

    def read(
        self, app: str | None = None, since: float | None = None, actor: str | None = None, n: int = 100
    ) -> list[dict[str, Any]]:
        """The newest `n` lines passing the filters, oldest first (blocking)."""
        kept: list[dict[str, Any]] = []
        for entry in self.entries():
            if matches(entry, app, since, actor):
                kept.append(entry)
                if len(kept) > n * 2:
                    del kept[: len(kept) - n]
        return kept[-n:] if n > 0 else []
