"""The web UI in a real browser (Debian's Chromium driven by Playwright) against a real daemon:
log in, see a CLI deploy appear, tail live logs, set config, scale and roll back through forms,
add and remove a static route; pages without a session go to login, forms without the CSRF token
are refused, output is escaped.

Tests run in order and share one app and one logged-in browser page, like a user's session.
Screenshots go to test-artifacts/ at the repo root.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from .conftest import EXAMPLES, ROOT, host_service, running_daemon, webhook_receiver

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = pytest.mark.docker

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = ROOT / "test-artifacts"
APP = "webui"
SLOW = 60_000  # ms: a rollout on a busy 2-core machine


@pytest.fixture(scope="module")
def daemon(docker_client, tmp_path_factory):
    with running_daemon(docker_client, tmp_path_factory.mktemp("web") / "home") as d:
        yield d


@pytest.fixture(scope="module")
def browser(in_ci):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: run scripts/test-env-browser"
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(browser, daemon):
    context = browser.new_context(base_url=daemon.api, viewport={"width": 1100, "height": 900})
    context.set_default_timeout(20_000)
    pg = context.new_page()
    dialogs: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture(scope="module", autouse=True)
def fresh_screenshots():
    """Screenshots of an earlier run are removed first: test_screenshots_were_saved sees this run's."""
    for old in ARTIFACTS.glob("web-*.png"):
        old.unlink()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def release_row(page, version: int):
    return page.locator(f"#releases tr[data-version='{version}']")


def test_ui_pages_redirect_to_login_without_a_session(daemon, page):
    for path in ("/", "/ui/", f"/ui/apps/{APP}"):
        page.goto(path)
        expect(page).to_have_url(f"{daemon.api}/ui/login?next=" + ("/ui/" if path == "/" else path))
        expect(page.locator("h1")).to_have_text("Log in")
    r = httpx.get(f"{daemon.api}/ui/apps/{APP}/logs/stream", timeout=10)
    assert r.status_code == 401
    r = httpx.post(f"{daemon.api}/ui/apps/{APP}/config", data={"key": "A", "value": "1"}, timeout=10)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    expect(page.locator(".flash-error")).to_contain_text("not the admin token")


