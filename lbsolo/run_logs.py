"""Logs that outlive containers: every replica's output, stored per app on disk.

Lines arrive from collector threads (one per followed replica) through the event loop, are
kept in a short in-memory buffer for live followers, and are appended to `<logs>/<app>.log` as
JSON lines in batches off the loop. Files rotate by size and only a few old ones are kept.
The proxy's access log (`AccessLog`) is written and rotated the same way. A write that fails (a
full disk) drops its lines with one warning naming the file: logging never stops the daemon.
Must not block the event loop: every file operation runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from lbsolo.errors import EngineError

log = logging.getLogger("lbsolo.run_logs")


def rotate(path: Path, keep: int) -> None:
    """Move `path` to `path.1` (`.1` to `.2`, ...), keeping at most `keep` old files; 0 keeps none."""
    if keep < 1:
        path.unlink(missing_ok=True)
        return
    path.with_name(f"{path.name}.{keep}").unlink(missing_ok=True)
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


class _WriteFailures:
    """One warning when writes to a file start failing (a full disk), one line when they work again."""

    def __init__(self) -> None:
        self.failing: set[Path] = set()

    def failed(self, path: Path, e: OSError, lines: int) -> None:
        if path not in self.failing:
            self.failing.add(path)
            why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e)
            log.warning(
                "cannot write %s (%s): %d lines dropped, and the next ones until it works again", path, why, lines
            )

    def worked(self, path: Path) -> None:
        if path in self.failing:
            self.failing.discard(path)
            log.warning("writing %s works again", path)


@dataclass(frozen=True, slots=True)
class LogLine:
    ts: float
    app: str
    release: str
    process: str
    replica: str
    line: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def matches(line: LogLine, process: str | None, release: str | None, since: float | None, grep: str | None) -> bool:
    return (
        (process is None or line.process == process)
        and (release is None or line.release == release)
        and (since is None or line.ts >= since)
        and (grep is None or grep in line.line)
    )


class LogStore:
    def __init__(self, directory: Path, max_bytes: int = 5 * 1024 * 1024, keep: int = 3) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.keep = keep
        self._pending: dict[str, list[LogLine]] = defaultdict(list)
        self._followers: dict[str, set[asyncio.Queue[LogLine]]] = defaultdict(set)
        self._lock = threading.Lock()  # file writes (flush thread) vs reads (API threads)
        self._failures = _WriteFailures()
        self._taps: list[Callable[[LogLine], None]] = []  # the log drains (core_drains)

    def add_tap(self, tap: Callable[[LogLine], None]) -> None:
        """Hand every line (stored or only tapped) to `tap` too, on the loop; it must not block."""
        self._taps.append(tap)

    def tap(self, line: LogLine) -> None:
        """A line for the taps only (build, release and cron output: not in the app's stored log)."""
        for tap in self._taps:
            try:
                tap(line)
            except Exception:  # a tap's bug must not lose the app's own log
                log.exception("a log tap failed")

    def path(self, app: str) -> Path:
        return self.directory / f"{app}.log"

    # writing
    def append(self, line: LogLine) -> None:
        """Called on the loop: buffer for the next flush, hand to live followers."""
        self._pending[line.app].append(line)
        for q in self._followers.get(line.app, ()):
            if q.qsize() < 10_000:
                q.put_nowait(line)
        if self._taps:
            self.tap(line)

    def _write(self, batches: dict[str, list[LogLine]]) -> None:
        with self._lock:
            for app, lines in batches.items():
                path = self.path(app)
                try:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    with path.open("a", encoding="utf-8") as f:
                        f.write("".join(json.dumps(ln.to_dict(), separators=(",", ":")) + "\n" for ln in lines))
                    if path.stat().st_size > self.max_bytes:
                        rotate(path, self.keep)
                except OSError as e:
                    self._failures.failed(path, e, len(lines))
                else:
                    self._failures.worked(path)

    async def flush(self) -> None:
        if not self._pending:
            return
        batches, self._pending = dict(self._pending), defaultdict(list)
        await asyncio.to_thread(self._write, batches)

    async def flush_forever(self, interval: float = 0.5) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await self.flush()
        finally:
            await self.flush()

    def forget(self, app: str) -> None:
        with self._lock:
            for p in self.directory.glob(f"{app}.log*"):
                p.unlink(missing_ok=True)

    def last_ts(self, app: str) -> float | None:
        path = self.path(app)
        return path.stat().st_mtime if path.exists() else None

    # reading
    def _files(self, app: str) -> list[Path]:
        path = self.path(app)
        olds = [path.with_name(f"{path.name}.{i}") for i in range(self.keep, 0, -1)]
        return [p for p in [*olds, self.path(app)] if p.exists()]

    def _iter_file_lines(self, app: str) -> Iterator[LogLine]:
        with self._lock:
            files = self._files(app)
            for p in files:
                with p.open(encoding="utf-8", errors="replace") as f:
                    for raw in f:
                        with contextlib.suppress(ValueError, TypeError):
                            yield LogLine(**json.loads(raw))

    def read(
        self,
        app: str,
        tail: int = 200,
        process: str | None = None,
        release: str | None = None,
        since: float | None = None,
        grep: str | None = None,
    ) -> list[LogLine]:
        """The last `tail` stored lines that match (blocking: call through to_thread)."""
        out: list[LogLine] = []
        for ln in self._iter_file_lines(app):
            if matches(ln, process, release, since, grep):
                out.append(ln)
                if len(out) > tail * 2:
                    del out[: len(out) - tail]
        pending = [ln for ln in self._pending.get(app, []) if matches(ln, process, release, since, grep)]
        return (out + pending)[-tail:]

    async def follow(self, app: str) -> AsyncIterator[LogLine]:
        q: asyncio.Queue[LogLine] = asyncio.Queue()
        self._followers[app].add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._followers[app].discard(q)


class AccessLog:
    """The proxy's access lines, appended to one file (`<logs>/access.log`) and rotated by size.

    `write` runs on the loop and only queues the batch; `flush_forever` writes the queue every
    second in a worker thread, which also rotates the file past `max_bytes` (keeping `keep` old
    ones). Lines beyond `max_pending` characters waiting for a slow or full disk are dropped.
    """

    def __init__(
        self, path: Path, max_bytes: int = 64 * 1024 * 1024, keep: int = 3, max_pending: int = 8 << 20
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.max_pending = max_pending
        self.dropped = 0  # lines dropped in all (full queue or failed writes)
        self._pending: list[str] = []
        self._pending_chars = 0
        self._file: BinaryIO | None = None
        self._size = 0
        self._failures = _WriteFailures()

    def write(self, lines: str) -> None:
        """Queue newline-terminated lines (the proxy hands them over in batches)."""
        if self._pending_chars > self.max_pending:
            self.dropped += lines.count("\n")
            return
        self._pending.append(lines)
        self._pending_chars += len(lines)

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        try:
            f = self._file
            if f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                f = self._file = self.path.open("ab")
                self._size = f.tell()
            f.write(data)
            f.flush()
            self._size += len(data)
            if self._size > self.max_bytes:
                self._close()
                rotate(self.path, self.keep)
        except OSError as e:
            lines = text.count("\n")
            self.dropped += lines
            self._failures.failed(self.path, e, lines)
            self._close()  # a buffer holding part of the batch would be written with the next one
        else:
            self._failures.worked(self.path)

    def close(self) -> None:
        """Close the file (blocking; the next write opens it again)."""
        self._close()

    def _close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()

    async def flush(self) -> None:
        if self._pending:
            batch, self._pending, self._pending_chars = self._pending, [], 0
            await asyncio.to_thread(self._write, "".join(batch))

    async def flush_forever(self, interval: float = 1.0) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await self.flush()
            await asyncio.to_thread(self._close)


class LogCollector:
    """Follows each running replica's output and feeds the store.

    With `follow_async` (the daemon's Docker backend), a task per replica on the loop: no thread
    per followed replica, whatever the number of apps. Without it, or when it cannot (an engine
    on TCP), a thread per replica running the blocking `follow`.
    """

    def __init__(
        self,
        store: LogStore,
        follow: Callable[[str, float | None], Iterator[str]],
        follow_async: Callable[[str, float | None], AsyncIterator[str]] | None = None,
    ) -> None:
        self.store = store
        self._follow = follow
        self._follow_async = follow_async
        self._threads: dict[str, threading.Thread] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, replica_id: str, app: str, release: str, process: str, name: str, since: float | None) -> None:
        thread = self._threads.get(replica_id)
        if thread is not None and thread.is_alive():
            return
        task = self._tasks.get(replica_id)
        if task is not None and not task.done():
            return
        loop = self._loop = asyncio.get_running_loop()
        if self._follow_async is not None:
            self._tasks[replica_id] = loop.create_task(
                self._pump(replica_id, app, release, process, name, since), name=f"logs-{name}"
            )
            return
        self._thread(replica_id, app, release, process, name, since)

    async def _pump(
        self, replica_id: str, app: str, release: str, process: str, name: str, since: float | None
    ) -> None:
        assert self._follow_async is not None
        try:
            async for text in self._follow_async(replica_id, since):
                self.store.append(LogLine(time.time(), app, release, process, name, text))
        except EngineError as e:
            log.debug("following %s on the loop: %s; in a thread instead", name, e.message)
            self._thread(replica_id, app, release, process, name, since)
        except Exception as e:  # the engine or the container went away
            log.debug("log follower of %s ended: %s", name, e)

    def _thread(self, replica_id: str, app: str, release: str, process: str, name: str, since: float | None) -> None:
        loop = asyncio.get_running_loop()

        def pump() -> None:
            try:
                for text in self._follow(replica_id, since):
                    line = LogLine(time.time(), app, release, process, name, text)
                    loop.call_soon_threadsafe(self.store.append, line)
            except Exception as e:  # the engine or the container went away, or the loop closed
                log.debug("log follower of %s ended: %s", name, e)

        thread = threading.Thread(target=pump, name=f"logs-{name}", daemon=True)
        self._threads[replica_id] = thread
        thread.start()

    def prune(self) -> None:
        for rid, thread in list(self._threads.items()):
            if not thread.is_alive():
                del self._threads[rid]
        for rid, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[rid]
