"""The Add-ons page's backups without Docker: the router in-process against hand-written fakes of
the add-on and backup use cases (Backup now shown running then done, the list with its verified
states, Restore with the typed confirmation, Download, the schedule form, a red mark), and a
daemon without backups showing them as unavailable."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from lbsolo import addon_dumps as dumps
from lbsolo.api.web import create_web_router
from lbsolo.build import LogBuffer
from lbsolo.core import DeployJob
from lbsolo.errors import InvalidInput, NotFound

from .test_web import TOKEN, Client, FakePlatform

ADDON = "shop-cache"
RDB = b"REDIS0011\xfa\tredis-ver\x057.0.15\xff" + b"\0" * 8


def manifest(backup_id: str, created: float, **extra: Any) -> dict[str, Any]:
    return {
        "id": backup_id, "addon": ADDON, "kind": "redis", "version": "7", "major": "7", "created": created,
        "size": 2048, "sha256": "x", "source": "backup", "verified": True, "verify_error": None,
        "verified_at": created, "tables": 1, "rows": 42, **extra,
    }  # fmt: skip


class FakeSchedules:
    def __init__(self, backups: FakeBackups) -> None:
        self.backups = backups

    async def set(self, name: str, schedule: str | None, keep: int | None = None) -> dict[str, Any]:
        text = None if schedule in (None, "", "off") else dumps.check_schedule(str(schedule))  # the real check
        if keep is not None:
            dumps.check_keep(keep)
        self.backups.schedule = text
        self.backups.keep = keep or self.backups.keep
        due = dumps.next_run(text, time.time()) if text else None
        return {"addon": name, "schedule": text, "keep": self.backups.keep, "next_run": due}


class FakeBackups:
    """AddonBackups' use cases the UI calls, over a list of manifests; jobs end when `finish` is set."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.manifests: list[dict[str, Any]] = []
        self.schedule: str | None = None
        self.keep = 7
        self.schedules = FakeSchedules(self)
        self.finish = asyncio.Event()
        self.calls: list[tuple[Any, ...]] = []

    def _known(self, name: str) -> None:
        if name != ADDON:
            raise NotFound(f"no add-on {name!r}")

    async def list(self, name: str) -> dict[str, Any]:
        self._known(name)
        due = dumps.next_run(self.schedule, time.time()) if self.schedule else None
        return {"addon": name, "kind": "redis", "schedule": self.schedule, "keep": self.keep, "next_run": due,
                "backups": list(self.manifests)}  # fmt: skip

    def _job(self, result: dict[str, Any]) -> DeployJob:
        job = DeployJob(app=ADDON, output=LogBuffer())

        async def run() -> None:
            await self.finish.wait()
            job.result = result

        job.task = asyncio.ensure_future(run())
        return job

    async def backup(self, name: str) -> DeployJob:
        self._known(name)
        self.calls.append(("backup", name))
        m = manifest("20250101T030000Z", time.time())
        self.manifests.insert(0, m)
        return self._job({"ok": True, "addon": name, "backup": m})

    async def restore(self, name: str, backup_id: str) -> DeployJob:
        self._known(name)
        if backup_id not in {m["id"] for m in self.manifests}:
            raise NotFound(f"no backup {backup_id} of {name}")
        self.calls.append(("restore", name, backup_id))
        return self._job({"ok": False, "addon": name, "error": {"code": "backup_failed", "message": "it broke"}})

    async def dump_file(self, name: str, backup_id: str) -> tuple[Path, str]:
        self._known(name)
        dumps.check_backup_id(backup_id)
        path = self.tmp / f"{backup_id}.rdb"
        path.write_bytes(RDB)
        return path, f"{name}-{backup_id}.rdb"


