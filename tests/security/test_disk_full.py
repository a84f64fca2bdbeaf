"""A full disk is a handled condition: state writes fail cleanly, log writers survive, serving goes on.

Issue 11, reliability: a state write that fails leaves the previous state intact, the API says
what is full (507), the proxy keeps serving while its access log cannot be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import lbsolo.state as state_module
from lbsolo.errors import DiskFull, StorageError
from lbsolo.models import App
from lbsolo.proxy import ProxyServer, Route, Target
from lbsolo.run_logs import AccessLog, LogLine, LogStore
from lbsolo.state import State
from tests.security.test_secrets_masked import World
from tests.unit.proxy_harness import App as Upstream
from tests.unit.proxy_harness import read_response


def _no_space(*_args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_state_write_raises_disk_full_and_keeps_the_previous_state(tmp_path: Path, monkeypatch):
    path = tmp_path / "state.json"
    state = State(path)
    state.create_app(App(name="kept"))
    before = path.read_bytes()
    with monkeypatch.context() as m:
        m.setattr(state_module.os, "fsync", _no_space)
        with pytest.raises(DiskFull) as caught:
            state.create_app(App(name="lost"))
    assert caught.value.status == 507 and str(path) in caught.value.message and "full" in caught.value.message
    assert [a.name for a in state.list_apps()] == ["kept"]  # memory did not run ahead of the disk
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert [a.name for a in State(path).list_apps()] == ["kept"]
    state.create_app(App(name="later"))  # and it works again once there is room
    assert [a.name for a in State(path).list_apps()] == ["kept", "later"]


def test_other_write_failures_are_storage_errors(tmp_path: Path, monkeypatch):
    state = State(tmp_path / "state.json")
    monkeypatch.setattr(state_module.os, "replace", lambda *_: _raise(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(StorageError) as caught:
        state.create_app(App(name="x"))
    assert not isinstance(caught.value, DiskFull) and "Input/output error" in caught.value.message


def _raise(e: Exception) -> None:
    raise e


def test_log_writers_drop_lines_with_one_warning_when_they_cannot_write(tmp_path: Path, caplog, run):
    caplog.set_level(logging.WARNING, "lbsolo.run_logs")
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the logs directory should be")
    store = LogStore(blocker)
    access = AccessLog(blocker / "access.log")

    async def scenario() -> None:
        for i in range(3):
            store.append(LogLine(float(i), "shop", "v1", "web", "web.1", f"line {i}"))
            await store.flush()
            access.write(f'{{"n":{i}}}\n')
            await access.flush()

    run(scenario)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and all("cannot write" in m for m in warned)
    assert access.dropped == 3

    blocker.unlink()
    run(scenario)
    access.close()
    assert [r.getMessage().endswith("works again") for r in caplog.records[2:]] == [True, True]
    assert (blocker / "access.log").read_text().count("\n") == 3


@contextlib.contextmanager
def small_filesystem(directory: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `directory` (root only)."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; return it (delete it to make room again)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
    return filler


def test_a_full_home_directory_on_a_real_small_filesystem(tmp_path: Path, caplog, run):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the small-filesystem test needs root in CI (to mount a tmpfs)")
        pytest.skip("needs root to mount a small tmpfs")
    caplog.set_level(logging.WARNING, "lbsolo.run_logs")

    async def scenario(mount: Path) -> None:
        world = World(mount, port=1)
        state_path = world.settings.state_path
        store = LogStore(world.settings.logs_dir)
        access = AccessLog(world.settings.logs_dir / "access.log")
        upstream = await Upstream().start()
        proxy = ProxyServer(port=0, domain="lbsolo.localhost", access_log=access.write)
        proxy.set_routes({"hello": Route(app="hello", targets=(Target("127.0.0.1", upstream.port),))})
        await proxy.start()
        try:
            async with world.client() as c:
                assert (await c.post("/api/apps", json={"name": "kept"})).status_code == 201
                before = state_path.read_bytes()
                filler = _fill(mount)

                r = await c.post("/api/apps", json={"name": "lost"})
                assert r.status_code == 507, r.text
                error = r.json()["error"]
                assert error["code"] == "disk_full" and str(state_path) in error["message"]
                assert state_path.read_bytes() == before
                assert [a["name"] for a in (await c.get("/api/apps")).json()] == ["kept"]  # the API goes on

                for _ in range(3):  # the proxy serves; its access log and the app logs drop lines
                    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                    writer.write(b"GET / HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\nConnection: close\r\n\r\n")
                    assert (await read_response(reader)).status == 200
                    writer.close()
                    await proxy_flush(proxy)
                    access.write("x" * 70_000 + "\n")  # more than a filesystem block: never fits
                    await access.flush()
                    store.append(LogLine(1.0, "kept", "v1", "web", "web.1", "y" * 70_000))
                    await store.flush()
                full = [r.getMessage() for r in caplog.records if "disk is full" in r.getMessage()]
                assert len(full) == 2 and any(str(world.settings.logs_dir / "access.log") in m for m in full)

                filler.unlink()  # room again: everything writes again
                assert (await c.post("/api/apps", json={"name": "later"})).status_code == 201
                access.write('{"after":true}\n')
                await access.flush()
                assert (world.settings.logs_dir / "access.log").read_text().endswith('{"after":true}\n')
            assert [a.name for a in State(state_path).list_apps()] == ["kept", "later"]
        finally:
            await proxy.stop(1)
            await upstream.close()
            access.close()
            world.state.close()

    with small_filesystem(tmp_path / "small") as mount:
        run(lambda: scenario(mount))


async def proxy_flush(proxy: ProxyServer) -> None:
    """Wait for the proxy to hand over its finished requests' access lines (it does so on a timer)."""
    for _ in range(100):
        await asyncio.sleep(0.02)
        if not proxy._finished:
            return
