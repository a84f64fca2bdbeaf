"""Add-ons observed, over hand-written fakes: the engine's log stamps read to the nanosecond; an
add-on's log read (tail, grep over the whole log keeping the last matches, shaped like an app's
lines), followed from right after the last line read (no repeat, no gap, grep, the engine's log
closed when the reader leaves, a slow reader holding back the reading thread); CPU/memory of
several add-ons read at once, a second reading only without a recent one, a slow engine cut
off; and the CLI's `logs` falling back from an app to an add-on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbsolo.addon_kinds import KINDS
from lbsolo.cli import verbs_apps
from lbsolo.config import Settings
from lbsolo.core_addon_observe import AddonObserve
from lbsolo.core_context import CoreContext
from lbsolo.engine_docker_service_logs import stamped
from lbsolo.errors import APIError, Conflict, EngineError, LbsoloError, NotFound
from lbsolo.events import EventBus
from lbsolo.models_addons import Addon, AddonStatus
from lbsolo.run_logs import LogStore
from lbsolo.state import State

S = 1_000_000_000


def test_the_engines_stamp_is_read_to_the_nanosecond():
    assert stamped("2024-05-01T12:34:56.123456789Z Ready to accept connections") == (
        1714566896 * S + 123456789,
        "Ready to accept connections",
    )
    assert stamped("2024-05-01T12:34:56.5Z half") == (1714566896 * S + 500_000_000, "half")  # zeros trimmed
    assert stamped("2024-05-01T12:34:56Z whole\r") == (1714566896 * S, "whole")
    assert stamped("2024-05-01T12:34:56Z ") == (1714566896 * S, "")
    before = time.time_ns()
    ns, text = stamped("no stamp here")
    assert text == "no stamp here" and ns >= before  # kept whole, stamped now
    assert stamped("2024-05-01T12:34:56.12x4Z odd")[1] == "2024-05-01T12:34:56.12x4Z odd"


class FakeLog:
    """A container's log: the lines there are, then (following) lines fed from the test."""

    def __init__(self, lines: list[tuple[int, str]], follow: bool) -> None:
        self.lines = lines
        self.follow = follow
        self.fed: list[tuple[int, str] | None] = []
        self.more = threading.Condition()
        self.closed = threading.Event()
        self.taken = 0  # lines handed out

    def feed(self, item: tuple[int, str] | None) -> None:
        with self.more:
            self.fed.append(item)
            self.more.notify_all()

    def __iter__(self) -> Iterator[tuple[int, str]]:
        for line in self.lines:
            if self.closed.is_set():
                return
            self.taken += 1
            yield line
        while self.follow:
            with self.more:
                while not self.fed and not self.closed.is_set():
                    self.more.wait(0.05)
                if self.closed.is_set():
                    return
                item = self.fed.pop(0)
            if item is None:
                return
            self.taken += 1
            yield item

    def close(self) -> None:
        self.closed.set()


class FakeServices:
    def __init__(self, lines: list[tuple[int, str]]) -> None:
        self.lines = lines
        self.asked: list[tuple[str, int | None, float | None, bool]] = []
        self.opened: list[FakeLog] = []
        self.container = True

    def find_service(self, service: str) -> dict[str, Any] | None:
        if not self.container:
            return None
        return {"id": "c0ffee" * 10, "name": service, "image": "redis:7", "running": True, "state": "running",
                "networks": []}  # fmt: skip

    def service_logs(
        self, service: str, tail: int | None = 200, since: float | None = None, follow: bool = False
    ) -> FakeLog:
        self.asked.append((service, tail, since, follow))
        lines = [x for x in self.lines if since is None or x[0] >= since * S]
        log = FakeLog(lines if tail is None else lines[-tail:] if tail else [], follow)
        self.opened.append(log)
        return log


class FakeEngine:
    """One-shot readings: `delay` seconds each; the CPU of a reading counts the ones before it."""

    instance = "test"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.reads: list[str] = []
        self.slow: set[str] = set()

    def follow_logs(self, *_: Any) -> Iterator[str]:
        return iter(())

    def stats(self, container_id: str) -> dict[str, float]:
        if container_id == "gone":
            raise EngineError("stats of gone: not found")
        time.sleep(2 if container_id in self.slow else self.delay)
        self.reads.append(container_id)
        n = self.reads.count(container_id)
        return {"cpu_percent": 0.0 if n == 1 else 12.5, "mem_bytes": 8e6, "mem_limit": 4e9, "net_rx": 1, "net_tx": 2}


