"""What lbsolo writes to disk is bounded: the access log rotates by size, old builds are forgotten.

Issue 11, reliability: access.log reached 830 MB in an afternoon; build records and logs were
kept for ever.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

import lbsolo.run_logs as logs
from lbsolo.build import Builder, LogBuffer, builds_to_forget
from lbsolo.config import Settings
from lbsolo.errors import InvalidInput
from lbsolo.models import Build, BuildStatus
from lbsolo.run_logs import AccessLog, LogLine, LogStore, rotate
from lbsolo.state import State


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_rotate_keeps_the_newest_old_files(tmp_path: Path):
    path = tmp_path / "x.log"
    for i in range(5):
        path.write_text(f"{i}\n")
        rotate(path, 2)
    assert _names(tmp_path) == ["x.log.1", "x.log.2"]
    assert [(tmp_path / f"x.log.{i}").read_text() for i in (1, 2)] == ["4\n", "3\n"]
    path.write_text("5\n")
    rotate(path, 0)  # keeping none: the file just goes
    assert not path.exists()


def test_the_access_log_rotates_by_size_off_the_loop(tmp_path: Path, monkeypatch, run):
    threads: list[str] = []

    def recording_rotate(path: Path, keep: int) -> None:
        threads.append(threading.current_thread().name)
        rotate(path, keep)

    monkeypatch.setattr(logs, "rotate", recording_rotate)
    path = tmp_path / "logs" / "access.log"
    access = AccessLog(path, max_bytes=10_000, keep=2)
    line = json.dumps({"host": "app.lbsolo.localhost", "path": "/" + "x" * 80, "status": 200}) + "\n"

    async def scenario() -> None:
        for _ in range(40):  # ~40 flushes of ~4 KB: the file passes 10 KB many times over
            access.write(line * 40)
            await access.flush()
        access.write(line)
        task = asyncio.create_task(access.flush_forever(interval=0.01))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert threads and threading.current_thread().name not in threads  # the loop never rotated

    run(scenario)
    assert _names(path.parent) == ["access.log", "access.log.1", "access.log.2"]
    for p in path.parent.iterdir():
        assert p.stat().st_size <= 10_000 + len(line) * 40
        assert all(json.loads(raw)["status"] == 200 for raw in p.read_text().splitlines())  # whole lines only


def test_the_access_log_drops_lines_rather_than_growing_in_memory(tmp_path: Path):
    access = AccessLog(tmp_path / "access.log", max_pending=1000)
    for _ in range(100):
        access.write("x" * 99 + "\n")
    assert access.dropped == 89 and sum(map(len, access._pending)) <= 1100


def test_access_log_settings():
    s = Settings.load()
    assert s.access_log_max_bytes > 0 and s.access_log_keep >= 1 and s.keep_builds >= 1
    off = Settings.load(access_log_max_bytes=0)
    assert off.access_log_max_bytes == 0  # the daemon then writes no access log at all


def test_app_logs_rotate_with_the_same_helper(tmp_path: Path, monkeypatch):
    rotated: list[tuple[Path, int]] = []
    monkeypatch.setattr(logs, "rotate", lambda path, keep: rotated.append((path, keep)))
    store = LogStore(tmp_path, max_bytes=100, keep=2)
    store._write({"shop": [LogLine(1.0, "shop", "v1", "web", "web.1", "y" * 200)]})
    assert rotated == [(tmp_path / "shop.log", 2)]


def _build(i: int, app: str = "shop") -> Build:
    return Build(id=f"{app[0]}{i:03d}", app=app, status=BuildStatus.SUCCEEDED, created_at=1000.0 + i)


def test_builds_to_forget_is_the_oldest_beyond_keep_never_a_busy_one():
    builds = [_build(i, "bar") for i in (3, 1, 4, 0, 2)]
    assert [b.id for b in builds_to_forget(builds, 3)] == ["b000", "b001"]
    assert [b.id for b in builds_to_forget(builds, 3, busy={"b000"})] == ["b001"]
    assert [b.id for b in builds_to_forget(builds, 0)] == ["b000", "b001", "b002", "b003"]  # the newest stays
    assert builds_to_forget(builds, 10) == []


def test_a_new_build_forgets_the_apps_oldest_records_and_logs(tmp_path: Path):
    state = State(tmp_path / "state.json")
    log_dir = tmp_path / "logs" / "builds"
    log_dir.mkdir(parents=True)
    for i in range(30):
        state.save_build(_build(i))
        (log_dir / f"s{i:03d}.log").write_text("step\n")
    state.save_build(_build(0, app="other"))  # another app's builds are not counted
    (log_dir / "o000.log").write_text("not a build of shop\n")
    builder = Builder(
        object(),  # type: ignore[arg-type]  # forgetting builds asks nothing of the engine
        memory="1g",
        timeout=1,
        builds=state.list_builds,
        forget_builds=state.delete_builds,
        log_dir=log_dir,
        keep_builds=5,
    )
    new = _build(30)  # not saved yet, as when its build starts
    forgotten = builder.forget_old_builds(new, busy=["s010"])
    assert len(forgotten) == 25 and "s010" not in forgotten
    kept = [b.id for b in state.list_builds("shop")]
    assert kept == ["s010", "s026", "s027", "s028", "s029"]
    assert _names(log_dir) == ["o000.log", "s010.log", "s026.log", "s027.log", "s028.log", "s029.log"]
    assert [b.id for b in state.list_builds("other")] == ["o000"]
    state.close()


def test_the_builder_forgets_old_builds_as_each_build_starts(tmp_path: Path, run):
    state = State(tmp_path / "state.json")
    for i in range(10):
        state.save_build(_build(i))
    context = tmp_path / "source.tar"
    context.write_bytes(b"not a tar: this build fails, after the old ones were forgotten")

    async def scenario() -> None:
        builder = Builder(
            object(),  # type: ignore[arg-type]
            memory="1g",
            timeout=1,
            builds=state.list_builds,
            forget_builds=state.delete_builds,
            keep_builds=2,
        )
        job = builder.submit("shop", context, LogBuffer())
        worker = asyncio.create_task(builder.run())
        try:
            with pytest.raises(InvalidInput):
                await asyncio.wait_for(job.done, 10)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    run(scenario)
    assert [b.id for b in state.list_builds("shop")] == ["s009"]  # and the new one makes two
    state.close()


def test_a_build_log_that_never_ends_keeps_its_head_and_tail():
    out = LogBuffer(max_lines=100, max_line=50, tail=10)
    for i in range(100_000):
        out.append(f"line {i}")
    out.append("x" * 10_000)
    assert len(out.lines) == 100
    out.close()
    out.append("after close")
    assert len(out.lines) == 111 and out.lines[99] == "line 99"
    assert out.lines[100] == "[... 99891 lines left out; the last 10 follow]"
    assert out.lines[101:110] == [f"line {i}" for i in range(99_991, 100_000)]
    assert out.lines[-1] == "x" * 50 + " [... 9950 characters cut]"
