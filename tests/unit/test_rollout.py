"""The rollout state machine, with a hand-written fake engine and ingress and real sockets.

A rollout must move traffic only after the new replicas answer their health check, then drain
and stop the old ones, saving each named step; a release that never gets healthy is marked
failed and the old replicas keep serving, untouched.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lbsolo.build import Builder
from lbsolo.config import Settings
from lbsolo.core import Platform
from lbsolo.errors import DeployFailed, NotFound
from lbsolo.models import ONE_OFF, App, DeployStep, Release, ReleaseStatus, Replica
from lbsolo.proxy import Route, Target
from lbsolo.state import State


class FakeEngine:
    """Containers as records; each new web replica 'listens' on the port the test chose."""

    instance = "test"

    def __init__(self, port_for_release: dict[int, int]) -> None:
        self.port_for_release = port_for_release
        self.replicas: dict[str, Replica] = {}
        self.calls: list[str] = []
        self._n = 0

    def ensure_network(self, name: str) -> None:
        pass

    def ensure_volume(self, app: str, name: str) -> str:
        return name

    def tag_image(self, image: str, repository: str, tag: str) -> None:
        pass

    def run(self, *, app: str, release: int, process: str, name: str, port: int | None, **_: Any) -> Replica:
        self._n += 1
        r = Replica(
            id=f"c{self._n}", name=name, app=app, release=release, process=process, running=True,
            status="running", host_port=self.port_for_release[release] if port else None, started_at=str(self._n),
        )  # fmt: skip
        self.replicas[r.id] = r
        self.calls.append(f"run v{release}")
        return r

    def list_replicas(self, app: str | None = None) -> list[Replica]:
        return [r for r in self.replicas.values() if app is None or r.app == app]

    def stop_and_remove(self, container_id: str, timeout: int) -> None:
        r = self.replicas.pop(container_id, None)
        if r is not None:
            self.calls.append(f"stop v{r.release}")

    def logs(self, container_id: str, tail: int = 200) -> str:
        return "fake logs"

    def follow_logs(self, container_id: str, since: float | None = None) -> Iterator[str]:
        return iter(())

    def app_images(self, app: str | None = None) -> list[dict[str, Any]]:
        return []

    def remove_network(self, name: str) -> None:
        pass


class FakeIngress:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.routes: dict[str, Route] = {}

    def publish(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        targets = ",".join(str(t.port) for r in routes.values() for t in r.targets)
        self.engine.calls.append(f"publish {targets}")

    async def drain(self, targets: Iterable[Target], timeout: float) -> bool:
        self.engine.calls.append(f"drain {','.join(str(t.port) for t in targets)}")
        return True

    def metrics(self) -> dict[str, dict[str, Any]]:
        return {}

    def prometheus(self) -> str:
        return ""

    def last_requests(self) -> dict[str, float]:
        return {}

    def wake_failed(self, app: str, message: str) -> None:
        pass


class StepRecorder(State):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.steps: list[str | None] = []

    def save_release(self, release: Release) -> None:
        self.steps.append(release.step and str(release.step))
        super().save_release(release)


async def _http_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _platform(
    tmp_path, ports: dict[int, int], engine: FakeEngine | None = None
) -> tuple[Platform, FakeEngine, FakeIngress, StepRecorder]:
    settings = Settings.load(home=tmp_path, deploy_timeout=1.5, drain_timeout=1.0)
    state = StepRecorder(tmp_path / "state.json")
    engine = engine or FakeEngine(ports)
    ingress = FakeIngress(engine)
    builder = Builder(engine, memory="1g", timeout=10)  # type: ignore[arg-type]
    platform = Platform(settings, state, engine, builder, ingress)  # type: ignore[arg-type]
    await platform.create_app("web1")
    return platform, engine, ingress, state


async def _release(platform: Platform, image: str) -> Release:
    from lbsolo.build import LogBuffer

    return await platform.rollouts.release(
        "web1", LogBuffer(), description="test", image=image, processes={}, health={"path": "/", "interval": 0.1}
    )


def test_successful_rollout_swaps_then_drains_then_stops_the_old_replica(tmp_path, run):
    async def main() -> None:
        server, port = await _http_server()
        try:
            platform, engine, _, state = await _platform(tmp_path, {1: port, 2: port})
            await _release(platform, "sha256:one")
            engine.calls.clear()
            state.steps.clear()
            release = await _release(platform, "sha256:two")
            assert release.status is ReleaseStatus.ACTIVE
            # traffic moves first, then the old replica drains, then it stops: never the other way round
            assert engine.calls == ["run v2", f"publish {port}", f"drain {port}", "stop v1"]
            expected = [None, "start", "wait_ready", "swap", "drain", "stop_old", "done"]
            assert state.steps[: len(expected)] == expected
            assert [r.release for r in engine.list_replicas()] == [2]
            app = state.get_app("web1")
            assert app.release == 2
            assert state.get_release("web1", 1).status is ReleaseStatus.SUPERSEDED
            platform.collector.prune()
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_release_that_never_gets_healthy_is_failed_and_the_old_one_is_untouched(tmp_path, run):
    async def main() -> None:
        server, port = await _http_server()
        try:
            platform, engine, ingress, state = await _platform(tmp_path, {1: port, 2: _closed_port()})
            await _release(platform, "sha256:one")
            before = dict(ingress.routes)
            engine.calls.clear()
            with pytest.raises(DeployFailed, match="previous release keeps serving"):
                await _release(platform, "sha256:two")
            assert ingress.routes == before  # no swap happened
            assert engine.calls == ["run v2", "stop v2"]  # only the new replica went away
            assert [r.release for r in engine.list_replicas()] == [1]
            failed = state.get_release("web1", 2)
            assert failed.status is ReleaseStatus.FAILED and failed.step is DeployStep.WAIT_READY
            assert state.get_app("web1").release == 1
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_recover_marks_interrupted_rollouts_failed(tmp_path, run):
    async def main() -> None:
        platform, _, _, state = await _platform(tmp_path, {})
        state.save_app(App("web1", release=1))
        state.save_release(Release("web1", 1, "sha256:a", status=ReleaseStatus.ACTIVE))
        state.save_release(Release("web1", 2, "sha256:b", status=ReleaseStatus.DEPLOYING, step=DeployStep.WAIT_READY))
        assert await platform.recover() == 1
        assert state.get_release("web1", 2).status is ReleaseStatus.FAILED
        assert state.get_release("web1", 1).status is ReleaseStatus.ACTIVE

    run(main)


def test_recover_finishes_a_rollout_interrupted_after_its_swap(tmp_path, run):
    async def main() -> None:
        platform, _, _, state = await _platform(tmp_path, {})
        state.save_app(App("web1", release=1, config={"A": "1", "TOKEN": "old"}, secrets=["TOKEN"]))
        state.save_release(Release("web1", 1, "sha256:a", status=ReleaseStatus.ACTIVE, config={"A": "1"}))
        new = Release(
            "web1", 2, "sha256:b", status=ReleaseStatus.DEPLOYING, step=DeployStep.DRAIN,
            config={"A": "2", "TOKEN": "new", "KEY": "k"}, secrets=["KEY"],
        )  # fmt: skip
        state.save_release(new)
        assert await platform.recover() == 0
        done = state.get_release("web1", 2)
        assert done.status is ReleaseStatus.ACTIVE and done.step is DeployStep.DONE
        assert state.get_release("web1", 1).status is ReleaseStatus.SUPERSEDED
        app = state.get_app("web1")
        assert app.release == 2 and app.config == {"A": "2", "TOKEN": "new", "KEY": "k"}
        assert app.secrets == ["KEY", "TOKEN"]  # the release's secret keys, and the app's own still there

    run(main)


class HeldEngine(FakeEngine):
    """A listing asked to be held is taken at once, then held until the test lets it return.

    `hold(None)` holds the reconcile pass's next full listing; `hold("web1")` the next listing
    of that app's replicas (a rollout asks for it right after its swap).
    """

    def __init__(self, port_for_release: dict[int, int]) -> None:
        super().__init__(port_for_release)
        self._holds: dict[str | None, tuple[threading.Event, threading.Event]] = {}

    def hold(self, app: str | None) -> tuple[threading.Event, threading.Event]:
        """(listed, go): set when the listing was taken; set it to let the listing return."""
        self._holds[app] = (threading.Event(), threading.Event())
        return self._holds[app]

    def list_replicas(self, app: str | None = None) -> list[Replica]:
        listing = super().list_replicas(app)
        held = self._holds.pop(app, None)
        if held is not None:
            held[0].set()
            held[1].wait(5)
        return listing


@dataclass
class Scene:
    platform: Platform
    engine: HeldEngine
    ingress: FakeIngress
    state: StepRecorder
    port2: int  # where v2's replica answers

    def serves_v2_only(self) -> bool:
        return self.ingress.routes["web1"].targets == (Target("127.0.0.1", self.port2),) and [
            r.release for r in self.engine.list_replicas() if not r.one_off
        ] == [2]


async def _serving_v1(tmp_path, test) -> None:
    """Run `test(scene)` with web1 serving v1, and a server ready to answer for v2."""
    one, port1 = await _http_server()
    two, port2 = await _http_server()
    try:
        engine = HeldEngine({1: port1, 2: port2})
        platform, _, ingress, state = await _platform(tmp_path, {}, engine)
        await _release(platform, "sha256:one")
        await test(Scene(platform, engine, ingress, state, port2))
    finally:
        for server in (one, two):
            server.close()
            await server.wait_closed()


def test_a_reconcile_pass_that_read_before_a_rollout_began_leaves_that_app_to_it(tmp_path, run):
    # The pass read the app at v1 and listed v1's replica; the rollout to v2 then ran to the end
    # while the listing was held. Routing to what the pass saw would send traffic to v1's
    # stopped replica (a 502) until the next pass.
    async def test(scene: Scene) -> None:
        listed, go = scene.engine.hold(None)
        reconciling = asyncio.create_task(scene.platform.reconcile())
        await asyncio.to_thread(listed.wait, 5)
        await _release(scene.platform, "sha256:two")
        await scene.platform.create_app("web2")  # created after the pass read the apps
        go.set()
        assert await reconciling == []
        assert scene.serves_v2_only() and "web2" in scene.ingress.routes

    run(lambda: _serving_v1(tmp_path, test))


def test_a_reconcile_pass_that_began_during_a_rollout_leaves_that_app_to_it(tmp_path, run):
    # The rollout held the app's lock when the pass began and let go of it before the pass
    # looked: the pass read v1 as current and listed both replicas. Acting on that would remove
    # v2's replica and route to v1's, which the rollout has just stopped.
    async def test(scene: Scene) -> None:
        swapped, finish = scene.engine.hold("web1")
        rolling = asyncio.create_task(_release(scene.platform, "sha256:two"))
        await asyncio.to_thread(swapped.wait, 5)
        assert scene.state.steps[-1] == "swap"
        listed, go = scene.engine.hold(None)
        reconciling = asyncio.create_task(scene.platform.reconcile())
        await asyncio.to_thread(listed.wait, 5)
        finish.set()
        await rolling
        go.set()
        assert await reconciling == []
        assert scene.serves_v2_only()

    run(lambda: _serving_v1(tmp_path, test))


def test_a_reconcile_pass_does_not_bring_back_the_route_of_an_app_destroyed_meanwhile(tmp_path, run):
    async def test(scene: Scene) -> None:
        scene.platform.ctx.locks.clear()  # as after a daemon restart: no app has a lock yet
        listed, go = scene.engine.hold(None)
        reconciling = asyncio.create_task(scene.platform.reconcile())
        await asyncio.to_thread(listed.wait, 5)
        await scene.platform.destroy_app("web1")
        go.set()
        assert await reconciling == []
        assert "web1" not in scene.ingress.routes

    run(lambda: _serving_v1(tmp_path, test))


def test_a_rollout_leaves_one_off_containers_to_whoever_started_them(tmp_path, run):
    async def test(scene: Scene) -> None:
        one_off = Replica(
            id="o1", name="brave_euler", app="web1", release=None, process=ONE_OFF, running=True,
            status="running", host_port=None,
        )  # fmt: skip
        scene.engine.replicas[one_off.id] = one_off
        await _release(scene.platform, "sha256:two")
        assert scene.serves_v2_only() and one_off.id in scene.engine.replicas
        assert await scene.platform.reconcile() == [] and one_off.id in scene.engine.replicas

    run(lambda: _serving_v1(tmp_path, test))


def test_reading_the_webhook_secret_is_no_change_of_the_app(tmp_path, run):
    # Webhook calls are unauthenticated until their signature is checked: they must not make
    # reconcile passes leave the app alone.
    async def test(scene: Scene) -> None:
        marks = scene.platform.ctx.lock_marks()
        with pytest.raises(NotFound):
            await scene.platform.hook_secret("web1", create=False)
        assert not scene.platform.ctx.unsettled("web1", marks)
        secret = await scene.platform.hook_secret("web1")
        assert await scene.platform.hook_secret("web1", create=False) == secret

    run(lambda: _serving_v1(tmp_path, test))


def test_gc_leaves_build_leftovers_while_another_build_is_queued_or_running(tmp_path, run):
    async def main() -> None:
        platform, engine, _, _ = await _platform(tmp_path, {})
        pruned: list[int] = []
        engine.prune_build_leftovers = lambda: pruned.append(1) or 0  # type: ignore[method-assign]
        platform.builder.jobs["b1"] = object()  # type: ignore[assignment]  # another app's build, queued
        await platform.gc("web1")
        assert pruned == []  # its intermediate layers would have looked like leftovers
        platform.builder.jobs.clear()
        await platform.gc("web1")
        assert pruned == [1]

    run(main)