def make(tmp_path: Path, lines: list[tuple[int, str]], engine: FakeEngine | None = None, **kw: Any):
    settings = Settings.load(home=tmp_path / "home")
    state = State(tmp_path / "state.json")
    addon = Addon("cache", "redis", "7", credentials=KINDS["redis"].credentials("cache").to_dict())
    addon.status = AddonStatus.RUNNING
    state.create_addon(addon)
    ctx = CoreContext(settings, state, engine or FakeEngine(), None, EventBus(), LogStore(tmp_path / "logs"))  # type: ignore[arg-type]
    services = FakeServices(lines)
    return AddonObserve(ctx, services, **kw), services  # type: ignore[arg-type]


LINES = [(1000 * S + i, f"line {i}{' ready' if i % 3 == 0 else ''}") for i in range(10)]


def test_an_addons_log_is_read_like_an_apps_lines(tmp_path, run):
    observe, services = make(tmp_path, LINES)

    async def main() -> None:
        read = await observe.read_logs("cache", tail=2)
        assert [r["line"] for r in read.lines] == ["line 8", "line 9 ready"]
        first = read.lines[0]
        assert (first["app"], first["process"], first["release"], first["replica"]) == (
            "cache", "redis", "7", "c0ffeec0ffee",
        )  # fmt: skip
        assert first["ts"] == pytest.approx(1000.000000008)
        assert read.last_ns == LINES[-1][0]
        assert services.asked[-1] == ("cache", 2, None, False)  # the engine's own tail

        read = await observe.read_logs("cache", tail=2, grep="ready")
        assert [r["line"] for r in read.lines] == ["line 6 ready", "line 9 ready"]
        assert services.asked[-1][1] is None  # every line read: the last two that match
        read = await observe.read_logs("cache", tail=5, grep="line 1")
        assert [r["line"] for r in read.lines] == ["line 1"] and read.last_ns == LINES[-1][0]
        assert all(log.closed.is_set() for log in services.opened)

        with pytest.raises(NotFound):
            await observe.read_logs("nope")
        services.container = False
        with pytest.raises(Conflict, match="no container"):
            await observe.read_logs("cache")

    run(main)


def test_a_follow_goes_on_right_after_the_last_line_read_and_closes_the_log_when_left(tmp_path, run):
    observe, services = make(tmp_path, LINES)

    async def main() -> None:
        read = await observe.read_logs("cache", tail=1, grep="ready")
        following = observe.follow_logs("cache", after=read, grep="ready")
        got = asyncio.ensure_future(following.__anext__())
        while not any(log.follow for log in services.opened):
            await asyncio.sleep(0.01)
        log = services.opened[-1]
        # Asked from just before the last line read (the engine's since is inclusive)...
        assert services.asked[-1][2] == pytest.approx(LINES[-1][0] / S - 1e-6)
        # ... so it sees that line again, and skips it; a line not matching is skipped too.
        log.feed((LINES[-1][0] + 5, "new, not a match"))
        log.feed((LINES[-1][0] + 9, "new and ready"))
        row = await asyncio.wait_for(got, 2)
        assert row["line"] == "new and ready" and row["process"] == "redis"
        await following.aclose()  # the reader left
        assert log.closed.wait(2)

        # From nothing read: from `since` on, everything.
        following = observe.follow_logs("cache", since=1000.5)
        got = asyncio.ensure_future(following.__anext__())
        while len([x for x in services.opened if x.follow]) < 2:
            await asyncio.sleep(0.01)
        assert services.asked[-1][2] == 1000.5
        services.opened[-1].feed((2000 * S, "later"))
        assert (await asyncio.wait_for(got, 2))["line"] == "later"
        services.opened[-1].feed(None)  # the container stopped: the follow ends
        assert [r async for r in following] == []

    run(main)


def test_a_slow_follower_holds_the_reading_thread_back(tmp_path, run, monkeypatch):
    monkeypatch.setattr("lbsolo.core_addon_observe.FOLLOW_WINDOW", 5)
    many = [(3000 * S + i, f"burst {i}") for i in range(100)]
    observe, services = make(tmp_path, many)

    async def main() -> None:
        following = observe.follow_logs("cache")
        first = await asyncio.wait_for(following.__anext__(), 2)
        assert first["line"] == "burst 0"
        await asyncio.sleep(0.3)
        log = services.opened[-1]
        assert log.taken <= 8  # the window (5), the one taken, and the one the thread waits to hand over
        rest = [(await following.__anext__())["line"] for _ in range(99)]
        assert rest[-1] == "burst 99"
        await following.aclose()
        assert log.closed.wait(2)

    run(main)


