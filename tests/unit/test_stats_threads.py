"""The sampler's engine calls block (about a second each on Docker); they must not take the
threads the rest of the daemon borrows with `asyncio.to_thread` (state writes, engine calls of
a rollout). With 200 replicas a round never ends, so sharing the pool slowed every deploy."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from lbsolo.run_stats import StatsSampler


class SlowEngine:
    def __init__(self, replicas: int, seconds: float) -> None:
        self.replicas = [SimpleNamespace(id=f"r{i}", app=f"app{i}", running=True) for i in range(replicas)]
        self.seconds = seconds
        self.threads: set[str] = set()

    def list_replicas(self) -> list[SimpleNamespace]:
        return self.replicas

    def stats(self, container_id: str) -> dict[str, float]:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        return {"cpu_percent": 1.0, "mem_bytes": 1.0, "net_rx": 0.0, "net_tx": 0.0}


def test_a_round_of_slow_stats_leaves_the_default_pool_free(run):
    engine = SlowEngine(replicas=12, seconds=0.3)
    sampler = StatsSampler(engine, interval=5, concurrency=4)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(4))  # as small as the sampler's share
        tick = asyncio.create_task(sampler.tick())
        await asyncio.sleep(0.05)  # the round is under way: four calls blocked in the engine
        started = time.monotonic()
        await asyncio.to_thread(lambda: None)
        waited = time.monotonic() - started
        assert not tick.done()
        await tick
        assert waited < 0.1, f"a to_thread call waited {waited:.2f} s behind the stats round"
        assert len(sampler.latest("app11")["replicas"]) == 1  # every replica was sampled
        assert engine.threads and all(name.startswith("lbsolo-stats") for name in engine.threads)

    run(scenario)
