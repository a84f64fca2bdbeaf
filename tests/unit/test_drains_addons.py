"""Add-on logs in the drains (core_drains_addons): which add-ons are followed, and that a follower
passes each line on once, to each app with a drain, across a restart of its container."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from lbsolo.config import Settings
from lbsolo.core_drains_addons import AddonLogFeed, wanted
from lbsolo.errors import NotFound
from lbsolo.run_logs import LogLine


def test_only_add_ons_attached_to_an_app_with_a_drain_are_wanted():
    attachments = {"db": ["shop", "api"], "cache": ["api"], "idle": []}
    assert wanted(attachments, {"shop"}) == {"db": ["shop"]}
    assert wanted(attachments, {"shop", "api"}) == {"db": ["api", "shop"], "cache": ["api"]}
    assert wanted(attachments, set()) == {}


@dataclass
class Addon:
    name: str
    attachments: dict[str, str]


@dataclass
class FakeState:
    addons: list[Addon] = field(default_factory=list)
    reads: int = 0

    def list_addons(self) -> list[Addon]:
        self.reads += 1
        return list(self.addons)


class FakeLogs:
    def __init__(self) -> None:
        self.lines: list[LogLine] = []

    def tap(self, line: LogLine) -> None:
        self.lines.append(line)


@dataclass
class Ctx:
    settings: Settings
    state: FakeState
    logs: FakeLogs


class Containers:
    """Each add-on's log as (ts, line); a follow gives the lines at or after `since` (inclusive, as
    the engine's), then ends as if the container stopped when `stop` says so, else waits."""

    def __init__(self) -> None:
        self.lines: dict[str, list[tuple[float, str]]] = {}
        self.running: set[str] = set()
        self.follows: list[tuple[str, float]] = []

    async def follow(self, name: str, *, since: float) -> Any:
        self.follows.append((name, since))
        if name not in self.running:
            raise NotFound(f"add-on {name} has no container")
        sent = 0
        while name in self.running:
            for ts, text in [x for x in self.lines.get(name, []) if x[0] >= since][sent:]:
                sent += 1
                yield {"ts": ts, "line": text, "replica": "abcdef123456"}
            await asyncio.sleep(0.01)


def test_lines_go_to_each_drained_app_once_across_a_container_restart(tmp_path):
    async def scenario() -> None:
        state = FakeState([Addon("db", {"shop": "DATABASE_URL", "api": "DB_URL"}), Addon("cache", {"web": "R"})])
        ctx = Ctx(Settings(home=tmp_path, drains_addon_poll=0.05), state, FakeLogs())
        containers = Containers()
        containers.running = {"db", "cache"}
        containers.lines["db"] = [(1.0, "ready"), (2.0, "checkpoint")]
        drained = {"shop"}
        feed = AddonLogFeed(ctx, containers.follow, lambda: drained)  # type: ignore[arg-type]
        feed._last["db"] = 0.5  # followed before: from its last line on
        task = asyncio.create_task(feed.run_forever())
        await asyncio.sleep(0.2)
        assert [(x.app, x.process, x.line) for x in ctx.logs.lines] == [
            ("shop", "addon.db", "ready"),
            ("shop", "addon.db", "checkpoint"),
        ]
        assert "cache" not in feed.followers  # its app has no drain
        # The container stops and comes back with a new line: only the new line is passed on.
        containers.running.discard("db")
        await asyncio.sleep(0.1)
        containers.lines["db"].append((3.0, "restarted"))
        containers.running.add("db")
        drained.add("api")
        await asyncio.sleep(0.3)
        got = [(x.app, x.line) for x in ctx.logs.lines]
        assert got[2:] == [("api", "restarted"), ("shop", "restarted")]
        # The drains go: the follower stops, and nothing more is read of the state.
        drained.clear()
        await asyncio.sleep(0.1)
        assert feed.followers == {}
        reads = state.reads
        await asyncio.sleep(0.2)
        assert state.reads == reads
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
