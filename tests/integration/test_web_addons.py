"""The Add-ons page's backups in Chromium against a real daemon and a real Redis 7 add-on: Backup
now (the page shows it running, then the backup listed as verified), Download (the RDB's bytes),
the schedule form (set and shown with its next run; a bad cron expression refused in red, the
schedule unchanged), and Restore behind the typed confirmation bringing back a deleted key.

The add-on verbs on the same page: attach to a second app, promote, detach, expose on 127.0.0.1
(a Redis PING through the published port), unexpose, rotate behind the typed name, and an upgrade
to a new major refused without the dump box.

Uses the fixtures of test_web.py (one daemon, one browser, one logged-in session per module).
Needs the redis:7 image scripts/test-env seeds. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from . import test_web as web
from .conftest import Daemon

daemon, browser, session, page = web.daemon, web.browser, web.session, web.page
SLOW, expect, screenshot = web.SLOW, web.expect, web.screenshot

pytestmark = pytest.mark.docker

NO_OVERFLOW = "() => document.scrollingElement.scrollWidth <= window.innerWidth"
APP, ADDON = "webbk", "webbk-redis"


def redis(docker_client, daemon: Daemon, *args: str) -> str:
    """redis-cli in the add-on's own container, with its password."""
    labels = [f"lbsolo.instance={daemon.instance}", f"lbsolo.addon={ADDON}"]
    (c,) = docker_client.containers.list(filters={"label": labels})
    cmd = c.attrs["Config"]["Cmd"]
    password = cmd[cmd.index("--requirepass") + 1]
    code, out = c.exec_run(["redis-cli", "--no-auth-warning", "-a", password, *args])
    assert code == 0, out
    return out.decode().strip()


@pytest.fixture(scope="module")
def addon(daemon: Daemon):
    """A Redis 7 add-on of a new (never deployed) app: the fastest way to one."""
    assert daemon.cli("apps:create", APP).returncode == 0
    out = daemon.cli("addons:create", "redis", "--app", APP, "--name", ADDON, "--version", "7")
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield ADDON
    finally:
        daemon.cli("addons:destroy", ADDON, "--confirm", ADDON, "--detach")
        daemon.cli("destroy", APP, "--yes")


