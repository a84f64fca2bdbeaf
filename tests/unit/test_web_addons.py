"""The Add-ons page without Docker: the router in-process against hand-written fakes of the add-on
and backup use cases. Backups: Backup now shown running then done, the list with its verified
states, Restore with the typed confirmation, Download, the schedule form, a red mark, the bucket
target (credentials masked, a generated key shown once), a daemon without backups. The verbs:
Attach, Detach, Promote, Expose/Unexpose, Rotate, Upgrade (each refused without the CSRF token,
a refusal in red changing nothing), and a retired add-on offering Destroy only."""

from __future__ import annotations

import asyncio
import re
import time
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from lbsolo import addon_dumps as dumps
from lbsolo import addon_upgrade as plan
from lbsolo.addon_backup_remote import Target
from lbsolo.addon_kinds import kind_of
from lbsolo.api.web import create_web_router
from lbsolo.build import LogBuffer
from lbsolo.core import DeployJob
from lbsolo.errors import Conflict, InvalidInput, NotFound
from lbsolo.models_addons import Addon, AddonStatus

from .test_web import TOKEN, Client, FakePlatform

ADDON = "shop-cache"
RETIRED = "shop-cache-old"
KEY = "ab" * 32
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
        if name not in (ADDON, RETIRED):
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


def ended_job(app: str, result: dict[str, Any], finish: asyncio.Event) -> DeployJob:
    """A job like core's: running until `finish` is set, then ending with `result`."""
    job = DeployJob(app=app, output=LogBuffer())

    async def run() -> None:
        await finish.wait()
        job.result = result

    job.task = asyncio.ensure_future(run())
    return job


class FakeAccess:
    """AddonAccess' use cases the UI calls: expose/unexpose on the record, rotate and promote as jobs."""

    def __init__(self, addons: FakeAddons) -> None:
        self.addons = addons

    async def expose(self, name: str, *, address: str, port: int | None, public: bool) -> dict[str, Any]:
        self.addons.calls.append(("expose", name, address, port, public))
        if port == 6379:
            raise Conflict(f"port {port} on {address} is in use: pick another with --port")
        a = self.addons.get(name)
        a.exposed = {"address": address, "port": port or 49153}
        return self.addons.shown(a)

    async def unexpose(self, name: str) -> dict[str, Any]:
        a = self.addons.get(name)
        if not a.exposed:
            raise Conflict(f"{name} is not exposed")
        self.addons.calls.append(("unexpose", name))
        a.exposed = {}
        return self.addons.shown(a)

    async def rotate(self, name: str) -> DeployJob:
        a = self.addons.get(name)
        self.addons.calls.append(("rotate", name))
        result = {"ok": True, "app": name, "addon": name, "user": "default", "apps": sorted(a.attachments)}
        return ended_job(name, result, self.addons.finish)

    async def promote(self, name: str, app: str) -> DeployJob | None:
        a = self.addons.get(name)
        if app not in a.attachments:
            raise NotFound(f"{name} is not attached to {app}")
        self.addons.calls.append(("promote", name, app))
        a.attachments[app] = "REDIS_URL"
        return ended_job(app, {"ok": True, "app": app, "release": "v4"}, self.addons.finish)


class FakeUpgrades:
    def __init__(self, addons: FakeAddons) -> None:
        self.addons = addons

    async def upgrade(self, name: str, version: str, *, via_dump: bool = False) -> DeployJob:
        a = self.addons.get(name)
        way = plan.way(kind_of(a.kind), a.version, version, via_dump=via_dump)  # the real refusals
        self.addons.calls.append(("upgrade", name, version, via_dump))
        moved = sorted(a.attachments)
        done = {"version": version, "way": str(way), **({"new": f"{name}-8", "moved": moved} if via_dump else {})}
        return ended_job(name, {"ok": True, "addon": name, **done}, self.addons.finish)


