"""A UI logout outlives a daemon restart (issue 11, item 12).

Session cookies are signed with a key derived from the admin token, so a cookie stays valid
across restarts; a logout must too. Ended sessions are kept in the state until they would
have expired anyway. Here the "restart" is a new State over the same file and a new router.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from lbsolo.api.web import COOKIE, Sessions, create_web_router
from lbsolo.state import State
from tests.unit.test_web import TOKEN, Client, Clock, FakePlatform, login


def test_a_revoked_session_stays_revoked_after_a_restart(tmp_path):
    clock = Clock()
    state = State(tmp_path / "state.json")
    sessions = Sessions(TOKEN, max_age=60, clock=clock, store=state)
    ended, ended_cookie = sessions.issue()
    kept, kept_cookie = sessions.issue()
    sessions.revoke(ended)
    state.close()

    state = State(tmp_path / "state.json")
    restarted = Sessions(TOKEN, max_age=60, clock=clock, store=state)
    assert restarted.verify(ended_cookie) is None
    assert restarted.verify(kept_cookie) == kept

    # Once a revoked session would have expired anyway, it is dropped from the state.
    clock.now += 61
    later, _ = restarted.issue()
    restarted.revoke(later)
    assert set(state.revoked_sessions()) == {later.id}
    state.close()


def test_logging_out_in_the_ui_survives_a_daemon_restart(tmp_path):
    def ui(state: State) -> Client:
        app = FastAPI()
        app.include_router(
            create_web_router(FakePlatform(), TOKEN, revoked=state, bus=None, notifier=None, sampler=None)
        )  # type: ignore[arg-type]
        return Client(app)

    state = State(tmp_path / "state.json")
    before = ui(state)
    csrf = login(before)
    cookie = before.http.cookies[COOKIE]
    assert before.post("/ui/logout", data={"csrf": csrf}).status_code == 303
    before.close()
    state.close()

    state = State(tmp_path / "state.json")
    after = ui(state)
    after.http.cookies = httpx.Cookies({COOKIE: cookie})  # the browser kept its copy of the cookie
    page = after.get("/ui/apps/hello")
    assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
    after.close()
    state.close()
