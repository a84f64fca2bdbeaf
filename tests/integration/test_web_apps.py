"""The web UI for many apps, new apps and add-ons, in Chromium against a real daemon: the New
app form (empty, and with a git URL whose first deploy streams in the page), natural order and
the filters of the dashboard, apps as cards on a phone-width screen, Add database on an app page
and the Add-ons page with its typed-confirmation Destroy.

Uses the fixtures of test_web.py (one daemon, one browser, one logged-in session per module);
each test makes the apps it needs and removes them afterwards. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from . import test_web as web
from .conftest import EXAMPLES, Daemon

# test_web.py's fixtures, for this module: its own daemon, browser and logged-in session.
daemon, browser, session, page = web.daemon, web.browser, web.session, web.page
SLOW, expect, screenshot = web.SLOW, web.expect, web.screenshot

pytestmark = pytest.mark.docker

NO_OVERFLOW = "() => document.scrollingElement.scrollWidth <= window.innerWidth"


def git(cwd: Path, *args: str) -> None:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_TERMINAL_PROMPT": "0"}  # fmt: skip
    out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def destroy(daemon: Daemon, *names: str) -> None:
    for name in names:
        daemon.cli("destroy", name, "--yes")


def test_new_app_form_creates_an_empty_app_and_says_how_to_deploy(daemon, page):
    name = "webnew"
    try:
        page.goto("/ui/")
        form = page.locator("#new-app-form")
        form.locator("input[name=name]").fill(name)
        form.locator("button[type=submit]").click()
        expect(page).to_have_url(f"{daemon.api}/ui/apps/{name}")
        expect(page.locator(".flash-ok")).to_contain_text(f"created {name}")
        howto = page.locator("#how-to-deploy")
        expect(howto).to_contain_text(f"lbsolo deploy --app {name}")
        expect(howto).to_contain_text(f"git remote add lbsolo {daemon.api}/git/{name}.git")
        assert daemon.api_get(f"/api/apps/{name}").json()["status"] == "new"
        # A name the core refuses comes back as its one-line error, and nothing is made.
        page.goto("/ui/")
        form.locator("input[name=name]").fill("Bad_Name")
        form.locator("button[type=submit]").click()
        expect(page.locator(".flash-error")).to_be_visible()
        assert daemon.api_get("/api/apps/Bad_Name").status_code in (404, 422)
    finally:
        destroy(daemon, name)


def test_new_app_form_with_a_git_url_streams_its_first_deploy(daemon, page, tmp_path):
    name, src = "webgit", tmp_path / "repo"
    shutil.copytree(EXAMPLES / "hello", src)
    git(src, "init", "-q", "-b", "main")
    git(src, "add", ".")
    git(src, "commit", "-qm", "one")
    try:
        page.goto("/ui/")
        form = page.locator("#new-app-form")
        form.locator("input[name=name]").fill(name)
        form.locator("input[name=git_url]").fill(str(src))
        form.locator("input[name=ref]").fill("main")
        form.locator("button[type=submit]").click()
        expect(page).to_have_url(f"{daemon.api}/ui/apps/{name}")
        output = page.locator("#deploy-output")
        expect(output).to_contain_text(f"-----> Building {name}", timeout=SLOW)
        expect(page.locator("#deploy-state")).to_have_attribute("data-state", "ok", timeout=SLOW * 2)
        expect(page.locator("#deploy-state")).to_contain_text("v1 is live")
        expect(output).to_contain_text("Releasing v1")
        assert "release=v1" in daemon.get(name).text
        screenshot(page, "web-new-app-deploy.png")
    finally:
        destroy(daemon, name)


def test_dashboard_sorts_naturally_and_filters_by_name_and_status(daemon, page):
    names = ["s10", "s2", "s1"]
    for n in names:
        assert daemon.cli("apps:create", n).returncode == 0
    try:
        page.goto("/ui/")
        order = page.locator("#apps tr[data-app]").evaluate_all("rows => rows.map(r => r.dataset.app)")
        ours = [n for n in order if n in names]
        assert ours == ["s1", "s2", "s10"], order
        page.fill("#app-filter", "s1")
        for n, shown in (("s1", True), ("s10", True), ("s2", False)):
            row = page.locator(f"#apps tr[data-app='{n}']")
            expect(row).to_be_visible() if shown else expect(row).to_be_hidden()
        expect(page.locator("#app-shown")).to_contain_text("2 of")
        page.fill("#app-filter", "")
        page.select_option("#status-filter", "new")
        for n in names:
            expect(page.locator(f"#apps tr[data-app='{n}']")).to_be_visible()
        page.select_option("#status-filter", "running")
        expect(page.locator("#apps tr[data-app='s2']")).to_be_hidden()
        # The list refreshes itself every 5 s; the filter still holds afterwards.
        page.wait_for_timeout(6_000)
        expect(page.locator("#apps tr[data-app='s2']")).to_be_hidden()
        page.select_option("#status-filter", "")
        expect(page.locator("#apps tr[data-app='s2']")).to_be_visible()
    finally:
        destroy(daemon, *names)


def test_apps_are_cards_on_a_phone_and_a_table_on_a_desktop(daemon, page):
    names = ["card-a-long-application-name-1", "card-2"]
    for n in names:
        assert daemon.cli("apps:create", n).returncode == 0
    try:
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto("/ui/")
        row = page.locator(f"#apps tr[data-app='{names[0]}']")
        expect(row).to_be_visible()
        assert row.evaluate("r => getComputedStyle(r).display") == "block"
        assert page.locator("#apps thead").evaluate("t => getComputedStyle(t).display") == "none"
        box = row.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        assert page.evaluate(NO_OVERFLOW)
        screenshot(page, "web-dashboard-cards-phone.png")

        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto("/ui/")
        assert row.evaluate("r => getComputedStyle(r).display") == "table-row"
        assert page.evaluate(NO_OVERFLOW)
        screenshot(page, "web-dashboard-desktop.png")
    finally:
        destroy(daemon, *names)


def test_add_database_on_the_app_page_then_destroy_it_on_the_addons_page(daemon, page):
    app, addon = "webdb", "webdb-redis"
    assert daemon.cli("apps:create", app).returncode == 0
    try:
        page.goto(f"/ui/apps/{app}")
        form = page.locator("#addon-form")
        form.locator("select[name=kind]").select_option("redis")
        form.locator("input[name=version]").fill("7")
        form.locator("button[type=submit]").click()
        expect(page.locator(".flash-ok")).to_contain_text(f"added {addon} (redis 7)", timeout=SLOW * 2)
        attached = page.locator(f"#addons tr[data-addon='{addon}']")
        expect(attached).to_contain_text("redis 7")
        expect(attached).to_contain_text("REDIS_URL")
        assert "REDIS_URL" in daemon.api_get(f"/api/apps/{app}/config").json()

        page.click("nav a[href='/ui/addons']")
        row = page.locator(f"#addons tr[data-addon='{addon}']")
        for text in ("redis", "7", "running", app):
            expect(row).to_contain_text(text)
        screenshot(page, "web-addons.png")
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate(NO_OVERFLOW)
        screenshot(page, "web-addons-phone.png")
        page.set_viewport_size({"width": 1100, "height": 900})

        row.locator("input[name=confirm]").fill("not-its-name")
        row.locator("button", has_text="Destroy").click()
        expect(page.locator(".flash-error")).to_contain_text("confirm")
        row.locator("input[name=confirm]").fill(addon)
        row.locator("button", has_text="Destroy").click()  # attached, "detach first" not ticked: refused
        expect(page.locator(".flash-error")).to_contain_text("attached")
        row.locator("input[name=confirm]").fill(addon)
        row.locator("input[name=detach]").check()
        row.locator("button", has_text="Destroy").click()
        expect(page.locator(".flash-ok")).to_contain_text(f"destroyed {addon} (detached from {app})", timeout=SLOW)
        expect(page.locator(f"#addons tr[data-addon='{addon}']")).to_have_count(0)
        assert daemon.api_get(f"/api/addons/{addon}").status_code == 404
        assert "REDIS_URL" not in daemon.api_get(f"/api/apps/{app}/config").json()
    finally:
        if daemon.api_get(f"/api/addons/{addon}").status_code == 200:
            daemon.cli("addons:destroy", addon, "--confirm", addon, "--detach")
        destroy(daemon, app)
