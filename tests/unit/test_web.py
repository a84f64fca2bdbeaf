"""The web UI without Docker: session cookies, CSRF tokens and form checks as pure functions, then
the router in-process against a hand-written fake Platform (login, redirects, CSRF, escaping)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from lbsolo.api.web import (
    COOKIE,
    Session,
    Sessions,
    create_web_router,
    job_outcome,
    parse_form,
    safe_next,
    same_origin,
    split_domains,
    sse_event,
)
from lbsolo.build import LogBuffer
from lbsolo.core import DeployJob
from lbsolo.errors import Conflict, NotFound
from lbsolo.models import StaticRoute, masked_config, validate_config_key

TOKEN = "admin-token-for-tests"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# ---- sessions --------------------------------------------------------------------------------


def test_issued_cookie_verifies_until_it_expires():
    clock = Clock()
    sessions = Sessions(TOKEN, max_age=60, clock=clock)
    session, cookie = sessions.issue()
    assert sessions.verify(cookie) == session
    clock.now += 59
    assert sessions.verify(cookie) == session
    clock.now += 1
    assert sessions.verify(cookie) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-1] + ("A" if c[-1] != "A" else "B"),  # signature
        lambda c: "x" + c,  # session id
        lambda c: c.replace(".", ".9", 1),  # expiry pushed out
        lambda c: c.rsplit(".", 1)[0],  # no signature
        lambda c: "",
        lambda c: "a.b.c",
        lambda c: c + "." + "A" * 300,
    ],
)
def test_tampered_cookie_is_refused(tamper):
    sessions = Sessions(TOKEN)
    _, cookie = sessions.issue()
    assert sessions.verify(tamper(cookie)) is None


def test_cookie_of_another_token_is_refused():
    _, cookie = Sessions("another-token").issue()
    assert Sessions(TOKEN).verify(cookie) is None
    assert Sessions(TOKEN).verify(None) is None


def test_sessions_survive_a_restart_but_not_a_logout():
    session, cookie = Sessions(TOKEN).issue()
    restarted = Sessions(TOKEN)
    assert restarted.verify(cookie) == session
    restarted.revoke(session)
    assert restarted.verify(cookie) is None


def test_revoked_ids_are_forgotten_once_expired():
    clock = Clock()
    sessions = Sessions(TOKEN, max_age=10, clock=clock)
    old, _ = sessions.issue()
    sessions.revoke(old)
    clock.now += 11
    new, _ = sessions.issue()
    sessions.revoke(new)
    assert set(sessions._revoked) == {new.id}


def test_csrf_token_is_per_session_and_checked():
    sessions = Sessions(TOKEN)
    a, _ = sessions.issue()
    b, _ = sessions.issue()
    token = sessions.csrf_token(a)
    assert sessions.check_csrf(a, token)
    assert not sessions.check_csrf(b, token)
    assert not sessions.check_csrf(a, None)
    assert not sessions.check_csrf(a, "")
    assert not sessions.check_csrf(a, token[:-1])
    assert Sessions("other").csrf_token(a) != token
    assert not sessions.check_csrf(Session(a.id, a.expires), token + "x")


def test_admin_token_check():
    sessions = Sessions(TOKEN)
    assert sessions.check_token(TOKEN)
    assert sessions.check_token(f" {TOKEN}\n")
    assert not sessions.check_token("")
    assert not sessions.check_token(TOKEN[:-1])


# ---- small decisions ---------------------------------------------------------------------------


def test_same_origin():
    assert same_origin(None, "127.0.0.1:7780")
    assert same_origin("http://127.0.0.1:7780", "127.0.0.1:7780")
    assert same_origin("http://LBSOLO.localhost:8080", "lbsolo.localhost:8080")
    assert not same_origin("http://evil.example", "127.0.0.1:7780")
    assert not same_origin("http://127.0.0.1:7781", "127.0.0.1:7780")
    assert not same_origin("null", "127.0.0.1:7780")
    assert not same_origin("http://127.0.0.1:7780", None)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "/ui/"),
        ("/ui/apps/hello", "/ui/apps/hello"),
        ("//evil.example/ui/", "/ui/"),
        ("https://evil.example/", "/ui/"),
        ("/ui/\\evil", "/ui/"),
        ("/api/apps", "/ui/"),
    ],
)
def test_safe_next(given, expected):
    assert safe_next(given) == expected


def test_parse_form():
    assert parse_form(b"key=A&value=%3Cscript%3E&value=last&empty=") == {"key": "A", "value": "last", "empty": ""}
    with pytest.raises(Exception, match="unreadable"):
        parse_form(b"\xff\xfe")


def test_sse_event():
    assert sse_event({"line": "a\nb"}, "1.5") == b'id: 1.5\ndata: {"line":"a\\nb"}\n\n'


def test_split_domains():
    assert split_domains("") == []
    assert split_domains(" a.test, b.test  c.test,,\n") == ["a.test", "b.test", "c.test"]


def test_job_outcome():
    assert job_outcome(None, "set A")[0] == "ok"
    job = DeployJob(app="a", output=LogBuffer(), result={"ok": True, "release": "v3"})
    assert job_outcome(job, "set A") == ("ok", "set A: v3 is live")
    job.result = {"ok": False, "error": {"code": "deploy_failed", "message": "boom"}}
    assert job_outcome(job, "rollback to v1") == ("error", "rollback to v1 failed: boom")


# ---- the router against a fake platform -------------------------------------------------------


class FakeCron:
    """The scheduled jobs' use cases the app page's section calls."""

    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls
        self.jobs: list[dict[str, Any]] = []

    async def listing(self, name: str) -> list[dict[str, Any]]:
        return list(self.jobs)

    async def runs(self, name: str, ref: str | None = None) -> list[dict[str, Any]]:
        return []

    async def add(self, name: str, schedule: str, command: str, job_name: str | None, overlap: str) -> dict[str, Any]:
        from lbsolo.addon_dumps import check_schedule

        check_schedule(schedule)
        self.calls.append(("cron:add", name, schedule, command))
        job = {
            "id": "c1", "name": job_name, "schedule": schedule, "command": command, "source": "cli",
            "next_run_local": "2027-01-01 03:00 UTC", "last_run": None,
        }  # fmt: skip
        self.jobs.append(job)
        return job


class FakeDrains:
    """The log drains' use cases the app page's section calls, over the pure part's checks."""

    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls
        self.drains: list[Any] = []

    async def listing(self, name: str) -> list[dict[str, Any]]:
        counters = {"state": "failing", "delivered": 7, "dropped": 2, "failed_attempts": 3, "buffered": 1,
                    "spilled": 0, "last_error": "connection refused <x>", "last_error_at": 1.0}  # fmt: skip
        return [{**d.shown(), **counters} for d in self.drains]

    async def add(self, name: str, url: str) -> dict[str, Any]:
        from lbsolo.drains import new_drain

        drain = new_drain(name, url, self.drains, 1.0)
        self.calls.append(("drains:add", name, url))
        self.drains.append(drain)
        return (await self.listing(name))[-1]

    async def remove(self, name: str, ref: str) -> str:
        self.calls.append(("drains:remove", name, ref))
        self.drains = [d for d in self.drains if d.id != ref]
        return ref


