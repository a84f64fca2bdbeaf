"""The log collector follows replicas on the loop, and in a thread only when the loop cannot."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

from lbsolo.errors import EngineError
from lbsolo.run_logs import LogCollector, LogStore


def test_replicas_are_followed_by_tasks_not_threads(tmp_path, run):
    async def follow_async(replica_id: str, since: float | None) -> AsyncIterator[str]:
        for i in range(3):
            yield f"{replica_id} line {i}"

    def follow(replica_id: str, since: float | None) -> Iterator[str]:
        raise AssertionError("no thread should follow here")

    async def main() -> None:
        store = LogStore(tmp_path)
        collector = LogCollector(store, follow, follow_async=follow_async)
        before = threading.active_count()
        for i in range(20):
            collector.watch(f"c{i}", f"app{i}", "v1", "web", f"app{i}.web.1", None)
        assert threading.active_count() == before
        collector.watch("c0", "app0", "v1", "web", "app0.web.1", None)  # already followed: nothing new
        await asyncio.sleep(0.05)
        await store.flush()
        assert [entry.line for entry in store.read("app7")] == [f"c7 line {i}" for i in range(3)]
        collector.prune()  # their streams ended: forgotten
        assert not collector._tasks

    run(main)


def test_a_replica_the_loop_cannot_follow_gets_a_thread(tmp_path, run):
    async def follow_async(replica_id: str, since: float | None) -> AsyncIterator[str]:
        raise EngineError("the engine is not on a unix socket")
        yield ""  # pragma: no cover

    def follow(replica_id: str, since: float | None) -> Iterator[str]:
        yield "from a thread"

    async def main() -> None:
        store = LogStore(tmp_path)
        collector = LogCollector(store, follow, follow_async=follow_async)
        collector.watch("c1", "shop", "v1", "web", "shop.web.1", None)
        for _ in range(100):
            await asyncio.sleep(0.01)
            await store.flush()
            if store.read("shop"):
                break
        assert [entry.line for entry in store.read("shop")] == ["from a thread"]

    run(main)
