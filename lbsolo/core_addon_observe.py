"""What add-on containers print and use: their logs (read or followed) and their CPU and memory now.

An add-on's log is its container's, as the engine keeps it (nothing is stored by lbsolo): read
through the Services part, in lines shaped like an app's stored ones (`process` is the kind,
`release` the version) so the CLI and the API treat both alike. A follow reads the engine's
stream in a thread of its own (one per follower, like the app log collectors: never the loop's
shared pool, which a long wait would starve), handing lines to the loop through a bounded
window, so a slow reader slows the thread instead of filling memory.

CPU and memory are one-shot readings of the engine (`Backend.stats`, as run_stats takes for
replicas) of every add-on's container at once, in a few threads of this part's own, each cut
off after a few seconds. CPU is measured against the previous reading of the same container:
when there is none recent, a second reading follows a quarter second after the first. It
decides nothing about add-ons and changes none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lbsolo.core_context import CoreContext
from lbsolo.engine import ServiceRecord, Services
from lbsolo.errors import Conflict, InvalidInput, LbsoloError
from lbsolo.models_addons import Addon

log = logging.getLogger("lbsolo.core")

FOLLOW_WINDOW = 256  # lines read from the engine and not yet taken by the follower
STATS_TIMEOUT = 3.0  # seconds: a reading slower than this shows as none, the listing does not wait
FRESH = 15.0  # seconds: a previous reading this recent measures CPU on its own
PRIME_GAP = 0.25  # seconds between two readings when there is no recent one


@dataclass
class LogRead:
    """Lines read from an add-on's log, and the stamp (ns) of the last line read, shown or not
    (0: none), after which a follow goes on."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    last_ns: int = 0


class AddonObserve:
    """Logs and resource readings of add-on containers (`Addons.observe`)."""

    def __init__(
        self,
        ctx: CoreContext,
        services: Services,
        *,
        concurrency: int = 4,
        clock: Callable[[], float] = time.monotonic,
        prime_gap: float = PRIME_GAP,
        timeout: float = STATS_TIMEOUT,
    ) -> None:
        self.ctx = ctx
        self.services = services
        self._concurrency = concurrency
        self._clock = clock
        self._prime_gap = prime_gap
        self._timeout = timeout
        self._pool: ThreadPoolExecutor | None = None  # made on the first reading
        self._read_at: dict[str, float] = {}  # container id -> when it was last read

    # ---- logs
    async def _container(self, name: str) -> tuple[Addon, ServiceRecord]:
        addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
        record = await asyncio.to_thread(self.services.find_service, name)
        if record is None:
            raise Conflict(f"{name} has no container, so no logs (see: lbsolo addons:info {name})")
        return addon, record

    @staticmethod
    def _row(addon: Addon, record: ServiceRecord, ns: int, text: str) -> dict[str, Any]:
        return {
            "ts": ns / 1e9,
            "app": addon.name,
            "release": addon.version,
            "process": addon.kind,
            "replica": record["id"][:12],
            "line": text,
        }

    async def read_logs(
        self, name: str, *, tail: int = 200, since: float | None = None, grep: str | None = None
    ) -> LogRead:
        """The last `tail` lines (containing `grep`) from `since` (epoch seconds)."""
        if tail < 1:
            raise InvalidInput("tail must be at least 1")
        addon, record = await self._container(name)

        def read() -> tuple[list[tuple[int, str]], int]:
            # With grep every line is read (kept: the last `tail` that match); else the engine's own tail.
            lines = self.services.service_logs(name, None if grep else tail, since, False)
            kept: deque[tuple[int, str]] = deque(maxlen=tail)
            last = 0
            try:
                for ns, text in lines:
                    last = max(last, ns)
                    if not grep or grep in text:
                        kept.append((ns, text))
            finally:
                lines.close()
            return list(kept), last

        kept, last = await asyncio.to_thread(read)
        return LogRead([self._row(addon, record, ns, text) for ns, text in kept], last)

    async def follow_logs(
        self, name: str, *, after: LogRead | None = None, since: float | None = None, grep: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """New lines (containing `grep`) as the container prints them, from right after `after`'s
        last line (else from `since`, else from its start), until it stops or the caller leaves."""
        addon, record = await self._container(name)
        after_ns = after.last_ns if after is not None else 0
        start = after_ns / 1e9 - 1e-6 if after_ns else since  # the engine's since is inclusive: lines at it are skipped
        lines = await asyncio.to_thread(self.services.service_logs, name, None, start, True)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, str] | LbsoloError | None] = asyncio.Queue()
        window = threading.BoundedSemaphore(FOLLOW_WINDOW)
        stop = threading.Event()

        def hand(item: tuple[int, str] | LbsoloError | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is reading
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            try:
                for ns, text in lines:
                    if ns <= after_ns or (grep and grep not in text):
                        continue
                    while not window.acquire(timeout=0.5):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    hand((ns, text))
            except LbsoloError as e:
                hand(e)
            finally:
                hand(None)

        thread = threading.Thread(target=pump, name=f"lbsolo-addon-logs-{name}", daemon=True)
        thread.start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, LbsoloError):
                    log.warning("following the logs of %s ended: %s", name, item.message)
                    return
                window.release()
                yield self._row(addon, record, *item)
        finally:
            stop.set()
            lines.close()  # ends the engine's stream, so the thread's wait ends too

    # ---- CPU and memory
    async def stats(self, container_ids: Sequence[str | None]) -> list[dict[str, float] | None]:
        """{cpu_percent, mem_bytes, mem_limit} of each container (None: not given, or no reading
        in time), read all at once."""
        if not any(container_ids):
            return [None] * len(container_ids)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="lbsolo-addon-stats")
        if len(self._read_at) > 1024:  # containers long gone: forget them all, once in a while
            self._read_at.clear()

        async def one(container_id: str | None) -> dict[str, float] | None:
            if not container_id:
                return None
            try:
                return await asyncio.wait_for(self._reading(container_id), self._timeout)
            except (LbsoloError, TimeoutError):
                return None

        return list(await asyncio.gather(*(one(c) for c in container_ids)))

    async def _reading(self, container_id: str) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        previous = self._read_at.get(container_id)
        if previous is None or self._clock() - previous > FRESH:
            await loop.run_in_executor(self._pool, self.ctx.engine.stats, container_id)
            await asyncio.sleep(self._prime_gap)
        numbers = await loop.run_in_executor(self._pool, self.ctx.engine.stats, container_id)
        self._read_at[container_id] = self._clock()
        return {
            "cpu_percent": float(numbers["cpu_percent"]),
            "mem_bytes": float(numbers["mem_bytes"]),
            "mem_limit": float(numbers["mem_limit"]),
        }

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
