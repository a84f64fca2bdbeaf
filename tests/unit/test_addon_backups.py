"""The backup use cases over a hand-written fake of the engine's Services part: a backup's file,
manifest and verification; a refused upload stops after its first bytes and leaves nothing; a
failed verification is recorded and raises an event; a cancelled caller stops the exec; a
missed schedule runs once and the scheduled backups are pruned to keep. The files' modes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from lbsolo.addon_backup_files import BackupFiles
from lbsolo.addon_kinds import KINDS
from lbsolo.config import Settings
from lbsolo.core_addon_backups import AddonBackups
from lbsolo.core_context import CoreContext
from lbsolo.errors import InvalidInput, NotFound, TooLarge
from lbsolo.events import EventBus
from lbsolo.models_addons import Addon, AddonStatus
from lbsolo.run_logs import LogStore
from lbsolo.state import State

from .test_addon_dumps import PG15, RDB

DUMP = PG15 + b"\0" * 5000 + b"table data" * 1000


class FakeServices:
    """The add-on's container and throw-away ones as names; commands answered by what they run."""

    def __init__(self) -> None:
        self.counts = b"public.items\t3\n"
        self.restored_counts = b"public.items\t3\n"
        self.scratch: set[str] = set()
        self.ran: list[str] = []
        self.fed: dict[str, int] = {}
        self.block = threading.Event()  # set: a dump waits on it (to test cancellation)
        self.aborted = threading.Event()

    def exec_service(
        self,
        service: str,
        command: list[str],
        *,
        stdin: Iterable[bytes] | None = None,
        stdout_sink: Callable[[bytes], None],
        timeout: float,
    ) -> tuple[int, str]:
        script = command[-1]
        fed = sum(len(piece) for piece in stdin or ())
        self.ran.append(f"{service}: {script[:40]}")
        if "pg_dump" in script:
            for i in range(0, len(DUMP), 4096):
                if self.block.is_set():
                    try:
                        while True:  # the sink raises once the caller is cancelled
                            stdout_sink(b"x")
                            time.sleep(0.01)
                    except Exception:
                        self.aborted.set()
                        raise
                stdout_sink(DUMP[i : i + 4096])
        elif "query_to_xml" in script:
            stdout_sink(self.restored_counts if "-verify-" in service else self.counts)
        elif "pg_restore --list" in script:
            stdout_sink(b";\n; Archive created\n215; 1259 16385 TABLE public items shop\n")
        elif "pg_restore" in script:
            self.fed[service] = fed
        return 0, ""

    def find_service(self, service: str) -> dict[str, Any] | None:
        return {"id": service, "name": service, "image": "", "running": True, "state": "running", "networks": []}

    def pull_image(self, image: str, on_line: Callable[[str], None]) -> None:
        pass

    def run_scratch_service(self, *, service: str, **_: Any) -> dict[str, Any]:
        self.scratch.add(service)
        return {}

    def remove_service(self, service: str, *, volume: bool) -> None:
        self.scratch.discard(service)

    def remove_scratch_services(self) -> int:
        n = len(self.scratch)
        self.scratch.clear()
        return n


class StubEngine:
    instance = "test"

    def follow_logs(self, *_: Any) -> Iterable[str]:
        return iter(())


def make(tmp_path: Path) -> tuple[AddonBackups, FakeServices, EventBus]:
    settings = Settings.load(home=tmp_path / "home", addon_ready_timeout=5)
    state = State(tmp_path / "state.json")
    addon = Addon("shop-db", "postgres", "15", credentials=KINDS["postgres"].credentials("shop-db").to_dict())
    addon.status = AddonStatus.RUNNING
    state.create_addon(addon)
    bus = EventBus()
    ctx = CoreContext(settings, state, StubEngine(), None, bus, LogStore(tmp_path / "logs"))  # type: ignore[arg-type]
    services = FakeServices()
    return AddonBackups(ctx, services), services, bus  # type: ignore[arg-type]


async def finished(job: Any) -> dict[str, Any]:
    await job.task
    return dict(job.result)