class FakePlatform:
    """Just the Platform use cases the UI calls, over dicts."""

    def __init__(self) -> None:
        self.config: dict[str, str] = {"GREETING": "hi", "DB_PASSWORD": "hunter2"}
        self.calls: list[tuple[Any, ...]] = []
        self.web = 1
        self.redirect = False
        self.buffering = True
        self.https_port: int | None = None
        self.routes: dict[str, dict[str, Any]] = {}
        self.cron = FakeCron(self.calls)
        self.drains = FakeDrains(self.calls)

    def _app(self) -> dict[str, Any]:
        return {
            "name": "hello",
            "status": "running",
            "release": "v2",
            "url": "http://hello.lbsolo.localhost:8080",
            "replicas": 1,
            "formation": {"web": self.web},
            "restarts": 0,
            "config": masked_config(self.config, []),
            "request_buffering": self.buffering,
        }

    async def list_apps(self) -> list[dict[str, Any]]:
        return [self._app()]

    async def get_app(self, name: str) -> dict[str, Any]:
        if name != "hello":
            raise NotFound(f"no app {name}")
        return self._app()

    async def releases(self, name: str) -> list[dict[str, Any]]:
        await self.get_app(name)
        return [
            {"app": name, "version": 1, "status": "superseded", "description": "deploy", "created_at": 1.0},
            {"app": name, "version": 2, "status": "active", "description": "deploy", "created_at": 2.0},
        ]

    async def recent_releases(self, limit: int = 10) -> list[dict[str, Any]]:
        return list(reversed(await self.releases("hello")))[:limit]

    async def replicas(self, name: str) -> list[Any]:
        await self.get_app(name)
        return []

    async def _job(self) -> DeployJob:
        job = DeployJob(app="hello", output=LogBuffer(), result={"ok": True, "release": "v3"})

        async def done() -> None:
            await asyncio.sleep(0)

        job.task = asyncio.create_task(done())
        return job

    async def set_config(self, name: str, values: dict[str, str], unset: list[str], secret: bool) -> DeployJob:
        await self.get_app(name)
        for key in [*values, *unset]:
            validate_config_key(key)
        self.calls.append(("config", values, unset, secret))
        self.config.update(values)
        return await self._job()

    async def rollback(self, name: str, version: int | None) -> DeployJob:
        self.calls.append(("rollback", version))
        return await self._job()

    async def scale(self, name: str, formation: dict[str, int]) -> dict[str, Any]:
        self.calls.append(("scale", formation))
        self.web = formation["web"]
        return self._app()

    async def https(self, name: str) -> dict[str, Any]:
        await self.get_app(name)
        return {"name": name, "redirect": self.redirect, "active": bool(self.https_port)}

    async def set_https(self, name: str, redirect: bool | None) -> dict[str, Any]:
        await self.get_app(name)
        self.calls.append(("https", redirect))
        if redirect is not None:
            self.redirect = redirect
        return await self.https(name)

    async def set_proxy_settings(self, name: str, request_buffering: bool | None) -> dict[str, Any]:
        await self.get_app(name)
        self.calls.append(("proxy", request_buffering))
        if request_buffering is not None:
            self.buffering = request_buffering
        return {"name": name, "request_buffering": self.buffering}

    async def static_routes(self) -> list[dict[str, Any]]:
        return list(self.routes.values())

    async def add_static_route(self, name: str, to: str, domains: list[str]) -> dict[str, Any]:
        route = StaticRoute.create(name, to, domains)  # the real validation, as core does
        if name == "hello":
            raise Conflict(f"{name!r} is an app; a static route cannot take its name")
        self.calls.append(("route:add", name, route.to, route.domains))
        self.routes[name] = {**route.to_dict(), "url": f"http://{name}.lbsolo.localhost:8080"}
        return self.routes[name]

    async def remove_static_route(self, name: str) -> None:
        if self.routes.pop(name, None) is None:
            raise NotFound(f"no static route {name!r}")
        self.calls.append(("route:remove", name))


