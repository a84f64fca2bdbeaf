"""Resource and request metrics over time, per app, in bounded memory.

A StatsSampler asks the engine for every running replica's CPU, memory and network counters
every few seconds (in its own few worker threads: engine calls block, an older engine's for about a
second, and borrowing the loop's default pool for them starved every other `to_thread` call of the daemon
once there were more replicas than one round's worth), adds them up per app, and takes requests/s and mean
latency from the proxy's cumulative counters. Each (app, metric) keeps a RingSeries: a fine
tier (10 minutes at the sampling interval) and a coarse tier (24 hours of 1-minute averages
of the fine one). Memory is fixed by those sizes and the number of apps, however long the
daemon runs. No docker here: the engine is duck-typed, and tests feed samples by hand.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from lbsolo.errors import InvalidInput, LbsoloError
from lbsolo.events import Event, EventKind

log = logging.getLogger("lbsolo.run_stats")

# What the API offers; units: cpu in percent of one CPU (summed over replicas), mem in bytes,
# net_rx/net_tx in bytes/s, rps in requests/s, latency_ms the mean over the interval.
METRICS = ("cpu", "mem", "net_rx", "net_tx", "rps", "latency_ms")
WINDOWS = {"10m": 600.0, "1h": 3600.0, "24h": 86400.0}

ReplicaNumbers = Mapping[str, float]  # cpu_percent, mem_bytes, mem_limit, net_rx, net_tx (cumulative bytes)
Sample = Mapping[str, Mapping[str, ReplicaNumbers]]  # app -> replica id -> numbers


class _Tier:
    """Fixed-size ring of (bucket start, mean) points, with the bucket being filled kept apart."""

    __slots__ = ("_bucket", "_n", "_sum", "points", "step")

    def __init__(self, step: float, span: float) -> None:
        self.step = step
        self.points: deque[tuple[float, float]] = deque(maxlen=math.ceil(span / step) + 1)
        self._bucket: float | None = None
        self._sum = 0.0
        self._n = 0

    def add(self, ts: float, value: float) -> tuple[float, float] | None:
        """Add a value; returns the previous bucket's point when this value starts a new bucket."""
        bucket = ts - ts % self.step
        done = None
        if self._bucket is not None and bucket != self._bucket:
            if bucket < self._bucket:  # the clock went back: ignore rather than reorder
                return None
            done = (self._bucket, self._sum / self._n)
            self.points.append(done)
            self._sum, self._n = 0.0, 0
        self._bucket = bucket
        self._sum += value
        self._n += 1
        return done

    def pending(self) -> tuple[float, float, int]:
        return (self._bucket or 0.0, self._sum, self._n)

    def all(self) -> list[tuple[float, float]]:
        out = list(self.points)
        if self._n and self._bucket is not None:
            out.append((self._bucket, self._sum / self._n))
        return out


class RingSeries:
    """One metric's history: `fine_span` seconds at `step`, `coarse_span` at `coarse_step` (averaged)."""

    def __init__(
        self, step: float = 5.0, fine_span: float = 600.0, coarse_step: float = 60.0, coarse_span: float = 86400.0
    ) -> None:
        if not 0 < step <= coarse_step:
            raise ValueError("need 0 < step <= coarse_step")
        self.fine_span = fine_span
        self._fine = _Tier(step, fine_span)
        self._coarse = _Tier(coarse_step, coarse_span)
        self.last_ts: float | None = None

    def add(self, ts: float, value: float) -> None:
        if self.last_ts is not None and ts < self.last_ts:
            return
        self.last_ts = ts
        done = self._fine.add(ts, value)
        if done is not None:  # a finished fine point feeds the coarse tier's mean
            self._coarse.add(*done)

    def points(self, window: str = "10m", now: float | None = None) -> list[tuple[float, float]]:
        """(ts, value) points of the last `window` (see WINDOWS), oldest first."""
        span = WINDOWS.get(window)
        if span is None:
            raise InvalidInput(f"unknown window {window!r}: use one of {', '.join(WINDOWS)}")
        pts = self._fine.all() if span <= self.fine_span else self._coarse_points()
        end = now if now is not None else self.last_ts
        if end is None:
            return []
        return [(round(t, 3), round(v, 3)) for t, v in pts if t > end - span]

    def _coarse_points(self) -> list[tuple[float, float]]:
        """Finished coarse points, then the current one: its finished fine points and the fine one being filled."""
        out = list(self._coarse.points)
        bucket, total, n = self._coarse.pending()
        fine_bucket, fine_total, fine_n = self._fine.pending()
        if fine_n:
            value, where = fine_total / fine_n, fine_bucket - fine_bucket % self._coarse.step
            if n and bucket != where:
                out.append((bucket, total / n))
                total, n = 0.0, 0
            bucket, total, n = where, total + value, n + 1
        if n:
            out.append((bucket, total / n))
        return out

    def size(self) -> int:
        """Points held (for the memory bound)."""
        return len(self._fine.points) + len(self._coarse.points)

    @property
    def capacity(self) -> int:
        return (self._fine.points.maxlen or 0) + (self._coarse.points.maxlen or 0)