class FakeAddons:
    """Addons' use cases the UI calls, over Addon records; the jobs end when `finish` is set."""

    def __init__(self) -> None:
        creds = {"user": "default", "password": "s3cret", "database": "0"}
        running = Addon(ADDON, "redis", "7", creds, {"hello": "REDIS_URL"}, status=AddonStatus.RUNNING)
        self.records = {ADDON: running}
        self.calls: list[tuple[Any, ...]] = []
        self.finish = asyncio.Event()
        self.access = FakeAccess(self)
        self.upgrades = FakeUpgrades(self)

    def get(self, name: str) -> Addon:
        if name not in self.records:
            raise NotFound(f"no add-on {name!r}")
        return self.records[name]

    def shown(self, a: Addon) -> dict[str, Any]:
        out = {**a.public(), "container": {"state": "running"}, "stats": None}
        if a.exposed:
            out["exposed_url"] = f"redis://default:********@{a.exposed['address']}:{a.exposed['port']}/0"
            out["public"] = False
        return out

    async def list(self) -> list[dict[str, Any]]:
        return [self.shown(a) for a in self.records.values()]

    async def attach(self, name: str, app: str, as_var: str | None = None) -> DeployJob | None:
        a = self.get(name)
        if app not in ("hello", "worker"):
            raise NotFound(f"no app {app!r}")
        if app in a.attachments:
            raise Conflict(f"{name} is already attached to {app} as {a.attachments[app]}")
        self.calls.append(("attach", name, app, as_var))
        a.attachments[app] = as_var or "REDIS_URL"
        return ended_job(app, {"ok": True, "app": app, "release": "v3"}, self.finish)

    async def detach(self, name: str, app: str) -> DeployJob | None:
        a = self.get(name)
        if a.attachments.pop(app, None) is None:
            raise NotFound(f"{name} is not attached to {app}")
        self.calls.append(("detach", name, app))
        return None  # an app never deployed: nothing to roll out

    async def destroy(self, name: str, *, confirm: str, detach: bool) -> dict[str, Any]:
        if confirm != name:
            raise InvalidInput(f"type {name} to confirm")
        self.records.pop(name, None)
        return {"detached": []}


class FakeRemote:
    """BackupRemote.set_target over the add-on's record, with the real target checks."""

    def __init__(self, addons: FakeAddons) -> None:
        self.addons = addons

    async def set_target(self, name: str, url: str | None, *, endpoint: str | None = None, region: str | None = None,
                         access_key_id: str | None = None, secret_access_key: str | None = None,
                         encrypt: bool = False) -> dict[str, Any]:  # fmt: skip
        a = self.addons.get(name)
        if url is None:
            a.backup_target = {}
            return {"addon": name, "target": None}
        target = Target.parse(url, endpoint or "", region, access_key_id, secret_access_key)
        a.backup_target = {**target.to_dict(), "encrypt": encrypt, "key_id": "k1d" if encrypt else None}
        out = {"addon": name, "target": target.public(), "encrypt": encrypt}
        if encrypt:
            out.update(key_id="k1d", key_file="/home/x/.lbsolo/backup-keys/k1d.key", key=KEY)
        return out


class AddonPlatform(FakePlatform):
    def __init__(self, tmp: Path, backups: bool = True) -> None:
        super().__init__()
        self.addons = FakeAddons()
        self.backups = FakeBackups(tmp) if backups else None
        if self.backups is not None:
            self.backups.remote = FakeRemote(self.addons)

    async def list_apps(self) -> list[dict[str, Any]]:
        return [await self.get_app("hello"), {**await self.get_app("hello"), "name": "worker"}]


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


# ---- the verbs beyond backups ------------------------------------------------------------------


def manage(html: str, name: str = ADDON) -> str:
    start = html.index(f'id="manage-{name}"')
    return html[start : html.index("</section>", start)]


def flash(html: str) -> tuple[str, str]:
    m = re.search(r'<p class="flash flash-(\w+)" role="status">(.*?)</p>', html, re.S)
    assert m, "no flash"
    return m.group(1), unescape(m.group(2))