def test_login_then_see_an_app_deployed_from_the_cli(daemon, page):
    page.goto("/ui/login")
    page.fill("#token", daemon.token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{daemon.api}/ui/")
    expect(page.locator("#apps")).to_contain_text("No apps yet")
    cookie = next(c for c in page.context.cookies() if c["name"] == "lbsolo_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    assert daemon.cli("apps:create", APP).returncode == 0
    out = daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", APP)
    assert out.returncode == 0, out.stdout + out.stderr
    # The dashboard refreshes its list by itself.
    row = page.locator(f"#apps tr[data-app='{APP}']")
    expect(row).to_contain_text("running", timeout=20_000)
    url = f"http://{APP}.lbsolo.localhost:{daemon.proxy_port}"
    expect(row.locator("a.url")).to_have_attribute("href", url)
    expect(row).to_contain_text("v1")
    expect(page.locator("#recent")).to_contain_text(f"{APP} v1")
    page.reload()
    expect(page.locator("#events")).to_contain_text("deploy.succeeded")
    expect(page.locator("#events")).to_contain_text(APP)
    screenshot(page, "web-dashboard.png")


def test_app_page_tails_logs_live_with_a_filter(daemon, page):
    page.click(f"#apps a[href='/ui/apps/{APP}']")
    expect(page.locator("#summary h1")).to_contain_text(APP)
    expect(page.locator("#log-state")).to_have_attribute("data-state", "live")
    logs = page.locator("#logs")
    expect(logs).to_contain_text("hello v1 listening")  # the backlog comes first
    probe = f"probe-{time.monotonic_ns()}"
    # The app logs every request it answers; an unknown path makes a line no one else can.
    assert daemon.get(APP, f"/{probe}").status_code == 404
    expect(logs).to_contain_text(probe)
    page.fill("#log-filter", probe)
    expect(logs.locator("div", has_text=probe)).to_be_visible()
    expect(logs.locator("div", has_text="listening")).to_be_hidden()
    page.fill("#log-filter", "")
    expect(logs.locator("div", has_text="listening")).to_be_visible()


def test_set_config_through_the_form_makes_a_release(daemon, page):
    form = page.locator("#config-form")
    form.locator("input[name=key]").fill("GREETING")
    form.locator("input[name=value]").fill("Howdy")
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash-ok")).to_contain_text("set GREETING: v2 is live", timeout=SLOW)
    expect(release_row(page, 2)).to_contain_text("config: set GREETING")
    expect(release_row(page, 2)).to_contain_text("active")
    expect(page.locator("#config tr[data-key='GREETING']")).to_contain_text("Howdy")
    assert daemon.get(APP).text.startswith("Howdy from lbsolo!")
    expect(page.locator("#log-state")).to_have_attribute("data-state", "live")
    expect(page.locator("#logs")).to_contain_text("hello v2 listening")
    screenshot(page, "web-app.png")


def test_app_page_graphs_cpu_memory_and_requests(daemon, page):
    for _ in range(5):
        daemon.get(APP)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page.goto(f"/ui/apps/{APP}")
        if page.locator("#graphs polyline").count() >= 2:
            break
        time.sleep(2)
    graphs = page.locator("#graphs")
    expect(graphs).to_contain_text("CPU")
    expect(graphs).to_contain_text("Memory")
    assert page.locator("#graphs polyline").count() >= 2  # CPU and memory were sampled from Docker
    screenshot(page, "web-app.png")


def test_pages_fit_a_phone_width_screen(page):
    phone = page.context.new_page()
    try:
        phone.set_viewport_size({"width": 390, "height": 844})
        for path, shot in (("/ui/", "web-dashboard-phone.png"), (f"/ui/apps/{APP}", "web-app-phone.png")):
            phone.goto(path)
            expect(phone.locator("main h1")).to_be_visible()
            assert phone.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), path
            screenshot(phone, shot)
    finally:
        phone.close()


def test_scale_web_through_the_form(daemon, page):
    page.fill("#web-count", "2")
    page.click("#scale-form button[type=submit]")
    expect(page.locator(".flash-ok")).to_contain_text("scaled web to 2", timeout=SLOW)
    expect(page.locator("#processes tbody tr")).to_have_count(2)
    page.fill("#web-count", "1")
    page.click("#scale-form button[type=submit]")
    expect(page.locator(".flash-ok")).to_contain_text("scaled web to 1", timeout=SLOW)
    expect(page.locator("#processes tbody tr")).to_have_count(1)


def test_roll_back_from_the_releases_list(daemon, page):
    expect(release_row(page, 2).locator("button")).to_have_count(0)  # the current release has no button
    release_row(page, 1).locator("button", has_text="Roll back to v1").click()
    expect(page.locator(".flash-ok")).to_contain_text("rollback to v1: v3 is live", timeout=SLOW)
    expect(release_row(page, 3)).to_contain_text("rollback to v1")
    expect(release_row(page, 3)).to_contain_text("active")
    expect(page.locator("#releases tbody tr").first).to_have_attribute("data-version", "3")
    expect(page.locator("#config tr[data-key='GREETING']")).to_have_count(0)
    assert daemon.get(APP).text.startswith("Hello from lbsolo!")


def test_form_posts_without_the_csrf_token_are_refused(daemon, page):
    before = daemon.api_get(f"/api/apps/{APP}/releases").json()
    for path, form in [
        (f"/ui/apps/{APP}/config", {"key": "SNEAKY", "value": "1"}),
        (f"/ui/apps/{APP}/config", {"key": "SNEAKY", "value": "1", "csrf": "forged"}),
        (f"/ui/apps/{APP}/rollback", {"version": "2"}),
        (f"/ui/apps/{APP}/scale", {"web": "3"}),
        ("/ui/logout", {}),
    ]:
        r = page.request.post(path, form=form, max_redirects=0)
        assert r.status == 403, (path, form, r.status)
    assert daemon.api_get(f"/api/apps/{APP}/releases").json() == before
    assert "SNEAKY" not in daemon.api_get(f"/api/apps/{APP}/config").json()


def test_a_script_in_a_config_value_is_shown_as_text(daemon, page):
    evil = "<script>alert(1)</script>"
    page.goto(f"/ui/apps/{APP}")
    form = page.locator("#config-form")
    form.locator("input[name=key]").fill("EVIL")
    form.locator("input[name=value]").fill(evil)
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash-ok")).to_contain_text("set EVIL", timeout=SLOW)
    expect(page.locator("#config tr[data-key='EVIL'] td.value")).to_have_text(evil)
    assert page.evaluate("() => [...document.scripts].map(s => s.src.split('?')[0])") == [
        f"{daemon.api}/ui/static/app.js"
    ]
    assert page.dialogs == []  # type: ignore[attr-defined]
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    raw = httpx.get(f"{daemon.api}/ui/apps/{APP}", cookies=cookies, timeout=10)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw.text and evil not in raw.text


def test_logout_ends_the_session(daemon, page):
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    page.click("nav button", timeout=5_000)
    expect(page).to_have_url(f"{daemon.api}/ui/login")
    page.goto("/ui/")
    expect(page.locator("h1")).to_have_text("Log in")
    stale = httpx.get(f"{daemon.api}/ui/", cookies=cookies, timeout=10)
    assert stale.status_code == 303


def test_dashboard_graphs_and_webhook_deliveries_are_shown(daemon, page):
    with webhook_receiver() as receiver:
        page.goto("/ui/login")
        page.fill("#token", daemon.token)
        page.click("button[type=submit]")
        expect(page.locator(f"#apps tr[data-app='{APP}'] td.spark")).to_have_count(3)
        url = receiver.url
        assert daemon.cli("webhooks:add", url, "--event", "scaled").returncode == 0
        assert daemon.cli("scale", APP, "web=1").returncode == 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            page.goto("/ui/webhooks")
            if page.locator(".delivery").count():
                break
            time.sleep(0.5)
        expect(page.locator(".hook").first).to_contain_text(url)
        expect(page.locator(".delivery").first).to_contain_text("scaled")
        expect(page.locator(".delivery").first).to_contain_text("204")


def test_custom_domains_from_the_app_page(daemon, page):
    page.goto(f"/ui/apps/{APP}")
    if "/ui/login" in page.url:
        page.fill("#token", daemon.token)
        page.click("button[type=submit]")
        page.goto(f"/ui/apps/{APP}")
    page.locator("#domain-form input[name=domain]").fill("ui.example.test")
    page.locator("#domain-form button").click()
    expect(page.locator("#domains li[data-domain='ui.example.test']")).to_be_visible()
    r = httpx.get(f"http://127.0.0.1:{daemon.proxy_port}/", headers={"Host": "ui.example.test"}, timeout=10)
    assert r.status_code == 200
    page.locator("#domains li[data-domain='ui.example.test'] button").click()
    expect(page.locator("#domains li[data-domain='ui.example.test']")).to_have_count(0)


def test_static_route_from_the_routes_page(daemon, page):
    with host_service() as port:
        page.goto("/ui/")
        page.click("nav a[href='/ui/routes']")
        form = page.locator("#route-form")
        form.locator("input[name=name]").fill(APP)  # an app's name: refused, and said so
        form.locator("input[name=to]").fill(f"127.0.0.1:{port}")
        form.locator("button[type=submit]").click()
        expect(page.locator(".flash-error")).to_contain_text("is an app")
        form.locator("input[name=name]").fill("uiroute")
        form.locator("input[name=to]").fill(f"127.0.0.1:{port}")
        form.locator("input[name=domains]").fill("route.example.test")
        form.locator("button[type=submit]").click()
        row = page.locator("#routes tr[data-route='uiroute']")
        expect(row).to_contain_text("route.example.test")
        expect(row.locator("a.url")).to_have_attribute("href", f"http://uiroute.lbsolo.localhost:{daemon.proxy_port}")
        r = httpx.get(f"http://127.0.0.1:{daemon.proxy_port}/", headers={"Host": "route.example.test"}, timeout=10)
        assert r.text == "static service: / for route.example.test"
        screenshot(page, "web-routes.png")
        row.locator("button", has_text="Remove").click()
        expect(page.locator(".flash-ok")).to_contain_text("removed route uiroute")
        expect(page.locator("#routes tr[data-route='uiroute']")).to_have_count(0)


def test_screenshots_were_saved():
    for name in ("web-dashboard.png", "web-app.png"):
        path = ARTIFACTS / name
        assert path.exists() and path.stat().st_size > 5_000, path
        assert os.access(path, os.R_OK)