class FakeAddons:
    async def list(self) -> list[dict[str, Any]]:
        attachments = {"hello": "REDIS_URL"}
        return [{"name": ADDON, "kind": "redis", "version": "7", "status": "running", "attachments": attachments,
                 "container": {"state": "running"}, "error": None}]  # fmt: skip

    async def destroy(self, name: str, *, confirm: str, detach: bool) -> dict[str, Any]:
        if confirm != name:
            raise InvalidInput(f"type {name} to confirm")
        return {"detached": []}


class AddonPlatform(FakePlatform):
    def __init__(self, tmp: Path, backups: bool = True) -> None:
        super().__init__()
        self.addons = FakeAddons()
        self.backups = FakeBackups(tmp) if backups else None


def serve(platform: AddonPlatform) -> Client:
    app = FastAPI()
    app.include_router(create_web_router(platform, TOKEN, bus=None, notifier=None, sampler=None))  # type: ignore[arg-type]
    return Client(app)


@pytest.fixture
def platform(tmp_path) -> AddonPlatform:
    return AddonPlatform(tmp_path)


@pytest.fixture
def client(platform):
    c = serve(platform)
    yield c
    c.close()


def login(client: Client) -> str:
    assert client.post("/ui/login", data={"token": TOKEN, "next": "/ui/addons"}).status_code == 303
    page = client.get("/ui/addons")
    assert page.status_code == 200
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def section(html: str) -> str:
    start = html.index(f'id="backups-{ADDON}"')
    return html[start : html.index("</section>", start)]


