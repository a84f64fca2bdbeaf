"""Log drains: the use cases (list, add, remove) and each drain's delivery, in the background.

Every line of an app's log (its replicas' output through the LogStore, and the build, release
and cron output tapped from their LogBuffers) is formatted for each of the app's drains and put
in that drain's bounded buffer (lbsolo.drains.Buffer): an O(1) step on the loop, whatever the
receiver does. One task per drain takes batches from the buffer and sends them
(lbsolo.drains_send); a failed batch goes back to the buffer and the drain waits, backing off
exponentially. Past half its buffer, a drain spills its oldest messages to disk
($LBSOLO_HOME/drains/<id>/, bounded by drains_spill_bytes) and sends them first once its
receiver is back; when the daemon stops, what is still buffered is spilled too, so that a
restart loses nothing that fits. Past the bounds the oldest messages are dropped and counted.
It must not change apps or releases, and must never wait for a receiver on the caller's behalf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from typing import Any

from lbsolo.config import Settings
from lbsolo.core_context import CoreContext
from lbsolo.core_drains_addons import AddonLogFeed, Follow
from lbsolo.drains import Buffer, Counters, Drain, Kind, backoff, find, message, new_drain, parse_url, procid
from lbsolo.drains_send import Sender, Spill, sender_for, tls_context
from lbsolo.errors import InvalidInput, LbsoloError, NotFound
from lbsolo.events import Event, EventKind
from lbsolo.run_logs import LogLine

log = logging.getLogger("lbsolo.core")


class DrainWorker:
    """One drain's buffer, spill, counters and delivery task."""

    def __init__(self, drain: Drain, settings: Settings, tls: Any, spill: Spill) -> None:
        s = settings
        self.drain = drain
        self.target = parse_url(drain.url, allow_http=True)  # checked when added
        self.settings = s
        self.buffer = Buffer(s.drains_buffer_lines, s.drains_buffer_bytes)
        self.spill = spill
        self.counters = Counters()
        self.failures = 0  # failed attempts in a row
        self.task: asyncio.Task[None] | None = None
        self._tls = tls  # () -> the TLS context, made once for every drain
        self._wake = asyncio.Event()
        self._spilling: asyncio.Task[None] | None = None

    # ---- on the loop, for each line: never blocks, never fails
    def offer(self, ts: float, proc: str, text: str) -> None:
        buf = self.buffer
        buf.put(message(ts, self.drain.token, self.drain.app, proc, text))
        self._wake.set()
        if (
            self._spilling is None
            and self.settings.drains_spill_bytes > 0
            and (buf.bytes > buf.max_bytes // 2 or len(buf) > buf.max_lines // 2)
        ):
            self._spilling = asyncio.create_task(self._spill(), name=f"drain-spill-{self.drain.id}")

    async def _spill(self) -> None:
        """Move the oldest half of the buffer to disk, a chunk at a time, off the loop."""
        buf = self.buffer
        chunk = max(1, min(buf.max_bytes // 4, 1 << 20))
        try:
            while buf.bytes > buf.max_bytes // 4 and len(buf) > 1:
                batch = buf.take(max(1, buf.max_lines // 4), chunk)
                await asyncio.to_thread(self.spill.write, batch)
                self._wake.set()
        except Exception:
            log.exception("spilling drain %s failed", self.drain.id)
        finally:
            self._spilling = None

    def status(self) -> dict[str, Any]:
        c = self.counters
        c.dropped = self.buffer.dropped + self.spill.dropped
        c.buffered = len(self.buffer)
        c.spilled = self.spill.messages
        state = "ok" if self.failures == 0 else "failing"
        if c.delivered == 0 and self.failures == 0:
            state = "waiting"
        return {**c.to_dict(), "state": state, "kind": str(self.target.kind)}

    # ---- the delivery task
    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"drain-{self.drain.app}-{self.drain.id}")

    async def stop(self, keep: bool) -> None:
        """Stop sending; keep (spill) what is buffered for the next daemon, or forget it all."""
        for task in (self.task, self._spilling):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        try:
            if keep and len(self.buffer):
                await asyncio.to_thread(self.spill.write, self.buffer.take(len(self.buffer), self.buffer.bytes + 1))
            elif not keep:
                await asyncio.to_thread(self.spill.clear)
        except Exception:
            log.exception("keeping drain %s's buffer failed", self.drain.id)

    def _sender(self) -> Sender:
        s = self.settings
        tls = self._tls() if self.target.tls else None
        return sender_for(self.drain.url, self.target, self.drain.token, s.drains_timeout, tls)

    async def _next_batch(self) -> tuple[int | None, list[bytes]]:
        if self.spill.segments:
            got = await asyncio.to_thread(self.spill.read_oldest)
            if got is not None:
                return got
        s = self.settings
        return None, self.buffer.take(s.drains_batch_lines, s.drains_batch_bytes)

    async def run(self) -> None:
        s = self.settings
        linger = s.drains_linger if self.target.kind in (Kind.HTTPS, Kind.HTTP) else 0.0
        sender: Sender | None = None
        try:
            await asyncio.to_thread(self.spill.load)
            while True:
                if not len(self.buffer) and not self.spill.segments:
                    self._wake.clear()
                    await self._wake.wait()
                    if linger and len(self.buffer) < s.drains_batch_lines:
                        await asyncio.sleep(linger)  # fuller batches: fewer POSTs
                segment, batch = await self._next_batch()
                if not batch:
                    continue
                try:
                    sender = sender or self._sender()
                    await sender.send(batch)
                except Exception as e:  # DeliveryError, a CA bundle that cannot be read; a bug is logged
                    if not isinstance(e, LbsoloError):
                        log.exception("log drain %s of %s", self.drain.id, self.drain.app)
                        if sender is not None:
                            await sender.close()
                        sender = None
                    self._failed(e.message if isinstance(e, LbsoloError) else f"{type(e).__name__}: {e}")
                    if segment is None:
                        self.buffer.put_back(batch)
                    del batch
                    await asyncio.sleep(backoff(self.failures, s.drains_backoff_base, s.drains_backoff_max))
                    continue
                if segment is not None:
                    await asyncio.to_thread(self.spill.remove, segment)
                self.failures = 0
                self.counters.delivered += len(batch)
                self.counters.last_delivered_at = time.time()
        finally:
            if sender is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(sender.close())

    def _failed(self, why: str) -> None:
        if self.failures == 0:
            log.warning("log drain %s of %s: %s", self.drain.id, self.drain.app, why)
        self.failures += 1
        self.counters.failed_attempts += 1
        self.counters.last_error = why
        self.counters.last_error_at = time.time()


class Drains:
    """The apps' log drains: the state's records and a running worker for each."""

    def __init__(self, ctx: CoreContext, follow_addon: Follow | None = None) -> None:
        self.ctx = ctx
        self.workers: dict[str, DrainWorker] = {}  # drain id -> its worker
        self.by_app: dict[str, list[DrainWorker]] = {}
        self._tls: ssl.SSLContext | None = None
        self.running = False
        ctx.logs.add_tap(self.on_line)
        # Add-ons' output to their apps' drains (None: no add-ons here).
        self.addon_logs = None if follow_addon is None else AddonLogFeed(ctx, follow_addon, self.by_app.keys)

    @property
    def spill_dir(self) -> Any:
        return self.ctx.settings.home / "drains"

    def tls(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = tls_context(self.ctx.settings.drains_ca_bundle)
        return self._tls

    def on_line(self, line: LogLine) -> None:
        """The LogStore's tap: each line to each of its app's drains."""
        workers = self.by_app.get(line.app)
        if workers:
            proc = procid(line.process, line.replica)
            for w in workers:
                w.offer(line.ts, proc, line.line)

    # ---- use cases
    async def listing(self, app: str) -> list[dict[str, Any]]:
        await self.ctx.app(app)  # NotFound for an unknown app
        drains = await asyncio.to_thread(self.ctx.state.list_drains, app)
        out = []
        for d in drains:
            w = self.workers.get(d.id)
            counters = w.status() if w is not None else {**Counters().to_dict(), "state": "stopped", "kind": ""}
            out.append({**d.shown(), **counters, "kind": str(parse_url(d.url, allow_http=True).kind)})
        return out

    async def add(self, app: str, url: str) -> dict[str, Any]:
        """A new drain; refused whole (nothing saved) for a bad URL, a duplicate, a host that does not resolve."""
        s = self.ctx.settings
        async with self.ctx.lock(app):
            await self.ctx.app(app)
            taken = await asyncio.to_thread(self.ctx.state.list_drains, app)
            drain = new_drain(app, url, taken, time.time(), s.drains_allow_http)
            await self._resolves(drain)
            await asyncio.to_thread(self.ctx.state.add_drain, drain)
        if self.running:
            self._start(drain)
        return next(d for d in await self.listing(app) if d["id"] == drain.id)

    async def _resolves(self, drain: Drain) -> None:
        host = parse_url(drain.url, allow_http=True).host
        try:
            await asyncio.wait_for(asyncio.to_thread(socket.getaddrinfo, host, None, type=socket.SOCK_STREAM), 10)
        except (OSError, TimeoutError) as e:
            why = e.strerror if isinstance(e, socket.gaierror) and e.strerror else "no answer in 10s"
            raise InvalidInput(f"the drain's host {host!r} does not resolve ({why}): nothing was added") from e

    async def remove(self, app: str, ref: str) -> str:
        await self.ctx.app(app)
        async with self.ctx.lock(app):
            drains = await asyncio.to_thread(self.ctx.state.list_drains, app)
            try:
                drain = find(drains, app, ref)
            except InvalidInput as e:
                raise NotFound(e.message) from None
            await asyncio.to_thread(self.ctx.state.delete_drain, app, drain.id)
        await self._stop(drain.id, keep=False)
        return drain.id

    def on_event(self, event: Event) -> None:
        """A bus listener: a destroyed app's drains stop (the state forgot them with the app)."""
        if event.kind == EventKind.APP_DESTROYED and event.app in self.by_app:
            for w in list(self.by_app[event.app]):
                self.ctx.spawn(self._stop(w.drain.id, keep=False), f"drain-stop-{w.drain.id}")

    # ---- workers
    def _start(self, drain: Drain) -> None:
        if drain.id in self.workers:
            return
        spill = Spill(self.spill_dir / drain.id, self.ctx.settings.drains_spill_bytes)
        w = DrainWorker(drain, self.ctx.settings, self.tls, spill)
        self.workers[drain.id] = w
        self.by_app.setdefault(drain.app, []).append(w)
        w.start()

    async def _stop(self, drain_id: str, keep: bool) -> None:
        w = self.workers.pop(drain_id, None)
        if w is None:
            return
        rest = [x for x in self.by_app.get(w.drain.app, []) if x is not w]
        if rest:
            self.by_app[w.drain.app] = rest
        else:
            self.by_app.pop(w.drain.app, None)
        await w.stop(keep)

    async def run_forever(self) -> None:
        """The daemon's task: every stored drain delivering until the daemon stops, then each
        drain's buffer kept on disk for the next start."""
        feed = None
        try:
            self.running = True  # from now on add() starts its drain (twice is once: _start knows)
            for drain in await asyncio.to_thread(self.ctx.state.list_drains):
                self._start(drain)
            if self.addon_logs is not None:
                # Lives as long as this task, not in the context's jobs (a handover waits for those to end).
                feed = asyncio.create_task(self.addon_logs.run_forever(), name="lbsolo-drains-addon-logs")
            await asyncio.Event().wait()
        finally:
            if feed is not None:
                feed.cancel()
            self.running = False
            await asyncio.gather(*(self._stop(i, keep=True) for i in list(self.workers)), return_exceptions=True)