def settle(client: Client, platform: AddonPlatform) -> None:
    platform.addons.finish.set()
    client.loop.run_until_complete(asyncio.sleep(0.01))
    platform.addons.finish.clear()


VERBS = {
    "attach": {"app": "worker"},
    "detach": {"app": "hello"},
    "promote": {"app": "hello"},
    "expose": {"port": "16379"},
    "unexpose": {},
    "rotate": {"confirm": ADDON},
    "upgrade": {"version": "7.2"},
    "backups/target": {"local": "1"},
}


def test_every_verb_needs_the_csrf_token(client, platform):
    csrf = login(client)
    for verb, form in VERBS.items():
        assert client.post(f"/ui/addons/{ADDON}/{verb}", data=form).status_code == 403, verb
        assert client.post(f"/ui/addons/{ADDON}/{verb}", data={**form, "csrf": "stale"}).status_code == 403, verb
    assert platform.addons.calls == []
    assert csrf


def test_attach_promote_detach_run_in_the_background(client, platform):
    csrf = login(client)
    shown = manage(client.get("/ui/addons").text)
    assert '<option value="worker">worker</option>' in shown and '<option value="hello">' not in shown
    assert "/promote" not in shown  # hello holds it as REDIS_URL already

    r = client.post(f"/ui/addons/{ADDON}/attach", data={"csrf": csrf, "app": "worker", "as": "CACHE_URL"})
    assert r.status_code == 303 and r.headers["location"] == f"/ui/addons#manage-{ADDON}"
    page = client.get("/ui/addons").text
    assert flash(page) == ("ok", f"attaching {ADDON} to worker: a release of worker is rolling out")
    assert "data-job-running" in manage(page) and "attaching to worker…" in manage(page)
    client.post(f"/ui/addons/{ADDON}/rotate", data={"csrf": csrf, "confirm": ADDON})
    assert flash(client.get("/ui/addons").text) == (
        "error",
        f"{ADDON} is busy: its attach is still running",
    )
    settle(client, platform)
    shown = manage(client.get("/ui/addons").text)
    assert "data-job-running" not in shown and 'data-state="ok"' in shown
    assert "attached to worker as CACHE_URL: v3 is live" in shown
    worker = shown[shown.index('<li data-app="worker">') :]
    assert '<code class="small">CACHE_URL</code>' in worker and "/promote" in worker.split("</li>")[0]

    client.post(f"/ui/addons/{ADDON}/promote", data={"csrf": csrf, "app": "worker"})
    assert flash(client.get("/ui/addons").text)[1].startswith(f"promoting {ADDON} on worker")
    settle(client, platform)
    assert "now worker&#39;s primary URL: v4 is live" in manage(client.get("/ui/addons").text)

    client.post(f"/ui/addons/{ADDON}/detach", data={"csrf": csrf, "app": "worker"})
    page = client.get("/ui/addons").text
    assert flash(page) == ("ok", f"detached {ADDON} from worker")  # nothing to roll out: done at once
    assert '<li data-app="worker">' not in manage(page)
    assert platform.addons.calls == [
        ("attach", ADDON, "worker", "CACHE_URL"), ("promote", ADDON, "worker"), ("detach", ADDON, "worker")
    ]  # fmt: skip


def test_a_refusal_is_red_and_changes_nothing(client, platform):
    csrf = login(client)
    client.post(f"/ui/addons/{ADDON}/attach", data={"csrf": csrf, "app": "hello"})
    page = client.get("/ui/addons").text
    assert flash(page) == ("error", f"{ADDON} is already attached to hello as REDIS_URL")
    assert "data-job-running" not in page
    client.post(f"/ui/addons/{ADDON}/attach", data={"csrf": csrf, "app": ""})
    assert flash(client.get("/ui/addons").text) == ("error", f"pick the app to attach {ADDON} to")
    client.post(f"/ui/addons/{ADDON}/detach", data={"csrf": csrf, "app": "worker"})
    assert flash(client.get("/ui/addons").text) == ("error", f"{ADDON} is not attached to worker")
    client.post("/ui/addons/Bad..Name/attach", data={"csrf": csrf, "app": "worker"})
    assert flash(client.get("/ui/addons").text)[0] == "error"
    assert platform.addons.calls == []
    assert platform.addons.records[ADDON].attachments == {"hello": "REDIS_URL"}