def test_a_backup_is_a_private_file_and_manifest_then_verified_in_a_throw_away_container(tmp_path, run):
    backups, services, bus = make(tmp_path)

    async def main() -> None:
        result = await finished(await backups.backup("shop-db"))
        assert result["ok"], result
        b = result["backup"]
        assert (b["kind"], b["major"], b["size"], b["verified"], b["rows"]) == ("postgres", "15", len(DUMP), True, 3)
        folder = tmp_path / "home" / "backups" / "shop-db"
        dump, manifest = folder / f"{b['id']}.dump", folder / f"{b['id']}.json"
        assert dump.read_bytes() == DUMP
        assert json.loads(manifest.read_text())["counts"] == {"public.items": 3}
        assert {p.stat().st_mode & 0o777 for p in (dump, manifest)} == {0o600}
        assert folder.stat().st_mode & 0o777 == 0o700
        assert services.scratch == set()  # the throw-away container is gone
        (verify,) = [s for s in services.fed if "-verify-" in s]
        assert services.fed[verify] == len(DUMP)  # the whole file went into the restore
        assert [e.kind for e in bus.recent()] == ["addon.backup.succeeded"]
        listing = await backups.list("shop-db")
        assert [x["id"] for x in listing["backups"]] == [b["id"]] and listing["next_run"] is None

    run(main)


def test_a_verification_that_counts_otherwise_fails_is_recorded_and_raises_an_event(tmp_path, run):
    backups, services, bus = make(tmp_path)
    services.restored_counts = b"public.items\t2\n"

    async def main() -> None:
        result = await finished(await backups.backup("shop-db"))
        assert not result["ok"] and "public.items: 2 restored, 3 at dump time" in result["error"]["message"]
        (m,) = (await backups.list("shop-db"))["backups"]
        assert m["verified"] is False and "2 restored" in m["verify_error"]
        assert "addon.backup.failed" in [e.kind for e in bus.recent()]

    run(main)


async def chunks(*pieces: bytes, seen: list[int] | None = None) -> AsyncIterator[bytes]:
    for i, piece in enumerate(pieces):
        if seen is not None:
            seen.append(i)
        yield piece


def test_an_upload_of_another_kind_is_refused_after_its_first_bytes_and_leaves_nothing(tmp_path, run):
    backups, services, _bus = make(tmp_path)

    async def main() -> None:
        seen: list[int] = []
        body = [RDB + b"\0" * 5000] + [b"\0" * 65536] * 100
        with pytest.raises(InvalidInput, match="is a redis dump; this add-on is postgres"):
            await backups.receive("shop-db", chunks(*body, seen=seen), limit=1 << 30)
        assert seen == [0]  # refused on the first piece: the rest is never read
        with pytest.raises(TooLarge):
            await backups.receive("shop-db", chunks(DUMP, DUMP), limit=len(DUMP) + 10)
        with pytest.raises(InvalidInput, match="empty"):
            await backups.receive("shop-db", chunks(), limit=1 << 30)
        assert list((tmp_path / "home" / "backups" / "shop-db").iterdir()) == []
        assert services.ran == []  # nothing ran in the add-on's container

        received = await backups.receive("shop-db", chunks(DUMP[:100], DUMP[100:]), limit=1 << 30)
        assert received.found.kind == "postgres" and received.path.name.endswith(".dump.part")
        result = await finished(await backups.import_dump("shop-db", received))
        assert result["ok"], result
        assert result["backup"]["source"] == "import" and not received.path.exists()
        assert services.fed["shop-db"] == len(DUMP)  # into the add-on once it loaded elsewhere

    run(main)