def test_cpu_and_memory_of_several_addons_are_read_at_once(tmp_path, run):
    engine = FakeEngine(delay=0.2)
    clock = [100.0]
    observe, _ = make(tmp_path, [], engine, clock=lambda: clock[0], prime_gap=0.05, timeout=1.0)

    async def main() -> None:
        started = time.monotonic()
        got = await observe.stats(["a", None, "b", "c", "gone"])
        elapsed = time.monotonic() - started
        # Four threads: a, b, c (and gone) together, twice (no earlier reading), plus the gap.
        assert elapsed < 0.9, elapsed
        assert got[1] is None and got[4] is None
        assert got[0] == {"cpu_percent": 12.5, "mem_bytes": 8e6, "mem_limit": 4e9}  # measured against the first
        assert sorted(engine.reads) == ["a", "a", "b", "b", "c", "c"]

        clock[0] += 5  # a recent reading: one more is enough
        await observe.stats(["a"])
        assert engine.reads.count("a") == 3
        clock[0] += 60  # an old one: read twice again
        await observe.stats(["a"])
        assert engine.reads.count("a") == 5

        engine.slow.add("b")
        started = time.monotonic()
        got = await observe.stats(["a", "b"])
        assert got[0] is not None and got[1] is None and time.monotonic() - started < 1.5  # cut off, not waited for
        assert await observe.stats([None, None]) == [None, None]
        observe.close()

    run(main)


class FakeClient:
    """The API client as `lbsolo logs` uses it: apps by name, add-ons by name."""

    def __init__(self, apps: dict[str, list[dict[str, Any]]], addons: dict[str, list[dict[str, Any]]]) -> None:
        self.apps = apps
        self.addons = addons
        self.asked: list[tuple[str, str, dict[str, Any]]] = []

    def _app(self, name: str) -> list[dict[str, Any]]:
        if name not in self.apps:
            raise APIError(f"unknown app {name!r} (create it with: lbsolo apps:create {name})", "not_found", 404)
        return self.apps[name]

    def _addon(self, name: str) -> list[dict[str, Any]]:
        if name not in self.addons:
            raise APIError(f"no add-on {name!r} (see: lbsolo addons)", "not_found", 404)
        return self.addons[name]

    def logs(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        self.asked.append(("app", name, params))
        return self._app(name)

    def follow_logs(self, name: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.asked.append(("app-follow", name, params))
        yield from self._app(name)

    def addon(self, name: str) -> dict[str, Any]:
        self._addon(name)
        return {"name": name}

    def addon_logs(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        self.asked.append(("addon", name, params))
        return self._addon(name)

    def follow_addon_logs(self, name: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.asked.append(("addon-follow", name, params))
        yield from self._addon(name)


@pytest.mark.parametrize("follow", [False, True])
def test_logs_of_a_name_that_is_no_app_are_the_addons_and_of_neither_the_apps_error(follow):
    c = FakeClient({"shop": [{"line": "app"}]}, {"cache": [{"line": "redis"}, {"line": "more"}]})
    params = {"tail": 5, "grep": "x", "since": 1.0}
    assert list(verbs_apps._log_rows(c, "shop", params, follow)) == [{"line": "app"}]  # type: ignore[arg-type]
    assert [r["line"] for r in verbs_apps._log_rows(c, "cache", params, follow)] == ["redis", "more"]  # type: ignore[arg-type]
    assert c.asked[-1] == ("addon-follow" if follow else "addon", "cache", params)

    with pytest.raises(APIError, match="unknown app 'nope'"):
        list(verbs_apps._log_rows(c, "nope", params, follow))  # type: ignore[arg-type]
    with pytest.raises(LbsoloError, match="cache is an add-on: --process"):
        list(verbs_apps._log_rows(c, "cache", {**params, "process": "web"}, follow))  # type: ignore[arg-type]
    with pytest.raises(APIError, match="unknown app 'nope'"):
        list(verbs_apps._log_rows(c, "nope", {"process": "web"}, follow))  # type: ignore[arg-type]
