"""Scoped tokens (issue 16): a token's role and apps are enforced by the API guard, for REST and
git push, before any body is read; each refusal is one 403 line saying what the token may do,
and is audited.

The real API over the guard tests' fake Platform (apps "hello" and "other"), on a real uvicorn
on port 0; the refused bodies are 64 MiB pushed from raw sockets, so "not read" is measured.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from lbsolo.api.scopes import covers, refusal
from tests.security.test_api_guard import ADMIN, send_request, serve
from tests.security.test_audit_log import wait_for

MiB = 1024 * 1024


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"git:{token}".encode()).decode()}


@pytest.fixture
def served(tmp_path):
    with serve(tmp_path, "httptools") as s:
        s.platform.apps.add("other")
        assert s.tokens is not None
        s.tokens_made = {  # type: ignore[attr-defined]
            "reader": s.tokens.create("reader", "read")[1],
            "deployer": s.tokens.create("deployer", "deploy", ["hello"])[1],
            "shopadmin": s.tokens.create("shopadmin", "admin", ["hello"])[1],
        }
        yield s


def token(served, name: str) -> str:
    return served.tokens_made[name]


def refused_unread(answer, size: int) -> None:
    assert answer.status == 403, answer.body
    assert answer.json()["error"]["code"] == "forbidden"
    assert answer.sent < size  # the server stopped reading: the body was never taken
    assert answer.closed


def test_a_read_token_reads_and_is_refused_any_change_before_its_body(served):
    """Without the guard's scope check (refusal() in ApiGuard._serve) the POST answers 201."""
    base = f"http://127.0.0.1:{served.port}"
    assert httpx.get(f"{base}/api/apps", headers=bearer(token(served, "reader"))).status_code == 200
    size = 64 * MiB
    answer = send_request(
        served.port, "POST", "/api/apps", {**bearer(token(served, "reader")), "Content-Type": "application/json"}, size
    )
    refused_unread(answer, size)
    assert "a read token may only read (GET)" in answer.json()["error"]["message"]
    assert "\n" not in answer.json()["error"]["message"]
    assert served.platform.created == []


def test_a_deploy_token_changes_config_and_deploys_its_app_but_destroys_nothing(served):
    """Without DEPLOY_CHANGES the config change is refused; without the admin-only rule the
    DELETE and the token creation answer 200/201."""
    base = f"http://127.0.0.1:{served.port}"
    ci = bearer(token(served, "deployer"))
    assert httpx.patch(f"{base}/api/apps/hello/config", json={"set": {"A": "1"}}, headers=ci).status_code == 200
    assert httpx.post(f"{base}/api/apps/hello/deploy", content=b"x" * 1024, headers=ci).status_code == 200
    assert served.platform.uploads == [1024]
    destroy = httpx.delete(f"{base}/api/apps/hello", headers=ci)
    assert destroy.status_code == 403
    assert destroy.json()["error"]["message"] == (
        "DELETE /api/apps/{name} needs an admin token; a deploy token may deploy, push, set config, scale, "
        "roll back, run and read logs on hello"
    )
    assert "hello" in served.platform.apps
    create = httpx.post(f"{base}/api/tokens", json={"name": "more"}, headers=ci)
    assert create.status_code == 403
    assert httpx.get(f"{base}/api/audit", headers=ci).status_code == 403  # the audit log is the admin's
    assert {t["name"] for t in served.tokens.list()} == {"ci", "reader", "deployer", "shopadmin"}


def test_a_token_limited_to_an_app_is_refused_another_before_the_upload_is_read(served):
    """Without the apps check in refusal() the upload to "other" is read and deployed."""
    size = 64 * MiB
    headers = {**bearer(token(served, "deployer")), "Content-Type": "application/x-tar"}
    answer = send_request(served.port, "POST", "/api/apps/other/deploy", headers, size)
    refused_unread(answer, size)
    assert answer.json()["error"]["message"] == "this token is limited to the apps hello, not 'other'"
    assert served.platform.uploads == []


def test_git_push_is_held_to_the_same_role_and_apps(served):
    """Without the guard authenticating /git/ (and the scope check after it) these reach git http-backend."""
    size = 64 * MiB
    kind = {"Content-Type": "application/x-git-receive-pack-request"}
    read = send_request(
        served.port, "POST", "/git/hello.git/git-receive-pack", {**basic(token(served, "reader")), **kind}, size
    )
    refused_unread(read, size)
    other = send_request(
        served.port, "POST", "/git/other.git/git-receive-pack", {**basic(token(served, "deployer")), **kind}, size
    )
    refused_unread(other, size)
    anonymous = send_request(served.port, "POST", "/git/hello.git/git-receive-pack", kind, 1024)
    assert anonymous.status == 401 and anonymous.headers["www-authenticate"] == 'Basic realm="lbsolo"'