def test_expose_on_loopback_shows_the_masked_url_then_unexpose(client, platform):
    csrf = login(client)
    shown = manage(client.get("/ui/addons").text)
    assert 'action="/ui/addons/shop-cache/expose"' in shown and "Unexpose" not in shown
    assert "CLI-only" in shown and 'name="public"' not in shown and 'name="address"' not in shown

    client.post(f"/ui/addons/{ADDON}/expose", data={"csrf": csrf, "port": "lots"})
    assert flash(client.get("/ui/addons").text) == ("error", "the port is a number, got 'lots'")
    client.post(f"/ui/addons/{ADDON}/expose", data={"csrf": csrf, "port": "6379"})
    assert flash(client.get("/ui/addons").text) == (
        "error",
        "port 6379 on 127.0.0.1 is in use: pick another with --port",
    )
    assert not platform.addons.records[ADDON].exposed

    client.post(f"/ui/addons/{ADDON}/expose", data={"csrf": csrf, "port": ""})
    page = client.get("/ui/addons").text
    assert flash(page) == ("ok", f"{ADDON} is exposed at redis://default:********@127.0.0.1:49153/0")
    shown = manage(page)
    assert '<code class="exposed-url">redis://default:********@127.0.0.1:49153/0</code>' in shown
    assert "s3cret" not in page and "Unexpose" in shown
    assert platform.addons.calls == [
        ("expose", ADDON, "127.0.0.1", 6379, False), ("expose", ADDON, "127.0.0.1", None, False)
    ]  # fmt: skip

    client.post(f"/ui/addons/{ADDON}/unexpose", data={"csrf": csrf})
    page = client.get("/ui/addons").text
    assert flash(page) == ("ok", f"{ADDON} is no longer exposed")
    assert "exposed-url" not in manage(page)
    client.post(f"/ui/addons/{ADDON}/unexpose", data={"csrf": csrf})
    assert flash(client.get("/ui/addons").text) == ("error", f"{ADDON} is not exposed")


def test_rotate_needs_the_name_typed(client, platform):
    csrf = login(client)
    client.post(f"/ui/addons/{ADDON}/rotate", data={"csrf": csrf, "confirm": "shop"})
    assert flash(client.get("/ui/addons").text) == (
        "error", f"type {ADDON} to confirm the rotation: every attached app gets a release"
    )  # fmt: skip
    assert platform.addons.calls == []
    client.post(f"/ui/addons/{ADDON}/rotate", data={"csrf": csrf, "confirm": ADDON})
    page = client.get("/ui/addons").text
    assert flash(page)[0] == "ok" and "rotating its credentials…" in manage(page)
    settle(client, platform)
    assert "credentials rotated (hello moved onto them)" in manage(client.get("/ui/addons").text)
    assert platform.addons.calls == [("rotate", ADDON)]


def test_upgrade_a_major_is_refused_without_the_dump_box(client, platform):
    csrf = login(client)
    client.post(f"/ui/addons/{ADDON}/upgrade", data={"csrf": csrf, "version": "8"})
    kind, text = flash(client.get("/ui/addons").text)
    assert kind == "error" and "redis 7 -> 8 is a major upgrade" in text
    client.post(f"/ui/addons/{ADDON}/upgrade", data={"csrf": csrf, "version": "6"})
    assert "older than 7" in flash(client.get("/ui/addons").text)[1]
    client.post(f"/ui/addons/{ADDON}/upgrade", data={"csrf": csrf, "version": ""})
    assert "the version to upgrade to is needed" in flash(client.get("/ui/addons").text)[1]
    assert platform.addons.calls == []

    client.post(f"/ui/addons/{ADDON}/upgrade", data={"csrf": csrf, "version": "8", "via_dump": "on"})
    page = client.get("/ui/addons").text
    assert flash(page) == ("ok", f"upgrading {ADDON} to 8 through a dump into a new add-on")
    assert "upgrading to 8…" in manage(page)
    settle(client, platform)
    shown = manage(client.get("/ui/addons").text)
    assert f"upgraded to 8 through a dump into {ADDON}-8, hello moved to it; this one is retired" in shown
    assert platform.addons.calls == [("upgrade", ADDON, "8", True)]


