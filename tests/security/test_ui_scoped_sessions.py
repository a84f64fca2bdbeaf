"""A web UI session opened with a scoped token may do what the token may, no more (issue 16).

The real API (create_api: the guard, the UI router) over the guard tests' fake Platform (apps
"hello" and "other"), on a real uvicorn on port 0. Each refused form carries a valid CSRF token,
so without the guard's UI check it would be carried out: the tests see the difference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest

from lbsolo.api.scopes import UI_AS_API, UI_OPEN, ui_allowed, ui_refusal
from lbsolo.api.web_session import COOKIE, Session, Sessions
from tests.security.test_api_guard import ADMIN, serve


@pytest.fixture
def served(tmp_path):
    with serve(tmp_path, "httptools") as s:
        s.platform.apps.add("other")
        assert s.tokens is not None
        s.made = {  # type: ignore[attr-defined]
            "reader": s.tokens.create("reader", "read")[1],
            "deployer": s.tokens.create("deployer", "deploy", ["hello"])[1],
        }
        yield s


@contextlib.contextmanager
def log_in(served, secret: str) -> Iterator[tuple[httpx.Client, str]]:
    """A client holding the session cookie of this token, and that session's CSRF token."""
    with httpx.Client(base_url=f"http://127.0.0.1:{served.port}") as client:
        r = client.post("/ui/login", data={"token": secret, "next": "/ui/"})
        assert r.status_code == 303, r.text
        sid, expires = client.cookies[COOKIE].split(".")[:2]
        yield client, Sessions(ADMIN).csrf_token(Session(sid, int(expires)))


def test_a_read_tokens_session_may_look_but_not_post_or_open_the_admins_pages(served):
    """Without the guard's UI branch (ApiGuard._serve, `ui_caller`) the config form answers 303
    and sets A, and the audit page answers 200."""
    with log_in(served, served.made["reader"]) as (client, csrf):
        r = client.post("/ui/apps/hello/config", data={"csrf": csrf, "key": "A", "value": "1"})
        assert r.status_code == 403
        assert r.headers["content-type"].startswith("text/html")
        assert "a read token may only read (GET)" in r.text
        assert served.platform.configs == {}
        audit = client.get("/ui/audit")
        assert audit.status_code == 403 and "/api/audit is for admin tokens" in audit.text


def test_a_session_limited_to_one_app_changes_that_app_and_no_other(served):
    with log_in(served, served.made["deployer"]) as (client, csrf):
        refused = client.post("/ui/apps/other/config", data={"csrf": csrf, "key": "A", "value": "1"})
        assert refused.status_code == 403 and "limited to the apps hello, not &#x27;other&#x27;" in refused.text
        done = client.post("/ui/apps/hello/config", data={"csrf": csrf, "key": "A", "value": "1"})
        assert done.status_code == 303
        assert served.platform.configs == {"hello": {"A": "1"}}
        assert client.post("/ui/routes", data={"csrf": csrf, "host": "x.example"}).status_code == 403


def test_revoking_the_token_ends_its_sessions(served):
    with log_in(served, served.made["deployer"]) as (client, csrf):
        served.tokens.revoke("deployer")
        page = client.get("/ui/")
        assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
        r = client.post("/ui/apps/hello/config", data={"csrf": csrf, "key": "A", "value": "1"})
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        assert served.platform.configs == {}


def test_a_forged_token_id_in_a_cookie_is_no_session(served):
    """The token id is inside the signed part: changing it breaks the signature."""
    with log_in(served, served.made["reader"]) as (client, _):
        sid, expires, token_id, signature = client.cookies[COOKIE].split(".")
        client.cookies.clear()
        client.cookies.set(COOKIE, f"{sid}.{expires}.{'0' * len(token_id)}.{signature}")
        assert client.get("/ui/audit").status_code == 303  # to the login page


def test_the_admins_session_is_unchanged(served):
    with log_in(served, ADMIN) as (client, csrf):
        assert client.post("/ui/apps/other/config", data={"csrf": csrf, "key": "B", "value": "2"}).status_code == 303
        assert client.get("/ui/audit").status_code == 200


def test_every_ui_route_acts_as_a_real_api_route_and_unlisted_ones_are_the_admins(tmp_path):
    routes = api_routes(tmp_path)
    for (method, template), (api_method, api_template) in UI_AS_API.items():
        assert (method, template) in routes, f"{method} {template} is no UI route"
        assert (api_method, api_template) in routes, f"{api_method} {api_template} is no API route"
    unlisted = {p for m, p in routes if p.startswith("/ui") and m == "POST" and (m, p) not in UI_AS_API}
    unlisted.discard("/ui/login")
    assert "/ui/apps/{name}/domains" in unlisted and "/ui/addons/{name}/destroy" in unlisted
    for template in unlisted:
        assert ui_refusal("admin", ("hello",), "POST", template, {"name": "hello"}) is not None
        assert ui_refusal("deploy", (), "POST", template, {"name": "hello"}) is not None
        assert ui_refusal("admin", (), "POST", template, {"name": "hello"}) is None
    assert all(ui_refusal("read", ("x",), "GET", t, {}) is None for t in UI_OPEN)


def api_routes(tmp_path) -> set[tuple[str, str]]:
    """(method, template) of every route of the whole API, built as the daemon builds it."""
    from lbsolo.api.rest import create_api
    from lbsolo.api.route_index import flat_routes
    from lbsolo.api.tokens import TokenStore
    from lbsolo.config import Settings
    from lbsolo.events import EventBus
    from lbsolo.notify import WebhookNotifier
    from lbsolo.run_stats import StatsSampler
    from lbsolo.state import State
    from tests.security.test_api_guard import FakePlatform

    state = State(tmp_path / "state.json")
    try:
        bus = EventBus()
        platform = FakePlatform(Settings(home=tmp_path), state)
        app = create_api(
            platform,  # type: ignore[arg-type]
            ADMIN,
            bus=bus,
            notifier=WebhookNotifier(state, bus),
            sampler=StatsSampler(lambda: {}, interval=5),
            tokens=TokenStore(state),
        )
        return {(m, template) for methods, _, template in flat_routes(app.routes) for m in methods}
    finally:
        state.close()


def test_what_the_pages_show_follows_the_same_rule():
    assert ui_allowed("deploy", ("hello",), "POST", "/ui/apps/hello/scale")
    assert not ui_allowed("deploy", ("hello",), "POST", "/ui/apps/other/scale")
    assert not ui_allowed("deploy", ("hello",), "POST", "/ui/apps/hello/domains")
    assert not ui_allowed("read", (), "GET", "/ui/webhooks")
    assert ui_allowed("read", (), "GET", "/ui/routes")
    assert not ui_allowed("read", (), "GET", "/ui/addons/db/backups/b1/download")
    assert ui_allowed("admin", (), "POST", "/ui/anything/at/all")
