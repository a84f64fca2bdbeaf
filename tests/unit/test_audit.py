"""The audit log's pure parts: which requests are recorded, whom and what a line names, filters."""

from __future__ import annotations

from lbsolo.api.audit import begin_note, end_note, is_change, matches, note
from lbsolo.api.auth import Caller
from lbsolo.api.guard import CALLER, actor_of, client_address, concerns


def test_changes_are_recorded_and_reads_and_git_fetches_are_not():
    assert is_change("POST", "/api/apps")
    assert is_change("DELETE", "/api/apps/shop")
    assert is_change("PATCH", "/api/apps/shop/config")
    assert not is_change("GET", "/api/apps")
    assert not is_change("HEAD", "/ui/")
    assert is_change("POST", "/git/shop.git/git-receive-pack")
    assert not is_change("POST", "/git/shop.git/git-upload-pack")  # a clone or fetch


def test_what_a_route_concerns():
    assert concerns("/api/apps/{name}/config", {"name": "shop"}) == {"app": "shop"}
    assert concerns("/api/addons/{name}/backups", {"name": "shop-db"}) == {"addon": "shop-db"}
    assert concerns("/hooks/{app}", {"app": "shop"}) == {"app": "shop"}
    assert concerns("/api/tokens", {}) == {}


def test_actors():
    def scope(path: str, caller: Caller | None = None, via: str = "") -> dict:
        s: dict = {"path": path, "headers": [(b"x-lbsolo-via", via.encode())] if via else []}
        if caller:
            s[CALLER] = caller
        return s

    assert actor_of(scope("/api/apps", Caller("admin")), "/api/apps", {}, None) == "admin"
    assert actor_of(scope("/api/apps", Caller("ci", "ab12")), "/api/apps", {}, None) == "ci"
    assert actor_of(scope("/git/a.git/git-receive-pack", Caller("ci", "ab12")), "/git/a.git/x", {}, None) == "git:ci"
    deploy = "/api/apps/a/deploy"
    assert actor_of(scope(deploy, Caller("ci", "ab12"), via="git"), deploy, {}, None) == "git:ci"
    assert actor_of(scope("/hooks/shop"), "/hooks/shop", {"app": "shop"}, None) == "webhook:shop"
    assert actor_of(scope("/ui/login"), "/ui/login", {}, None) == "ui"
    assert actor_of(scope("/ui/apps/a/scale"), "/ui/apps/a/scale", {}, "ui:abcdefgh") == "ui:abcdefgh"
    assert actor_of(scope("/api/apps"), "/api/apps", {}, None) == "anonymous"


def test_the_source_is_the_client_or_local_on_the_unix_socket():
    assert client_address({"client": ("203.0.113.7", 5555)}) == "203.0.113.7"
    assert client_address({"client": None}) == "local"


def test_filters():
    line = {"ts": 100.0, "actor": "git:ci", "app": "shop"}
    assert matches(line)
    assert matches(line, app="shop") and not matches(line, app="api")
    assert matches({"addon": "shop-db"}, app="shop-db")
    assert matches(line, since=99) and not matches(line, since=101)
    assert matches(line, actor="ci") and matches(line, actor="git") and matches(line, actor="git:ci")
    assert not matches(line, actor="admin")


def test_a_note_keeps_only_known_fields_and_only_inside_a_request():
    note(set=["A"])  # outside a request: nowhere to go, no error
    noted, token = begin_note()
    try:
        note(set=["A"], value="leak", release=None, formation={"web": 2})
    finally:
        end_note(token)
    assert noted == {"set": ["A"], "formation": {"web": 2}}
