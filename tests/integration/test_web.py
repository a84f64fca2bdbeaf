"""The web UI in a real browser (Debian's Chromium driven by Playwright) against a real daemon:
log in, see a CLI deploy appear, tail live logs, set config, scale and roll back through forms,
add and remove a static route; pages without a session go to login, forms without the CSRF token
are refused, output is escaped.

The module shares one daemon, one browser, one app deployed from the CLI and one logged-in
session, but no test relies on another having run: each reads the state it starts from (the app's
current release, its config) and makes what it needs (the release it rolls back to, its own
session to log out of), so any test passes alone and in any order. Screenshots go to
test-artifacts/ at the repo root, each checked where it is taken.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import EXAMPLES, ROOT, Daemon, host_service, running_daemon, webhook_receiver

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
def app(daemon: Daemon) -> str:
    """The module's one app, deployed from the CLI (examples/hello) before the first test that needs it."""
    assert daemon.cli("apps:create", APP).returncode == 0
    out = daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", APP)
    assert out.returncode == 0, out.stdout + out.stderr
    return APP


def new_context(browser, daemon: Daemon):
    context = browser.new_context(base_url=daemon.api, viewport={"width": 1100, "height": 900})
    context.set_default_timeout(20_000)
    return context


def open_page(context):
    """A page that records (and dismisses) any dialog a script opens, in `page.dialogs`."""
    pg = context.new_page()
    dialogs: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs  # type: ignore[attr-defined]
    return pg