class EngineLike(Protocol):
    def list_replicas(self) -> list[Any]: ...  # records with .id, .app, .running

    def stats(self, container_id: str) -> dict[str, float]: ...


class StatsSampler:
    """Samples replicas every `interval` seconds and keeps per-app series; `run()` under a supervisor."""

    def __init__(
        self,
        source: Callable[[], Sample] | EngineLike,
        interval: float = 5.0,
        *,
        requests: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
        clock: Callable[[], float] = time.time,
        fine_span: float = 600.0,
        coarse_step: float = 60.0,
        coarse_span: float = 86400.0,
        concurrency: int = 4,
    ) -> None:
        self.source = source
        self.interval = interval
        self.requests = requests
        self._clock = clock
        self._shape = (interval, fine_span, coarse_step, coarse_span)
        self._concurrency = concurrency
        self._pool: ThreadPoolExecutor | None = None  # made on the first round, `concurrency` threads
        self._series: dict[tuple[str, str], RingSeries] = {}
        self._replicas: dict[str, dict[str, dict[str, float]]] = {}  # app -> replica -> latest numbers
        self._net_prev: dict[str, tuple[float, float, float]] = {}  # replica -> (ts, rx, tx)
        self._req_prev: dict[str, tuple[float, float, float, float]] = {}  # app -> (ts, requests, lat sum, lat n)

    # ---- collecting
    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except LbsoloError as e:
                log.warning("stats sample skipped: %s", e.message)
            await asyncio.sleep(max(0.5, self.interval - (time.monotonic() - started)))

    async def tick(self) -> None:
        """One round: replicas' numbers from the engine, request counters from the proxy."""
        sample = await self._collect()
        ts = self._clock()
        self.record(sample, ts)
        if self.requests is not None:
            self.record_requests(self.requests(), ts)
        self._prune(ts)

    async def _collect(self) -> Sample:
        source = self.source
        if callable(source):
            return await asyncio.to_thread(source)
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="lbsolo-stats")
        pool = self._pool
        replicas = [r for r in await loop.run_in_executor(pool, source.list_replicas) if r.running]

        gate = asyncio.Semaphore(self._concurrency)  # no more queued than run: exit waits for none

        async def one(replica: Any) -> dict[str, float] | None:
            async with gate:
                try:
                    return await loop.run_in_executor(pool, source.stats, replica.id)
                except LbsoloError:  # gone between the listing and the stats call
                    return None

        numbers = await asyncio.gather(*(one(r) for r in replicas))
        out: dict[str, dict[str, ReplicaNumbers]] = {}
        for replica, n in zip(replicas, numbers, strict=True):
            if n is not None:
                out.setdefault(replica.app, {})[replica.id] = n
        return out

    def _series_of(self, app: str, metric: str) -> RingSeries:
        key = (app, metric)
        series = self._series.get(key)
        if series is None:
            step, fine_span, coarse_step, coarse_span = self._shape
            series = self._series[key] = RingSeries(step, fine_span, coarse_step, coarse_span)
        return series

    def record(self, sample: Sample, ts: float | None = None) -> None:
        """Add one round of per-replica numbers (cumulative network bytes become bytes/s)."""
        ts = self._clock() if ts is None else ts
        seen: set[str] = set()
        self._replicas = {}
        for app, replicas in sample.items():
            cpu = mem = rx = tx = 0.0
            rated = False
            latest: dict[str, dict[str, float]] = {}
            for rid, n in replicas.items():
                seen.add(rid)
                cpu += float(n.get("cpu_percent", 0.0))
                mem += float(n.get("mem_bytes", 0.0))
                cur_rx, cur_tx = float(n.get("net_rx", 0.0)), float(n.get("net_tx", 0.0))
                row = {k: float(v) for k, v in n.items()}
                prev = self._net_prev.get(rid)
                if prev is not None and ts > prev[0] and cur_rx >= prev[1] and cur_tx >= prev[2]:
                    dt = ts - prev[0]
                    row["net_rx_rate"] = (cur_rx - prev[1]) / dt
                    row["net_tx_rate"] = (cur_tx - prev[2]) / dt
                    rx += row["net_rx_rate"]
                    tx += row["net_tx_rate"]
                    rated = True
                self._net_prev[rid] = (ts, cur_rx, cur_tx)
                latest[rid] = row
            self._replicas[app] = latest
            self._series_of(app, "cpu").add(ts, cpu)
            self._series_of(app, "mem").add(ts, mem)
            if rated:
                self._series_of(app, "net_rx").add(ts, rx)
                self._series_of(app, "net_tx").add(ts, tx)
        for rid in set(self._net_prev) - seen:
            del self._net_prev[rid]

    def record_requests(self, app_metrics: Mapping[str, Mapping[str, Any]], ts: float | None = None) -> None:
        """Requests/s and mean latency per app from the proxy's cumulative counters (ProxyServer.metrics())."""
        ts = self._clock() if ts is None else ts
        for app, m in app_metrics.items():
            count = float(m.get("requests", 0))
            latency = m.get("latency_seconds") or {}
            lat_sum, lat_n = float(latency.get("sum", 0.0)), float(latency.get("count", 0))
            prev = self._req_prev.get(app)
            self._req_prev[app] = (ts, count, lat_sum, lat_n)
            if prev is None or ts <= prev[0] or count < prev[1]:  # first sight, or the proxy restarted
                continue
            self._series_of(app, "rps").add(ts, (count - prev[1]) / (ts - prev[0]))
            if lat_n > prev[3]:
                self._series_of(app, "latency_ms").add(ts, (lat_sum - prev[2]) / (lat_n - prev[3]) * 1000)
            else:
                self._series_of(app, "latency_ms").add(ts, 0.0)

    def _prune(self, ts: float) -> None:
        """Drop apps silent for longer than the longest window (destroyed, or long scaled down)."""
        horizon = ts - max(WINDOWS.values())
        for key in [k for k, s in self._series.items() if s.last_ts is not None and s.last_ts < horizon]:
            del self._series[key]
        for app in [a for a in self._req_prev if self._req_prev[a][0] < horizon]:
            del self._req_prev[app]

    def forget(self, app: str) -> None:
        """An app was destroyed: drop everything about it."""
        for key in [k for k in self._series if k[0] == app]:
            del self._series[key]
        self._replicas.pop(app, None)
        self._req_prev.pop(app, None)

    def on_event(self, event: Event) -> None:
        """A bus listener: forget a destroyed app at once (`bus.add_listener(sampler.on_event)`)."""
        if event.kind == EventKind.APP_DESTROYED and event.app:
            self.forget(event.app)

    # ---- reading
    def series(self, app: str, metric: str, window: str = "10m") -> list[tuple[float, float]]:
        if metric not in METRICS:
            raise InvalidInput(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
        s = self._series.get((app, metric))
        return s.points(window, self._clock()) if s is not None else []

    def latest(self, app: str) -> dict[str, Any]:
        """The newest value of each metric (None if none yet) and each replica's last numbers."""
        out: dict[str, Any] = {}
        for metric in METRICS:
            s = self._series.get((app, metric))
            pts = s.points("10m", self._clock()) if s is not None else []
            out[metric] = pts[-1][1] if pts else None
        out["replicas"] = self._replicas.get(app, {})
        return out

    def size(self) -> int:
        """Points held over all series (bounded by apps x metrics x a series' capacity)."""
        return sum(s.size() for s in self._series.values())