@pytest.fixture
def platform() -> FakePlatform:
    return FakePlatform()


class Client:
    """The router in-process through httpx's ASGI transport, on one event loop kept across calls."""

    def __init__(self, app: FastAPI) -> None:
        self.loop = asyncio.new_event_loop()
        transport = httpx.ASGITransport(app=app)
        self.http = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:7780")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.http.get(path, **kw))

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.http.post(path, **kw))

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


@pytest.fixture
def client(platform):
    app = FastAPI()
    app.include_router(create_web_router(platform, TOKEN, bus=None, notifier=None, sampler=None))  # type: ignore[arg-type]
    c = Client(app)
    yield c
    c.close()


def login(client: Client) -> str:
    r = client.post("/ui/login", data={"token": TOKEN, "next": "/ui/apps/hello"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/apps/hello"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    page = client.get("/ui/apps/hello")
    assert page.status_code == 200
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def test_pages_redirect_to_login_without_a_session(client):
    assert client.get("/").headers["location"] == "/ui/"
    for path in ("/ui/", "/ui/apps/hello", "/ui/apps/nosuch", "/ui/routes"):
        r = client.get(path)
        assert r.status_code == 303
        assert r.headers["location"].startswith("/ui/login?next=")
    assert client.get("/ui/apps/hello/logs/stream").status_code == 401
    r = client.post("/ui/apps/hello/config", data={"key": "A", "value": "1"})
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


def test_wrong_token_stays_on_login(client):
    r = client.post("/ui/login", data={"token": "nope"})
    assert r.status_code == 401 and "not a token of this lbsolo" in r.text
    assert COOKIE not in r.headers.get("set-cookie", "")


def test_forms_need_the_csrf_token(client, platform):
    csrf = login(client)
    assert client.post("/ui/apps/hello/config", data={"key": "A", "value": "1"}).status_code == 403
    assert client.post("/ui/apps/hello/config", data={"key": "A", "value": "1", "csrf": "x"}).status_code == 403
    assert client.post("/ui/apps/hello/rollback", data={"version": "1"}).status_code == 403
    assert client.post("/ui/apps/hello/scale", data={"web": "2"}).status_code == 403
    assert client.post("/ui/logout").status_code == 403
    assert client.post("/ui/apps/hello/https", data={"redirect": "on"}).status_code == 403
    assert client.post("/ui/routes", data={"name": "db", "to": "127.0.0.1:5432", "csrf": "x"}).status_code == 403
    assert client.post("/ui/routes/remove", data={"name": "db"}).status_code == 403
    other_site = client.post(
        "/ui/apps/hello/config", data={"key": "A", "value": "1", "csrf": csrf}, headers={"Origin": "http://evil"}
    )
    assert other_site.status_code == 403
    assert platform.calls == []

    r = client.post("/ui/apps/hello/config", data={"key": "A", "value": "1", "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/apps/hello"
    assert "set A: v3 is live" in client.get("/ui/apps/hello").text
    assert client.post("/ui/apps/hello/rollback", data={"version": "v1", "csrf": csrf}).status_code == 303
    assert client.post("/ui/apps/hello/scale", data={"web": "3", "csrf": csrf}).status_code == 303
    assert platform.calls == [("config", {"A": "1"}, [], False), ("rollback", 1), ("scale", {"web": 3})]


def test_bad_input_comes_back_as_a_flash(client, platform):
    csrf = login(client)
    r = client.post("/ui/apps/hello/scale", data={"web": "many", "csrf": csrf})
    assert r.status_code == 303
    assert "expected TYPE=COUNT" in client.get("/ui/apps/hello").text
    client.post("/ui/apps/hello/config", data={"key": "1BAD", "value": "x", "csrf": csrf})
    assert "invalid config key" in client.get("/ui/apps/hello").text
    assert platform.calls == []


def test_output_is_escaped_and_secrets_masked(client, platform):
    platform.config["XSS"] = "<script>alert(1)</script>"
    login(client)
    page = client.get("/ui/apps/hello")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert(1)" not in page.text
    assert "hunter2" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_https_redirect_is_shown_and_toggled(client, platform):
    csrf = login(client)
    page = client.get("/ui/apps/hello").text
    assert 'id="https-state">served as they are' in page
    assert 'name="redirect" value="on"' in page
    assert 'id="https-inactive"' in page  # no HTTPS listener: the flag would do nothing yet

    r = client.post("/ui/apps/hello/https", data={"redirect": "on", "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/apps/hello"
    page = client.get("/ui/apps/hello").text
    assert "HTTPS redirect on (no effect until the proxy has an HTTPS listener)" in page
    assert 'id="https-state">redirected' in page and 'name="redirect" value="off"' in page

    platform.https_port = 8443
    client.post("/ui/apps/hello/https", data={"redirect": "off", "csrf": csrf})
    page = client.get("/ui/apps/hello").text
    assert "HTTPS redirect off</p>" in page and 'id="https-inactive"' not in page
    assert platform.calls == [("https", True), ("https", False)]


def test_https_redirect_form_refuses_other_values_and_unknown_apps(client, platform):
    csrf = login(client)
    client.post("/ui/apps/hello/https", data={"redirect": "yes", "csrf": csrf})
    assert "redirect must be on or off" in client.get("/ui/apps/hello").text
    r = client.post("/ui/apps/nosuch/https", data={"redirect": "on", "csrf": csrf})
    assert r.headers["location"] == "/ui/apps/nosuch"
    assert platform.calls == []


def test_request_buffering_is_shown_and_switched(client, platform):
    csrf = login(client)
    page = client.get("/ui/apps/hello").text
    assert 'id="buffering-state">On' in page and 'name="request_buffering" value="off"' in page
    r = client.post("/ui/apps/hello/proxy", data={"request_buffering": "off", "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/apps/hello"
    page = client.get("/ui/apps/hello").text
    assert "request buffering off" in page
    assert 'id="buffering-state">Off' in page and 'name="request_buffering" value="on"' in page
    client.post("/ui/apps/hello/proxy", data={"request_buffering": "sometimes", "csrf": csrf})
    assert "request_buffering must be on or off" in client.get("/ui/apps/hello").text
    assert client.post("/ui/apps/hello/proxy", data={"request_buffering": "on"}).status_code == 403  # no CSRF token
    assert platform.calls == [("proxy", False)]


def test_routes_page_adds_and_removes_static_routes(client, platform):
    csrf = login(client)
    page = client.get("/ui/routes")
    assert page.status_code == 200 and "No static routes." in page.text
    assert 'href="/ui/routes"' in client.get("/ui/").text  # linked from the nav

    form = {"name": "grafana", "to": "127.0.0.1:3000", "domains": "g.example.test, metrics.example.test", "csrf": csrf}
    r = client.post("/ui/routes", data=form)
    assert r.status_code == 303 and r.headers["location"] == "/ui/routes"
    page = client.get("/ui/routes").text
    assert "added route grafana to 127.0.0.1:3000" in page
    assert '<tr data-route="grafana">' in page
    assert 'href="http://grafana.lbsolo.localhost:8080"' in page
    assert 'href="http://metrics.example.test"' in page
    assert platform.calls == [("route:add", "grafana", "127.0.0.1:3000", ["g.example.test", "metrics.example.test"])]

    r = client.post("/ui/routes/remove", data={"name": "grafana", "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/routes"
    page = client.get("/ui/routes").text
    assert "removed route grafana" in page and "data-route=" not in page


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"name": "Bad_Name", "to": "127.0.0.1:3000"}, "invalid route name"),
        ({"name": "db", "to": "db.internal:5432"}, "invalid address"),
        ({"name": "db", "to": "127.0.0.1:99999"}, "the port must be 1-65535"),
        ({"name": "db", "to": "127.0.0.1:5432", "domains": "not a domain!"}, "invalid domain"),
        ({"name": "hello", "to": "127.0.0.1:5432"}, "is an app; a static route cannot take its name"),
    ],
)
def test_route_errors_come_back_as_a_flash(client, platform, form, message):
    csrf = login(client)
    r = client.post("/ui/routes", data={**form, "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/routes"
    page = client.get("/ui/routes").text
    assert 'class="flash flash-error"' in page and message in page
    assert platform.routes == {}


def test_removing_an_unknown_route_is_a_flash(client):
    csrf = login(client)
    client.post("/ui/routes/remove", data={"name": "nosuch", "csrf": csrf})
    assert "no static route &#39;nosuch&#39;" in client.get("/ui/routes").text


def test_route_values_are_escaped(client, platform):
    # Core validates names and domains; the page must not rely on that to stay inert.
    evil = '"><script>alert(1)</script>'
    platform.routes[evil] = {"name": evil, "to": "127.0.0.1:1", "domains": [evil], "url": f"http://{evil}"}
    login(client)
    page = client.get("/ui/routes").text
    assert "<script>alert(1)" not in page
    assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # A hostile value echoed back in an error flash is escaped too.
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    client.post("/ui/routes", data={"name": evil, "to": "127.0.0.1:1", "csrf": csrf})
    page = client.get("/ui/routes").text
    assert "invalid route name" in page and "<script>alert(1)" not in page


def test_logout_ends_the_session(client):
    csrf = login(client)
    r = client.post("/ui/logout", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert client.get("/ui/").status_code == 303


def test_unknown_app_page_is_a_404_page(client):
    login(client)
    r = client.get("/ui/apps/nosuch")
    assert r.status_code == 404 and "no app nosuch" in r.text


def test_static_files_are_versioned_and_cached(client):
    r = client.get("/ui/static/app.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert "immutable" in r.headers["cache-control"]
    assert client.get("/ui/static/../web.py").status_code == 404
    assert client.get("/ui/static/nosuch.js").status_code == 404
    login(client)
    assert re.search(r'/ui/static/app\.js\?v=[0-9a-f]{10}"', client.get("/ui/").text)


def test_sparkline_scales_points_into_the_box():
    from lbsolo.api.web import sparkline

    assert sparkline([])["points"] == ""
    one = sparkline([(100.0, 5.0)], width=100, height=10)
    assert one["points"] == "0.0,1.0 100.0,1.0" and one["last"] == 5.0
    many = sparkline([(0.0, 0.0), (5.0, 2.0), (10.0, 4.0)], width=100, height=10)
    assert many["points"] == "0.0,9.0 50.0,5.0 100.0,1.0"


def test_the_app_page_adds_and_lists_scheduled_jobs(client, platform):
    csrf = login(client)
    assert client.post("/ui/apps/hello/cron", data={"schedule": "0 3 * * *", "command": "x"}).status_code == 403
    assert 'id="cron-form"' in client.get("/ui/apps/hello").text
    r = client.post("/ui/apps/hello/cron", data={"schedule": "61 * * * *", "command": "x", "csrf": csrf})
    assert r.status_code == 303 and "invalid schedule" in client.get("/ui/apps/hello").text
    assert platform.calls == []
    data = {"schedule": "0 3 * * *", "command": "echo <b>hi</b>", "name": "nightly", "csrf": csrf}
    assert client.post("/ui/apps/hello/cron", data=data).status_code == 303
    page = client.get("/ui/apps/hello").text
    assert "added job nightly" in page and 'data-job="c1"' in page and "echo &lt;b&gt;hi&lt;/b&gt;" in page
    assert "/ui/apps/hello/cron/c1/run" in page and "/ui/apps/hello/cron/c1/remove" in page


def test_the_app_page_adds_lists_and_removes_log_drains(client, platform):
    csrf = login(client)
    assert client.post("/ui/apps/hello/drains", data={"url": "syslog://127.0.0.1:514"}).status_code == 403
    assert (
        'id="drain-form"' in client.get("/ui/apps/hello").text and "No log drains" in client.get("/ui/apps/hello").text
    )
    r = client.post("/ui/apps/hello/drains", data={"url": "ftp://logs.example.com:21", "csrf": csrf})
    assert r.status_code == 303 and "unsupported drain scheme" in client.get("/ui/apps/hello").text
    assert platform.calls == []
    url = "https://user:hunter2secret@logs.example.com/in?token=t0ps3cret"
    assert client.post("/ui/apps/hello/drains", data={"url": url, "csrf": csrf}).status_code == 303
    page = client.get("/ui/apps/hello").text
    (drain,) = platform.drains.drains
    assert f'data-drain="{drain.id}"' in page and "added drain" in page
    assert "hunter2secret" not in page and "t0ps3cret" not in page and drain.token not in page
    assert "connection refused &lt;x&gt;" in page and 'class="drain-delivered">7<' in page
    assert client.post("/ui/apps/hello/drains", data={"url": url, "csrf": csrf}).status_code == 303
    assert "already drains to" in client.get("/ui/apps/hello").text and len(platform.drains.drains) == 1
    remove = f"/ui/apps/hello/drains/{drain.id}/remove"
    assert remove in page and client.post(remove, data={"csrf": csrf}).status_code == 303
    assert platform.drains.drains == [] and platform.calls[-1] == ("drains:remove", "hello", drain.id)


def test_a_scoped_tokens_session_sees_only_what_it_may_do(platform, tmp_path):
    """The page hides what the API guard would refuse: a deploy token of hello sees hello's config
    and scale forms, not its domains or cron forms, nor the admin's pages in the menu; a token of
    another app does not see hello on the dashboard."""
    from lbsolo.api.auth import Authenticator
    from lbsolo.api.tokens import TokenStore
    from lbsolo.state import State

    state = State(tmp_path / "state.json")
    tokens = TokenStore(state)
    _, deployer = tokens.create("ci", "deploy", ["hello"])
    _, elsewhere = tokens.create("shop", "read", ["shop"])
    app = FastAPI()
    auth = Authenticator(TOKEN, tokens)
    app.include_router(create_web_router(platform, TOKEN, bus=None, notifier=None, sampler=None, auth=auth))  # type: ignore[arg-type]
    client = Client(app)
    try:
        assert client.post("/ui/login", data={"token": deployer}).status_code == 303
        page = client.get("/ui/apps/hello").text
        assert 'id="config-form"' in page and 'id="scale-form"' in page
        assert 'id="domain-form"' not in page and 'id="cron-form"' not in page
        assert 'href="/ui/audit"' not in page and 'href="/ui/webhooks"' not in page
        assert "ci (deploy: hello)" in page
        client.http.cookies.clear()
        assert client.post("/ui/login", data={"token": elsewhere}).status_code == 303
        dashboard = client.get("/ui/")
        assert dashboard.status_code == 200 and "/ui/apps/hello" not in dashboard.text
        client.http.cookies.clear()
        assert client.post("/ui/login", data={"token": TOKEN}).status_code == 303
        admin = client.get("/ui/apps/hello").text
        assert 'id="domain-form"' in admin and 'href="/ui/audit"' in admin and "signed-in-as" not in admin
    finally:
        client.close()
        state.close()