def log_in(page, daemon: Daemon) -> None:
    page.goto("/ui/login")
    page.fill("#token", daemon.token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{daemon.api}/ui/")


@pytest.fixture(scope="module")
def session(browser, daemon: Daemon):
    """One browser context logged in through the form, shared like a user's session."""
    context = new_context(browser, daemon)
    first = context.new_page()
    log_in(first, daemon)
    first.close()
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(session) -> Iterator:
    """A new tab of the logged-in session."""
    pg = open_page(session)
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture
def anonymous(browser, daemon: Daemon) -> Iterator:
    """A page of a context of its own, without a session (logging in there logs in only there)."""
    context = new_context(browser, daemon)
    try:
        yield open_page(context)
    finally:
        context.close()


def release_of(daemon: Daemon, app: str) -> int:
    """The app's current release number, as the API says."""
    release = daemon.api_get(f"/api/apps/{app}").json()["release"]
    assert release and release.startswith("v"), release
    return int(release[1:])


def greeting(daemon: Daemon, app: str) -> str:
    """What the app says before ` release=` (examples/hello answers `<GREETING> from lbsolo! release=…`)."""
    return daemon.get(app).text.split(" release=")[0]


def screenshot(page, name: str) -> None:
    """Saves a screenshot and checks it was written now (an older file of that name goes first)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000 and os.access(path, os.R_OK), path


def release_row(page, version: int):
    return page.locator(f"#releases tr[data-version='{version}']")


def test_ui_pages_redirect_to_login_without_a_session(daemon, anonymous):
    page = anonymous
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
    expect(page.locator(".flash-error")).to_contain_text("not a token of this lbsolo")


def test_login_then_see_an_app_deployed_from_the_cli(daemon, anonymous):
    """A new app deployed from the CLI shows on the dashboard by itself (its own app: the
    module's shared one may exist already), and goes again afterwards."""
    page, name = anonymous, "webcli"
    log_in(page, daemon)
    cookie = next(c for c in page.context.cookies() if c["name"] == "lbsolo_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    row = page.locator(f"#apps tr[data-app='{name}']")
    expect(row).to_have_count(0)

    assert daemon.cli("apps:create", name).returncode == 0
    try:
        out = daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", name)
        assert out.returncode == 0, out.stdout + out.stderr
        # The dashboard refreshes its list by itself.
        expect(row).to_contain_text("running", timeout=20_000)
        url = f"http://{name}.lbsolo.localhost:{daemon.proxy_port}"
        expect(row.locator("a.url")).to_have_attribute("href", url)
        expect(row).to_contain_text("v1")
        expect(page.locator("#recent")).to_contain_text(f"{name} v1")
        page.reload()
        expect(page.locator("#events li", has_text="deploy.succeeded").filter(has_text=name).first).to_be_visible()
        screenshot(page, "web-dashboard.png")
    finally:
        assert daemon.cli("destroy", name, "--yes").returncode == 0


def test_app_page_tails_logs_live_with_a_filter(daemon, app, page):
    version = release_of(daemon, app)
    page.goto("/ui/")
    page.click(f"#apps a[href='/ui/apps/{app}']")
    expect(page.locator("#summary h1")).to_contain_text(app)
    expect(page.locator("#log-state")).to_have_attribute("data-state", "live")
    logs = page.locator("#logs")
    expect(logs).to_contain_text(f"hello v{version} listening")  # the backlog comes first
    probe = f"probe-{time.monotonic_ns()}"
    # The app logs every request it answers; an unknown path makes a line no one else can.
    assert daemon.get(app, f"/{probe}").status_code == 404
    expect(logs).to_contain_text(probe)
    page.fill("#log-filter", probe)
    expect(logs.locator("div", has_text=probe)).to_be_visible()
    listening = logs.locator("div", has_text="listening")  # one line per replica started so far
    expect(listening.filter(visible=True)).to_have_count(0)
    page.fill("#log-filter", "")
    expect(listening.last).to_be_visible()


def test_set_config_through_the_form_makes_a_release(daemon, app, page):
    new = release_of(daemon, app) + 1
    page.goto(f"/ui/apps/{app}")
    form = page.locator("#config-form")
    form.locator("input[name=key]").fill("GREETING")
    form.locator("input[name=value]").fill("Howdy")
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash-ok")).to_contain_text(f"set GREETING: v{new} is live", timeout=SLOW)
    expect(release_row(page, new)).to_contain_text("config: set GREETING")
    expect(release_row(page, new)).to_contain_text("active")
    expect(page.locator("#config tr[data-key='GREETING']")).to_contain_text("Howdy")
    assert greeting(daemon, app) == "Howdy from lbsolo!"
    expect(page.locator("#log-state")).to_have_attribute("data-state", "live")
    expect(page.locator("#logs")).to_contain_text(f"hello v{new} listening")
    screenshot(page, "web-app.png")


def test_app_page_graphs_cpu_memory_and_requests(daemon, app, page):
    for _ in range(5):
        daemon.get(app)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page.goto(f"/ui/apps/{app}")
        if page.locator("#graphs polyline").count() >= 2:
            break
        time.sleep(2)
    graphs = page.locator("#graphs")
    expect(graphs).to_contain_text("CPU")
    expect(graphs).to_contain_text("Memory")
    assert page.locator("#graphs polyline").count() >= 2  # CPU and memory were sampled from Docker
    screenshot(page, "web-app-graphs.png")


def test_pages_fit_a_phone_width_screen(app, page):
    page.set_viewport_size({"width": 390, "height": 844})
    for path, shot in (("/ui/", "web-dashboard-phone.png"), (f"/ui/apps/{app}", "web-app-phone.png")):
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), path
        screenshot(page, shot)


def test_scale_web_through_the_form(daemon, app, page):
    page.goto(f"/ui/apps/{app}")
    page.fill("#web-count", "2")
    page.click("#scale-form button[type=submit]")
    expect(page.locator(".flash-ok")).to_contain_text("scaled web to 2", timeout=SLOW)
    expect(page.locator("#processes tbody tr")).to_have_count(2)
    page.fill("#web-count", "1")
    page.click("#scale-form button[type=submit]")
    expect(page.locator(".flash-ok")).to_contain_text("scaled web to 1", timeout=SLOW)
    expect(page.locator("#processes tbody tr")).to_have_count(1)


def test_roll_back_from_the_releases_list(daemon, app, page):
    """Rolls back over a release made here: the app is as it was before, under a new number."""
    old = release_of(daemon, app)
    old_config = daemon.api_get(f"/api/apps/{app}/config").json()
    old_greeting = greeting(daemon, app)
    out = daemon.cli("config:set", app, "GREETING=Bonjour")
    assert out.returncode == 0, out.stdout + out.stderr
    assert greeting(daemon, app) == "Bonjour from lbsolo!"

    page.goto(f"/ui/apps/{app}")
    expect(release_row(page, old + 1).locator("button")).to_have_count(0)  # the current release has no button
    release_row(page, old).locator("button", has_text=f"Roll back to v{old}").click()
    expect(page.locator(".flash-ok")).to_contain_text(f"rollback to v{old}: v{old + 2} is live", timeout=SLOW)
    expect(release_row(page, old + 2)).to_contain_text(f"rollback to v{old}")
    expect(release_row(page, old + 2)).to_contain_text("active")
    expect(page.locator("#releases tbody tr").first).to_have_attribute("data-version", str(old + 2))
    expect(page.locator("#config")).not_to_contain_text("Bonjour")
    assert daemon.api_get(f"/api/apps/{app}/config").json() == old_config
    assert greeting(daemon, app) == old_greeting


def test_form_posts_without_the_csrf_token_are_refused(daemon, app, page):
    before = daemon.api_get(f"/api/apps/{app}/releases").json()
    for path, form in [
        (f"/ui/apps/{app}/config", {"key": "SNEAKY", "value": "1"}),
        (f"/ui/apps/{app}/config", {"key": "SNEAKY", "value": "1", "csrf": "forged"}),
        (f"/ui/apps/{app}/rollback", {"version": "1"}),
        (f"/ui/apps/{app}/scale", {"web": "3"}),
        ("/ui/logout", {}),
    ]:
        r = page.request.post(path, form=form, max_redirects=0)
        assert r.status == 403, (path, form, r.status)
    assert daemon.api_get(f"/api/apps/{app}/releases").json() == before
    assert "SNEAKY" not in daemon.api_get(f"/api/apps/{app}/config").json()


def test_a_script_in_a_config_value_is_shown_as_text(daemon, app, page):
    evil = "<script>alert(1)</script>"
    page.goto(f"/ui/apps/{app}")
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
    raw = httpx.get(f"{daemon.api}/ui/apps/{app}", cookies=cookies, timeout=10)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw.text and evil not in raw.text


def test_logout_ends_the_session(daemon, anonymous):
    """Logs out of a session of its own: the module's shared one stays."""
    page = anonymous
    log_in(page, daemon)
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    page.click("nav button", timeout=5_000)
    expect(page).to_have_url(f"{daemon.api}/ui/login")
    page.goto("/ui/")
    expect(page.locator("h1")).to_have_text("Log in")
    stale = httpx.get(f"{daemon.api}/ui/", cookies=cookies, timeout=10)
    assert stale.status_code == 303


def test_dashboard_graphs_and_webhook_deliveries_are_shown(daemon, app, page):
    page.goto("/ui/")
    expect(page.locator(f"#apps tr[data-app='{app}'] td.spark")).to_have_count(3)
    with webhook_receiver() as receiver:
        out = daemon.cli("webhooks:add", receiver.url, "--event", "scaled")
        assert out.returncode == 0, out.stdout + out.stderr
        hook_id = re.search(r"webhook (\S+) added", out.stdout).group(1)  # type: ignore[union-attr]
        try:
            assert daemon.cli("scale", app, "web=1").returncode == 0
            deadline = time.monotonic() + 20
            hook = page.locator(f".hook[data-hook='{hook_id}']")
            while time.monotonic() < deadline:
                page.goto("/ui/webhooks")
                if hook.locator(".delivery").count():
                    break
                time.sleep(0.5)
            expect(hook).to_contain_text(receiver.url)
            expect(hook.locator(".delivery").first).to_contain_text("scaled")
            expect(hook.locator(".delivery").first).to_contain_text("204")
        finally:
            assert daemon.cli("webhooks:remove", hook_id).returncode == 0  # later events go nowhere


def test_custom_domains_from_the_app_page(daemon, app, page):
    page.goto(f"/ui/apps/{app}")
    page.locator("#domain-form input[name=domain]").fill("ui.example.test")
    page.locator("#domain-form button").click()
    expect(page.locator("#domains li[data-domain='ui.example.test']")).to_be_visible()
    r = httpx.get(f"http://127.0.0.1:{daemon.proxy_port}/", headers={"Host": "ui.example.test"}, timeout=10)
    assert r.status_code == 200
    page.locator("#domains li[data-domain='ui.example.test'] button").click()
    expect(page.locator("#domains li[data-domain='ui.example.test']")).to_have_count(0)


def test_static_route_from_the_routes_page(daemon, app, page):
    with host_service() as port:
        page.goto("/ui/")
        page.click("nav a[href='/ui/routes']")
        form = page.locator("#route-form")
        form.locator("input[name=name]").fill(app)  # an app's name: refused, and said so
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