def test_refusals_are_audited_with_the_token_name(served, tmp_path):
    """The guard records a refused change too (its finally); without it no line is written."""
    base = f"http://127.0.0.1:{served.port}"
    httpx.delete(f"{base}/api/apps/hello", headers=bearer(token(served, "deployer")))
    (line,) = wait_for(tmp_path / "home", 1)
    assert (line["actor"], line["action"], line["app"], line["status"]) == (
        "deployer", "DELETE /api/apps/{name}", "hello", 403
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"name": "x", "role": "owner"}, 422, "unknown role 'owner': admin, deploy or read"),
        ({"name": "x", "role": "deploy", "apps": ["nope"]}, 404, "nope"),
        ({"name": "admin"}, 422, "'admin' names the admin token"),
    ],
)
def test_bad_token_requests_change_nothing(served, body, status, message):
    """Without validate_role / the get_app check / the name check these create a token."""
    base = f"http://127.0.0.1:{served.port}"
    answer = httpx.post(f"{base}/api/tokens", json=body, headers=bearer(ADMIN))
    assert answer.status_code == status
    assert message in answer.json()["error"]["message"]
    assert {t["name"] for t in served.tokens.list()} == {"ci", "reader", "deployer", "shopadmin"}


def test_no_token_hands_out_more_than_it_has_and_the_admin_token_is_not_revoked(served):
    """An admin token limited to hello can't make an unlimited one (the apps rule refuses every
    token route to it); revoking "admin" says why not (without the check: a bare 'no token')."""
    base = f"http://127.0.0.1:{served.port}"
    answer = httpx.post(f"{base}/api/tokens", json={"name": "all"}, headers=bearer(token(served, "shopadmin")))
    assert answer.status_code == 403
    revoke = httpx.delete(f"{base}/api/tokens/admin", headers=bearer(ADMIN))
    assert revoke.status_code == 422
    assert revoke.json()["error"]["message"].startswith("the admin token cannot be revoked")
    assert httpx.get(f"{base}/api/apps", headers=bearer(ADMIN)).status_code == 200
    listed = httpx.get(f"{base}/api/tokens", headers=bearer(ADMIN)).json()
    assert {t["name"]: (t["role"], t["apps"]) for t in listed} == {
        "ci": ("admin", []),
        "reader": ("read", []),
        "deployer": ("deploy", ["hello"]),
        "shopadmin": ("admin", ["hello"]),
    }


def test_the_policy_covers():
    assert covers("admin", (), "deploy", ["hello"])
    assert not covers("deploy", ("hello",), "admin", ["hello"])
    assert not covers("admin", ("hello",), "admin", [])  # all apps is more than hello
    assert not covers("admin", ("hello",), "read", ["other"])
    assert covers("admin", ("hello",), "read", ["hello"])
    assert refusal("read", (), "GET", "/api/apps/{name}/logs", {"name": "x"}) is None
    assert refusal("read", (), "POST", "/git/{app}.git/{path:path}", {"app": "x", "path": "git-upload-pack"}) is None
    assert refusal("deploy", (), "POST", "/api/apps/{name}/promote", {"name": "x"}) is not None


def test_a_refused_read_is_audited_too(served, tmp_path):
    """Reads are not recorded, but one refused by a token's scope is (the guard's refusal branch)."""
    base = f"http://127.0.0.1:{served.port}"
    assert httpx.get(f"{base}/api/apps/other", headers=bearer(token(served, "deployer"))).status_code == 403
    assert httpx.get(f"{base}/api/apps/hello", headers=bearer(token(served, "deployer"))).status_code == 200
    (line,) = wait_for(tmp_path / "home", 1)
    assert (line["actor"], line["action"], line["app"], line["status"]) == (
        "deployer", "GET /api/apps/{name}", "other", 403
    )  # fmt: skip


def test_an_add_ons_data_is_the_admins_to_take(served):
    """A read or deploy token lists an add-on's backups but cannot take its data away: without
    the dump download and the export in ADMIN_READS both reach their route."""
    base = f"http://127.0.0.1:{served.port}"
    for name in ("reader", "deployer"):
        for path in ("/api/addons/db/backups/b1/download", "/api/addons/db/export"):
            r = httpx.get(base + path, headers=bearer(token(served, name)))
            assert r.status_code == 403, (name, path, r.status_code)
    for template in ("/api/addons/{name}/backups/{backup_id}/download", "/api/addons/{name}/export"):
        assert "admin" in str(refusal("read", (), "GET", template, {"name": "db", "backup_id": "b1"}))
        assert refusal("admin", (), "GET", template, {"name": "db", "backup_id": "b1"}) is None