def test_a_stored_backup_of_a_newer_major_or_changed_since_is_refused_before_anything_runs(tmp_path, run):
    backups, services, _bus = make(tmp_path)

    async def main() -> None:
        b = (await finished(await backups.backup("shop-db")))["backup"]
        folder = tmp_path / "home" / "backups" / "shop-db"
        dump = folder / f"{b['id']}.dump"
        dump.write_bytes(DUMP[:-1] + b"!")
        services.ran.clear()
        with pytest.raises(InvalidInput, match="is corrupt"):
            await backups.restore("shop-db", b["id"])
        manifest = json.loads((folder / f"{b['id']}.json").read_text())
        (folder / f"{b['id']}.json").write_text(json.dumps({**manifest, "major": "17"}))
        with pytest.raises(InvalidInput, match="comes from postgres 17, newer than this add-on's 15"):
            await backups.restore("shop-db", b["id"])
        with pytest.raises(NotFound):
            await backups.restore("shop-db", "20200101T000000Z")
        with pytest.raises(InvalidInput, match="invalid backup id"):
            await backups.restore("shop-db", "../../etc")
        assert services.ran == []

    run(main)


def test_a_cancelled_backup_stops_its_exec_and_leaves_no_half_file(tmp_path, run):
    backups, services, _bus = make(tmp_path)
    services.block.set()

    async def main() -> None:
        job = await backups.backup("shop-db")
        await asyncio.sleep(0.3)
        assert job.task is not None
        job.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job.task
        assert await asyncio.to_thread(services.aborted.wait, 5)
        await asyncio.sleep(0.1)
        assert list((tmp_path / "home" / "backups" / "shop-db").glob("*.part")) == []

    run(main)


def test_a_missed_schedule_runs_once_and_scheduled_backups_are_pruned_to_keep(tmp_path, run):
    backups, _services, bus = make(tmp_path)
    schedules = backups.schedules

    async def main() -> None:
        out = await schedules.set("shop-db", "0 * * * *", keep=2)
        assert out["schedule"] == "0 * * * *" and out["next_run"] > time.time()
        assert await schedules.run_due() == []  # not due yet
        for n in range(3):  # three old scheduled backups, as if made earlier
            m = (await finished(await backups.backup("shop-db", source="scheduled")))["backup"]
            full = backups.files.read("shop-db", m["id"])
            backups.files.save("shop-db", {**full, "created": time.time() - (10 - n) * 3600})
        backups.files.set_schedule_since("shop-db", "0 * * * *", time.time() - 5 * 3600)
        ran = await schedules.run_due()
        assert ran == ["shop-db"]
        assert await schedules.run_due() == []  # once, not once per missed hour
        kept = [m for m in backups.files.list("shop-db") if m["source"] == "scheduled"]
        assert len(kept) == 2 and max(m["created"] for m in kept) > time.time() - 60
        assert [e.kind for e in bus.recent()].count("addon.backup.missed") == 1
        off = await schedules.set("shop-db", "off")
        assert off["schedule"] is None and off["next_run"] is None
        with pytest.raises(InvalidInput, match="invalid schedule"):
            await schedules.set("shop-db", "every day")

    run(main)


def test_resume_removes_throw_away_containers_and_half_written_files(tmp_path, run):
    backups, services, _bus = make(tmp_path)
    services.scratch.add("shop-db-verify-abc")
    part = backups.files.new_part("shop-db", "20261205T080912Z", "postgres")

    async def main() -> None:
        await backups.resume()
        assert services.scratch == set() and not part.exists()

    run(main)


def test_the_backup_files_list_newest_first_and_skip_what_is_not_a_backup(tmp_path):
    files = BackupFiles(tmp_path / "backups")
    assert files.list("db") == [] and files.schedule_since("db") is None
    for backup_id in ("20261205T080912Z", "20261206T080912Z", "20261206T080912Z-2"):
        files.save("db", {"id": backup_id, "kind": "postgres"})
    (files.dir("db") / "notes.json").write_text("{}")
    (files.dir("db") / "20261207T080912Z.json").write_text("not json")
    assert [m["id"] for m in files.list("db")] == ["20261206T080912Z-2", "20261206T080912Z", "20261205T080912Z"]
    files.remove("db", "20261206T080912Z", "postgres")
    assert files.ids("db") == ["20261207T080912Z", "20261206T080912Z-2", "20261205T080912Z"]
    with pytest.raises(NotFound):
        files.read("db", "20261206T080912Z")
    files.set_schedule_since("db", "@daily", 12.5)
    assert files.schedule_since("db") == 12.5
    assert (files.root.stat().st_mode & 0o777, (files.root / "db" / "schedule.json").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    )
