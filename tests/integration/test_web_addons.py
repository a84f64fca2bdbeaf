"""The Add-ons page's backups in Chromium against a real daemon and a real Redis 7 add-on: Backup
now (the page shows it running, then the backup listed as verified), Download (the RDB's bytes),
the schedule form (set and shown with its next run; a bad cron expression refused in red, the
schedule unchanged), and Restore behind the typed confirmation bringing back a deleted key.

Uses the fixtures of test_web.py (one daemon, one browser, one logged-in session per module).
Needs the redis:7 image scripts/test-env seeds. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re

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