def test_backup_now_starts_a_job_shown_running_then_listed(client, platform):
    csrf = login(client)
    assert "No backups yet." in section(client.get("/ui/addons").text)
    assert client.post(f"/ui/addons/{ADDON}/backups", data={}).status_code == 403  # no CSRF token
    assert platform.backups.calls == []

    r = client.post(f"/ui/addons/{ADDON}/backups", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == f"/ui/addons#backups-{ADDON}"
    page = client.get("/ui/addons").text
    assert f"backup of {ADDON} started" in page
    assert "data-job-running" in section(page) and "backing up" in section(page)
    again = client.post(f"/ui/addons/{ADDON}/backups", data={"csrf": csrf})
    assert again.status_code == 303
    assert "is running already" in client.get("/ui/addons").text
    assert platform.backups.calls == [("backup", ADDON)]

    platform.backups.finish.set()
    client.loop.run_until_complete(asyncio.sleep(0.01))
    shown = section(client.get("/ui/addons").text)
    assert "data-job-running" not in shown
    assert "backup 20250101T030000Z made and verified" in shown
    row = shown[shown.index('data-backup="20250101T030000Z"') :]
    for text in ("backup", "2.0 KB", "1 / 42", '<span class="ok">yes</span>', "Download", "Restore"):
        assert text in row


def test_verified_states_and_the_red_mark(client, platform):
    login(client)
    now = time.time()
    platform.backups.manifests = [
        manifest("20250102T030000Z", now, verified=False, verify_error="<b>42 keys, restored 41</b>"),
        manifest("20250101T030000Z", now - 60, verified=None),
    ]
    page = client.get("/ui/addons").text
    shown = section(page)
    assert "NO" in shown and "&lt;b&gt;42 keys, restored 41&lt;/b&gt;" in shown and "<b>" not in shown
    assert "not yet" in shown
    assert "failed verification" in shown and "needs a look" in shown
    assert "backups need a look" in page  # on the add-on's row too

    platform.backups.manifests = [manifest("20250101T030000Z", now)]
    page = client.get("/ui/addons").text
    assert "needs a look" not in page


def test_restore_needs_the_name_typed(client, platform):
    csrf = login(client)
    platform.backups.manifests = [manifest("20250101T030000Z", time.time())]
    url = f"/ui/addons/{ADDON}/backups/20250101T030000Z/restore"
    client.post(url, data={"csrf": csrf, "confirm": "shop"})
    assert f"type {ADDON} to confirm the restore" in client.get("/ui/addons").text
    client.post(f"/ui/addons/{ADDON}/backups/20240101T030000Z/restore", data={"csrf": csrf, "confirm": ADDON})
    assert "no backup 20240101T030000Z" in client.get("/ui/addons").text
    assert platform.backups.calls == []

    client.post(url, data={"csrf": csrf, "confirm": ADDON})
    assert f"restore of {ADDON} from 20250101T030000Z started" in client.get("/ui/addons").text
    platform.backups.finish.set()
    client.loop.run_until_complete(asyncio.sleep(0.01))
    shown = section(client.get("/ui/addons").text)
    assert "restore failed: it broke" in shown and 'data-state="failed"' in shown
    assert platform.backups.calls == [("restore", ADDON, "20250101T030000Z")]


def test_download_serves_the_file_to_a_session_only(client, platform):
    url = f"/ui/addons/{ADDON}/backups/20250101T030000Z/download"
    r = client.get(url)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    login(client)
    r = client.get(url)
    assert r.status_code == 200 and r.content.startswith(b"REDIS")
    assert r.headers["content-type"] == "application/octet-stream"
    assert f'filename="{ADDON}-20250101T030000Z.rdb"' in r.headers["content-disposition"]
    assert r.headers["x-content-type-options"] == "nosniff"
    bad = client.get(f"/ui/addons/{ADDON}/backups/..%2Fetc/download")
    assert bad.status_code in (400, 404, 422)


def test_schedule_form_sets_it_or_says_why_not(client, platform):
    csrf = login(client)
    url = f"/ui/addons/{ADDON}/backups/schedule"
    client.post(url, data={"csrf": csrf, "schedule": "0 3 * * *", "keep": "3"})
    page = client.get("/ui/addons").text
    assert f"{ADDON} is backed up on 0 3 * * *, keeping 3; next run" in page
    shown = section(page)
    assert "<code>0 3 * * *</code>" in shown and "keeping the newest 3" in shown
    assert re.search(r'class="next-run">\d{4}-\d\d-\d\d 03:00:00<', shown)

    client.post(url, data={"csrf": csrf, "schedule": "every night", "keep": "5"})
    page = client.get("/ui/addons").text
    assert re.search(r'class="flash flash-error"[^>]*>invalid schedule', page)
    assert (platform.backups.schedule, platform.backups.keep) == ("0 3 * * *", 3)  # nothing changed
    client.post(url, data={"csrf": csrf, "schedule": "@daily", "keep": "lots"})
    assert "keep must be a number" in client.get("/ui/addons").text
    assert platform.backups.schedule == "0 3 * * *"

    client.post(url, data={"csrf": csrf, "schedule": "", "keep": "3"})
    assert f"{ADDON} has no backup schedule now" in client.get("/ui/addons").text
    assert platform.backups.schedule is None


def test_without_backups_the_section_says_so(tmp_path):
    platform = AddonPlatform(tmp_path, backups=False)
    client = serve(platform)
    try:
        csrf = login(client)
        page = client.get("/ui/addons").text
        assert "Backups are unavailable" in page and "Backup now" not in page
        assert f'data-addon="{ADDON}"' in page  # the add-on itself is still listed
        client.post(f"/ui/addons/{ADDON}/backups", data={"csrf": csrf})
        assert "without add-on backups" in client.get("/ui/addons").text
        r = client.get(f"/ui/addons/{ADDON}/backups/20250101T030000Z/download")
        assert r.status_code == 422 and "without add-on backups" in r.text
    finally:
        client.close()


def test_destroy_still_asks_for_the_name(client, platform):
    csrf = login(client)
    client.post(f"/ui/addons/{ADDON}/destroy", data={"csrf": csrf, "confirm": "nope"})
    assert f"type {ADDON} to confirm" in client.get("/ui/addons").text
    client.post(f"/ui/addons/{ADDON}/destroy", data={"csrf": csrf, "confirm": ADDON})
    assert f"destroyed {ADDON}" in client.get("/ui/addons").text