def test_a_retired_addon_offers_only_destroy(client, platform):
    platform.addons.records[RETIRED] = Addon(
        RETIRED, "redis", "6", status=AddonStatus.RETIRED, upgrade={"to": ADDON, "version": "7", "done": 1.0}
    )
    platform.backups.manifests = [manifest("20250101T030000Z", time.time())]
    csrf = login(client)
    page = client.get("/ui/addons").text
    shown = manage(page, RETIRED)
    assert "status-retired" in shown and f'replaced by\n    <a href="#manage-{ADDON}">{ADDON}</a>' in shown
    actions = re.findall(rf'action="(/ui/addons/{RETIRED}/[^"]*)"', page)
    assert actions == [f"/ui/addons/{RETIRED}/destroy"]
    start = page.index(f'id="backups-{RETIRED}"')
    assert "Download" in page[start : page.index("</section>", start)]  # its backups can still be read
    assert f"/ui/addons/{ADDON}/rotate" in page  # the running one keeps its forms
    client.post(f"/ui/addons/{RETIRED}/destroy", data={"csrf": csrf, "confirm": RETIRED})
    assert flash(client.get("/ui/addons").text) == ("ok", f"destroyed {RETIRED}")


def test_backup_target_is_shown_masked_and_a_key_once(client, platform):
    csrf = login(client)
    url = f"/ui/addons/{ADDON}/backups/target"
    target = {"csrf": csrf, "url": "s3://bkt/shop", "endpoint": "https://s3.example.com", "region": "eu-1",
              "access_key_id": "AKIDVISIBLE", "secret_access_key": "SECRETVISIBLE"}  # fmt: skip
    assert "kept on this machine only" in section(client.get("/ui/addons").text)
    client.post(url, data={**target, "url": "http://bkt"})
    assert "a backup target is s3://BUCKET" in flash(client.get("/ui/addons").text)[1]
    client.post(url, data={**target, "url": ""})
    assert "s3://BUCKET/PREFIX is needed" in flash(client.get("/ui/addons").text)[1]
    assert platform.addons.records[ADDON].backup_target == {}

    r = client.post(url, data={**target, "encrypt": "on"})
    assert r.headers["location"] == f"/ui/addons#backups-{ADDON}"
    page = client.get("/ui/addons").text
    kind, text = flash(page)
    assert kind == "key" and KEY in text and "KEEP THIS KEY, it is shown only this once" in text
    shown = section(page)
    assert '<code class="target-url">s3://bkt/shop</code>' in shown and "https://s3.example.com" in shown
    assert '<code class="masked">********</code>' in shown and "encrypted" in shown and "k1d" in shown
    again = client.get("/ui/addons").text
    for hidden in (KEY, "AKIDVISIBLE", "SECRETVISIBLE"):
        assert hidden not in again and hidden not in section(page)

    client.post(url, data={**target, "secret_access_key": "OTHER"})
    assert flash(client.get("/ui/addons").text) == ("ok", f"backups of {ADDON} go to s3://bkt/shop too")
    client.post(url, data={"csrf": csrf, "local": "1"})
    page = client.get("/ui/addons").text
    assert flash(page) == ("ok", f"backups of {ADDON} are kept here only")
    assert "kept on this machine only" in section(page) and "Local only" not in section(page)
