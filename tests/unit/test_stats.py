"""Metrics over time with a fake clock and fake samplers: downsampling, rates, bounded memory."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from lbsolo.engine import Engine
from lbsolo.errors import EngineError, InvalidInput
from lbsolo.events import EventBus
from lbsolo.run_stats import METRICS, RingSeries, StatsSampler


class Clock:
    def __init__(self, now: float = 1_200_000.0) -> None:  # a multiple of 60: buckets line up
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---- RingSeries ------------------------------------------------------------------------------


def test_fine_window_keeps_ten_minutes_at_the_step():
    s = RingSeries(step=5, fine_span=600, coarse_step=60, coarse_span=86400)
    t0 = 1_200_000.0
    for i in range(200):  # 1000 s of samples
        s.add(t0 + i * 5, float(i))
    pts = s.points("10m")
    assert len(pts) == 120
    assert pts[-1] == (t0 + 199 * 5, 199.0)
    assert pts[0][0] > t0 + 199 * 5 - 600


def test_coarse_window_holds_minute_averages_of_the_fine_points():
    s = RingSeries(step=5, fine_span=600, coarse_step=60, coarse_span=86400)
    t0 = 1_200_000.0
    for i in range(36):  # three minutes: values 0..11, 12..23, 24..35
        s.add(t0 + i * 5, float(i))
    assert s.points("24h") == [(t0, 5.5), (t0 + 60, 17.5), (t0 + 120, 29.5)]
    assert s.points("1h") == s.points("24h")


def test_memory_is_bounded_whatever_the_uptime():
    s = RingSeries(step=5, fine_span=600, coarse_step=60, coarse_span=86400)
    t0 = 1_200_000.0
    for i in range(3 * 86400 // 5):  # three days of samples
        s.add(t0 + i * 5, 1.0)
    assert s.size() <= s.capacity <= 121 + 1441
    day = s.points("24h")
    assert 1430 <= len(day) <= 1441
    assert day[-1][0] - day[0][0] <= 86400
    # Sampling faster than the step still cannot grow it.
    for i in range(10_000):
        s.add(t0 + 3 * 86400 + i * 0.01, 2.0)
    assert s.size() <= s.capacity


def test_windows_follow_the_clock_and_reject_unknown_names():
    s = RingSeries(step=5)
    s.add(1_200_000.0, 1.0)
    assert s.points("10m", now=1_200_000.0 + 599) == [(1_200_000.0, 1.0)]
    assert s.points("10m", now=1_200_000.0 + 601) == []
    assert RingSeries().points("10m") == []
    with pytest.raises(InvalidInput):
        s.points("7d")
    s.add(1_199_000.0, 9.0)  # older than the last sample: ignored
    assert s.points("10m") == [(1_200_000.0, 1.0)]


# ---- StatsSampler ----------------------------------------------------------------------------


def replica(cpu: float, mem: float, rx: float, tx: float) -> dict[str, float]:
    return {"cpu_percent": cpu, "mem_bytes": mem, "mem_limit": 1e9, "net_rx": rx, "net_tx": tx}


class FakeSource:
    """The callable form: app -> replica id -> numbers, scripted per call."""

    def __init__(self, rounds: list[dict[str, dict[str, dict[str, float]]]]) -> None:
        self.rounds = rounds
        self.calls = 0

    def __call__(self) -> dict[str, dict[str, dict[str, float]]]:
        out = self.rounds[min(self.calls, len(self.rounds) - 1)]
        self.calls += 1
        return out


def test_sampler_sums_replicas_per_app_and_turns_bytes_into_rates(run):
    clock = Clock()
    source = FakeSource(
        [
            {"web": {"r1": replica(10, 100, 1000, 500), "r2": replica(30, 300, 0, 0)}},
            {"web": {"r1": replica(20, 100, 6000, 1500), "r2": replica(40, 300, 5000, 0)}},
            # r2 restarted (counters went back), r3 is new: neither has a rate this round
            {"web": {"r1": replica(0, 100, 11000, 2500), "r2": replica(0, 0, 10, 0), "r3": replica(5, 50, 1, 1)}},
        ]
    )
    sampler = StatsSampler(source, interval=5, clock=clock)

    async def scenario() -> None:
        for _ in range(3):
            await sampler.tick()
            clock.now += 5

    run(scenario)
    t0 = 1_200_000.0
    assert sampler.series("web", "cpu") == [(t0, 40.0), (t0 + 5, 60.0), (t0 + 10, 5.0)]
    assert sampler.series("web", "mem") == [(t0, 400.0), (t0 + 5, 400.0), (t0 + 10, 150.0)]
    assert sampler.series("web", "net_rx") == [(t0 + 5, 2000.0), (t0 + 10, 1000.0)]
    assert sampler.series("web", "net_tx") == [(t0 + 5, 200.0), (t0 + 10, 200.0)]
    latest = sampler.latest("web")
    assert latest["cpu"] == 5.0 and latest["rps"] is None
    assert set(latest["replicas"]) == {"r1", "r2", "r3"}
    assert latest["replicas"]["r1"]["net_rx_rate"] == 1000.0
    assert sampler.series("other", "cpu") == []
    with pytest.raises(InvalidInput):
        sampler.series("web", "disk")


def proxy_counters(requests: int, latency_sum: float) -> dict[str, object]:
    return {"requests": requests, "latency_seconds": {"sum": latency_sum, "count": requests, "buckets": []}}


def test_request_rates_come_from_cumulative_proxy_counters(run):
    clock = Clock()
    counters = {"web": proxy_counters(0, 0.0)}
    sampler = StatsSampler(FakeSource([{}]), interval=5, clock=clock, requests=lambda: counters)

    async def scenario() -> None:
        await sampler.tick()  # first sight: a baseline, no point
        for requests, latency in ((50, 0.5), (150, 1.5), (10, 0.1), (20, 0.2)):  # then the proxy restarts
            clock.now += 5
            counters["web"] = proxy_counters(requests, latency)
            await sampler.tick()

    run(scenario)
    t0 = 1_200_000.0
    assert sampler.series("web", "rps") == [(t0 + 5, 10.0), (t0 + 10, 20.0), (t0 + 20, 2.0)]
    assert sampler.series("web", "latency_ms") == [(t0 + 5, 10.0), (t0 + 10, 10.0), (t0 + 20, 10.0)]


def test_record_requests_with_the_proxy_metrics_shape():
    from lbsolo.proxy_metrics import AppStats

    stats = AppStats()
    clock = Clock()
    sampler = StatsSampler(FakeSource([{}]), interval=5, clock=clock)
    sampler.record_requests({"web": stats.to_dict()})
    for _ in range(30):
        stats.observe(200, 100, 200, 0.002)
    clock.now += 10
    sampler.record_requests({"web": stats.to_dict()})
    (point,) = sampler.series("web", "rps")
    assert point == (clock.now, 3.0)
    assert sampler.series("web", "latency_ms") == [(clock.now, 2.0)]


def test_memory_stays_bounded_and_silent_apps_are_dropped(run):
    clock = Clock()
    sampler = StatsSampler(FakeSource([{"a": {"r": replica(1, 1, 0, 0)}}]), interval=5, clock=clock)

    # Two simulated days through record() directly (tick's to_thread per round is slow for 35k rounds).
    for _ in range(2 * 86400 // 5):
        sampler.record({"a": {"r": replica(1, 1, 0, 0)}}, clock.now)
        clock.now += 5
    bound = len(METRICS) * (121 + 1441)
    assert sampler.size() <= bound
    sampler.record({"b": {"r": replica(1, 1, 0, 0)}}, clock.now)
    clock.now += 86400 + 60
    run(lambda: _one_tick(sampler, FakeSource([{"b": {"r": replica(1, 1, 0, 0)}}])))
    assert sampler.series("a", "cpu") == []
    assert sampler.latest("a")["cpu"] is None
    assert sampler.series("b", "cpu")[-1][1] == 1.0
    bus = EventBus()
    bus.add_listener(sampler.on_event)
    bus.emit("app.destroyed", "b")
    assert sampler.series("b", "cpu") == [] and sampler.size() == 0


async def _one_tick(sampler: StatsSampler, source: FakeSource) -> None:
    sampler.source = source
    await sampler.tick()


@dataclass
class FakeReplica:
    id: str
    app: str
    running: bool = True


class FakeEngine:
    """The engine-like form: list_replicas() and a blocking stats(id)."""

    def __init__(self) -> None:
        self.replicas = [FakeReplica("r1", "web"), FakeReplica("r2", "web"), FakeReplica("r3", "db", running=False)]
        self.asked: list[str] = []

    def list_replicas(self) -> list[FakeReplica]:
        return list(self.replicas)

    def stats(self, container_id: str) -> dict[str, float]:
        self.asked.append(container_id)
        if container_id == "r2":
            raise EngineError("stats of r2: not found")
        return replica(12.5, 2048, 0, 0)


def test_sampler_reads_an_engine_and_skips_replicas_that_vanished(run):
    engine = FakeEngine()
    clock = Clock()
    sampler = StatsSampler(engine, interval=5, clock=clock)
    run(sampler.tick)
    assert sorted(engine.asked) == ["r1", "r2"]  # not the stopped one
    assert sampler.series("web", "cpu") == [(clock.now, 12.5)]
    assert sampler.series("db", "cpu") == []


def test_run_loop_samples_until_cancelled(run):
    source = FakeSource([{"web": {"r": replica(1, 1, 0, 0)}}])
    sampler = StatsSampler(source, interval=0.01)

    async def scenario() -> None:
        task = asyncio.create_task(sampler.run())
        while source.calls < 2:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario)


# ---- Engine.stats' arithmetic ----------------------------------------------------------------


def test_engine_stats_numbers_cgroup_v2():
    raw = {
        "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000}, "system_cpu_usage": 200_000_000, "online_cpus": 4},
        "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000}, "system_cpu_usage": 100_000_000},
        "memory_stats": {"usage": 50_000_000, "limit": 1_000_000_000, "stats": {"inactive_file": 10_000_000}},
        "networks": {"eth0": {"rx_bytes": 100, "tx_bytes": 50}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}},
    }
    assert Engine._stats_numbers(raw) == {
        "cpu_percent": 8.0,
        "mem_bytes": 40_000_000.0,
        "mem_limit": 1_000_000_000.0,
        "net_rx": 101.0,
        "net_tx": 52.0,
    }


def test_engine_stats_numbers_cgroup_v1_and_stopped():
    raw = {
        "cpu_stats": {"cpu_usage": {"total_usage": 200, "percpu_usage": [1, 1]}, "system_cpu_usage": 1000},
        "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 500},
        "memory_stats": {"usage": 1000, "limit": 4000, "stats": {"total_inactive_file": 400}},
    }
    assert Engine._stats_numbers(raw) == {
        "cpu_percent": 40.0,
        "mem_bytes": 600.0,
        "mem_limit": 4000.0,
        "net_rx": 0.0,
        "net_tx": 0.0,
    }
    stopped = {"cpu_stats": {"cpu_usage": {}}, "precpu_stats": {}, "memory_stats": {}}
    assert Engine._stats_numbers(stopped) == dict.fromkeys(
        ("cpu_percent", "mem_bytes", "mem_limit", "net_rx", "net_tx"), 0.0
    )