def test_backup_download_schedule_and_restore_from_the_addons_page(daemon, docker_client, page, addon, tmp_path):
    redis(docker_client, daemon, "set", "greeting", "hello from before the backup")
    page.goto("/ui/addons")
    card = page.locator(f"#backups-{addon}")
    expect(card).to_contain_text("No backups yet.")

    # Backup now: back at once, the job shown running; the page reloads itself once it has ended.
    card.locator("button", has_text="Backup now").click()
    expect(page.locator(".flash-ok")).to_contain_text(f"backup of {addon} started")
    state = card.locator(".job-state")
    expect(state).to_have_attribute("data-state", "ok", timeout=SLOW * 2)
    expect(state).to_contain_text("made and verified")
    row = card.locator("tr[data-backup]").first
    expect(row.locator("td.verified")).to_have_text("yes")
    expect(row).to_contain_text("backup")  # its source
    expect(row).to_contain_text(" / 1")  # one key in one database
    backup_id = row.get_attribute("data-backup")
    assert backup_id and daemon.api_get(f"/api/addons/{addon}/backups").json()["backups"][0]["id"] == backup_id

    # Download: the stored RDB file, as an attachment.
    with page.expect_download() as info:
        row.locator("a.download").click()
    download = info.value
    assert download.suggested_filename == f"{addon}-{backup_id}.rdb"
    download.save_as(tmp_path / "dump.rdb")
    body = (tmp_path / "dump.rdb").read_bytes()
    assert body.startswith(b"REDIS"), body[:16]

    # The schedule: set and shown with its next run; a bad cron expression is refused, nothing changed.
    card.locator("input[name=schedule]").fill("0 3 * * *")
    card.locator("input[name=keep]").fill("3")
    card.locator("button", has_text="Save schedule").click()
    expect(page.locator(".flash-ok")).to_contain_text(f"{addon} is backed up on 0 3 * * *, keeping 3; next run")
    expect(card.locator(".schedule-now")).to_contain_text("keeping the newest 3")
    expect(card.locator(".next-run")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d 03:00:00$"))
    card.locator("input[name=schedule]").fill("every night at three")
    card.locator("button", has_text="Save schedule").click()
    expect(page.locator(".flash-error")).to_contain_text("invalid schedule")
    expect(card.locator(".schedule-now code")).to_have_text("0 3 * * *")
    listing = daemon.api_get(f"/api/addons/{addon}/backups").json()
    assert (listing["schedule"], listing["keep"]) == ("0 3 * * *", 3) and listing["next_run"]
    expect(page.locator(f"#addon-{addon} .backup-alarm")).to_have_count(0)  # verified and within its interval

    screenshot(page, "web-addon-backups.png")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate(NO_OVERFLOW)
    screenshot(page, "web-addon-backups-phone.png")
    page.set_viewport_size({"width": 1100, "height": 900})

    # Restore: refused without the add-on's name typed; with it, the deleted key comes back.
    redis(docker_client, daemon, "del", "greeting")
    restore = card.locator(f"tr[data-backup='{backup_id}'] form.restore")
    restore.locator("input[name=confirm]").fill("not-its-name")
    restore.locator("button", has_text="Restore").click()
    expect(page.locator(".flash-error")).to_contain_text(f"type {addon} to confirm the restore")
    assert redis(docker_client, daemon, "exists", "greeting") == "0"
    restore.locator("input[name=confirm]").fill(addon)
    restore.locator("button", has_text="Restore").click()
    expect(page.locator(".flash-ok")).to_contain_text(f"restore of {addon} from {backup_id} started")
    expect(state).to_contain_text(f"restored from {backup_id}", timeout=SLOW * 2)
    expect(state).to_have_attribute("data-state", "ok")
    assert redis(docker_client, daemon, "get", "greeting") == "hello from before the backup"


VERB_APP, VERB_OTHER, VERB_ADDON = "webact", "webact-b", "webact-redis"


def addon_password(docker_client, daemon: Daemon, name: str) -> str:
    """The password the add-on's container was started with (the apps' config shows it masked)."""
    labels = [f"lbsolo.instance={daemon.instance}", f"lbsolo.addon={name}"]
    (c,) = docker_client.containers.list(filters={"label": labels})
    cmd = c.attrs["Config"]["Cmd"]
    return cmd[cmd.index("--requirepass") + 1]


def redis_ping(port: int, password: str) -> bytes:
    """AUTH then PING over TCP to 127.0.0.1:port; what Redis answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"AUTH {password}\r\nPING\r\n".encode())
        said = b""
        while said.count(b"\r\n") < 2:
            piece = s.recv(4096)
            if not piece:
                break
            said += piece
    return said


@pytest.fixture
def verb_addon(daemon: Daemon):
    """A Redis 7 add-on attached to one app, and a second app to attach it to (neither deployed)."""
    for app in (VERB_APP, VERB_OTHER):
        assert daemon.cli("apps:create", app).returncode == 0
    out = daemon.cli("addons:create", "redis", "--app", VERB_APP, "--name", VERB_ADDON, "--version", "7")
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield VERB_ADDON
    finally:
        daemon.cli("addons:destroy", VERB_ADDON, "--confirm", VERB_ADDON, "--detach", "--no-backup")
        for app in (VERB_APP, VERB_OTHER):
            daemon.cli("destroy", app, "--yes")


def test_attach_promote_detach_expose_rotate_and_upgrade_from_the_addons_page(daemon, docker_client, page, verb_addon):
    name = verb_addon
    info = lambda: daemon.api_get(f"/api/addons/{name}").json()  # noqa: E731
    page.goto("/ui/addons")
    card = page.locator(f"#manage-{name}")
    flash_ok, flash_error = page.locator(".flash-ok"), page.locator(".flash-error")

    # Attach to the second app under another var: it holds it, and Promote is offered there.
    card.locator("form.attach select[name=app]").select_option(VERB_OTHER)
    card.locator("form.attach input[name=as]").fill("CACHE_URL")
    card.locator("form.attach button").click()
    expect(flash_ok).to_contain_text(f"attached {name} to {VERB_OTHER}")
    other = card.locator(f"li[data-app='{VERB_OTHER}']")
    expect(other).to_contain_text("CACHE_URL")
    assert info()["attachments"] == {VERB_APP: "REDIS_URL", VERB_OTHER: "CACHE_URL"}
    assert "CACHE_URL" in daemon.api_get(f"/api/apps/{VERB_OTHER}/config").json()
    expect(card.locator(f"li[data-app='{VERB_APP}'] form.promote")).to_have_count(0)

    # Promote: the app's REDIS_URL now.
    other.locator("button", has_text="Promote").click()
    expect(flash_ok).to_contain_text(f"{name} is now {VERB_OTHER}'s primary URL")
    expect(other.locator("code")).to_have_text("REDIS_URL")
    expect(other.locator("form.promote")).to_have_count(0)
    assert info()["attachments"][VERB_OTHER] == "REDIS_URL"
    config = daemon.api_get(f"/api/apps/{VERB_OTHER}/config").json()
    assert "REDIS_URL" in config and "CACHE_URL" not in config

    # Detach from it.
    other.locator("button", has_text="Detach").click()
    expect(flash_ok).to_contain_text(f"detached {name} from {VERB_OTHER}")
    expect(other).to_have_count(0)
    assert info()["attachments"] == {VERB_APP: "REDIS_URL"}
    assert "REDIS_URL" not in daemon.api_get(f"/api/apps/{VERB_OTHER}/config").json()

    # Expose on 127.0.0.1 (any port): the URL shown masked, and Redis answers there.
    expect(card).to_contain_text("CLI-only")
    expect(card.locator("input[name=public], input[name=address]")).to_have_count(0)
    card.locator("form.expose button").click()
    expect(flash_ok).to_contain_text(f"{name} is exposed at redis://")
    port = info()["exposed"]["port"]
    shown = card.locator(".exposed-url").inner_text()
    assert "********" in shown and f"@127.0.0.1:{port}/" in shown, shown
    password = addon_password(docker_client, daemon, name)
    assert password not in page.content()
    assert redis_ping(port, password) == b"+OK\r\n+PONG\r\n"

    screenshot(page, "web-addon-verbs.png")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate(NO_OVERFLOW)
    screenshot(page, "web-addon-verbs-phone.png")
    page.set_viewport_size({"width": 1100, "height": 900})

    card.locator("form.unexpose button").click()
    expect(flash_ok).to_contain_text(f"{name} is no longer exposed")
    expect(card.locator(".exposed-url")).to_have_count(0)
    assert not info()["exposed"]
    deadline = time.monotonic() + 10
    while True:
        try:
            redis_ping(port, password)
        except OSError:
            break  # nothing listens there any more
        assert time.monotonic() < deadline, f"127.0.0.1:{port} still answers after unexpose"
        time.sleep(0.5)

    # Rotate: refused without the name typed; with it, a job shown running, then done.
    rotate = card.locator("form.rotate")
    rotate.locator("input[name=confirm]").fill("not-its-name")
    rotate.locator("button").click()
    expect(flash_error).to_contain_text(f"type {name} to confirm the rotation")
    rotate.locator("input[name=confirm]").fill(name)
    rotate.locator("button").click()
    expect(flash_ok).to_contain_text(f"rotating the credentials of {name}")
    state = card.locator(".job-state")
    expect(state).to_have_attribute("data-state", "ok", timeout=SLOW * 2)
    expect(state).to_contain_text(f"credentials rotated ({VERB_APP} moved onto them)")
    labels = [f"lbsolo.instance={daemon.instance}", f"lbsolo.addon={name}"]
    (c,) = docker_client.containers.list(filters={"label": labels})
    _, said = c.exec_run(["redis-cli", "--no-auth-warning", "-a", password, "ping"])
    assert b"PONG" not in said, said  # the old password is gone

    # Upgrade to a new major without the dump box: refused in one line, nothing changed.
    upgrade = card.locator("form.upgrade")
    upgrade.locator("input[name=version]").fill("8")
    upgrade.locator("button").click()
    expect(flash_error).to_contain_text("7 -> 8 is a major upgrade")
    assert info()["version"] == "7" and info()["status"] == "running"
    expect(page.locator(f"#addon-{name}")).to_contain_text("running")
