"""The audit log (issue 16): every change that reaches the API's process is one line — who, from
where, what, on which app, how it ended — refused changes too, and never a secret value.

The real API (create_api over the guard tests' fake Platform) on a real uvicorn on port 0; the
audit file is read as written on disk.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
import time
from pathlib import Path
from typing import Any

import httpx

from lbsolo.api.audit import AuditLog
from tests.security.test_api_guard import ADMIN, HOOK_SECRET, serve

SECRET_VALUE = "s3cr3t-hunter2-never-in-the-audit-log"


def audit_lines(home: Path) -> list[dict[str, Any]]:
    path = home / "audit" / "audit.log"
    deadline = time.monotonic() + 5
    while True:  # the writer thread writes just after the answer is sent
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def wait_for(home: Path, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while len(lines := audit_lines(home)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return lines


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def test_an_allowed_change_is_one_line_with_actor_source_action_app_and_status(tmp_path):
    """Without the guard's hook (ApiGuard.__call__'s record) no line is written and this fails."""
    with serve(tmp_path, "h11") as served:
        base = f"http://127.0.0.1:{served.port}"
        assert httpx.post(f"{base}/api/apps", json={"name": "shop"}, headers=admin()).status_code == 201
        assert httpx.get(f"{base}/api/apps", headers=admin()).status_code == 200  # a read: not recorded
        (line,) = wait_for(tmp_path / "home", 1)
    assert line["actor"] == "admin"
    assert line["source"] == "127.0.0.1"
    assert line["action"] == "POST /api/apps"
    assert line["app"] == "shop"
    assert line["status"] == 201
    assert abs(line["ts"] - time.time()) < 60
    mode = stat.S_IMODE((tmp_path / "home" / "audit" / "audit.log").stat().st_mode)
    assert mode == 0o600


def test_a_refused_change_is_recorded_with_its_status(tmp_path):
    """A change without a valid token is refused 401 before its body is read, and still recorded
    (without the record in the guard's finally this fails)."""
    with serve(tmp_path, "h11") as served:
        base = f"http://127.0.0.1:{served.port}"
        answer = httpx.delete(f"{base}/api/apps/hello", headers={"Authorization": "Bearer wrong"})
        assert answer.status_code == 401
        (line,) = wait_for(tmp_path / "home", 1)
    assert line["actor"] == "anonymous"
    assert line["action"] == "DELETE /api/apps/{name}"
    assert line["app"] == "hello"
    assert line["status"] == 401


def test_config_keys_are_recorded_and_a_secret_value_never(tmp_path):
    """Grep the whole audit directory for the secret's value: absent; its key is there. Recording
    `body.set` instead of its sorted keys (in rest.change_config) makes this fail."""
    with serve(tmp_path, "h11") as served:
        base = f"http://127.0.0.1:{served.port}"
        change = {"set": {"DB_PASSWORD": SECRET_VALUE, "GREETING": "hi"}, "secret": True}
        answer = httpx.patch(f"{base}/api/apps/hello/config", json=change, headers=admin())
        assert answer.status_code == 200
        (line,) = wait_for(tmp_path / "home", 1)
        shown = httpx.get(f"{base}/api/audit", headers=admin()).json()
    assert line["action"] == "PATCH /api/apps/{name}/config"
    assert line["changed"]["set"] == ["DB_PASSWORD", "GREETING"]
    assert line["changed"]["secret"] is True
    for path in (tmp_path / "home" / "audit").iterdir():
        assert SECRET_VALUE.encode() not in path.read_bytes()
    assert SECRET_VALUE not in json.dumps(shown)
    assert [r["action"] for r in shown] == ["PATCH /api/apps/{name}/config"]


def test_scale_and_a_push_webhook_name_what_and_who(tmp_path):
    """The formation is noted by the scale route; a push webhook's actor is webhook:<app>, its
    outcome the signature check's 401 (without actor_of's /hooks/ case it reads 'anonymous')."""
    with serve(tmp_path, "h11") as served:
        base = f"http://127.0.0.1:{served.port}"
        assert httpx.post(f"{base}/api/apps/hello/scale", json={"formation": {"web": 3}}, headers=admin()).is_success
        body = b'{"ref": "refs/heads/main"}'
        bad = hmac.new(b"not-" + HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        hook = httpx.post(
            f"{base}/hooks/hello",
            content=body,
            headers={"X-Hub-Signature-256": f"sha256={bad}", "X-GitHub-Event": "push"},
        )
        assert hook.status_code == 401
        scale, webhook = wait_for(tmp_path / "home", 2)
    assert scale["changed"] == {"formation": {"web": 3}}
    assert scale["actor"] == "admin" and scale["app"] == "hello"
    assert webhook["actor"] == "webhook:hello"
    assert webhook["action"] == "POST /hooks/{app}" and webhook["status"] == 401


def test_the_api_filters_by_app_and_actor(tmp_path):
    with serve(tmp_path, "h11") as served:
        base = f"http://127.0.0.1:{served.port}"
        ci = {"Authorization": f"Bearer {served.extra}"}
        httpx.post(f"{base}/api/apps", json={"name": "shop"}, headers=admin())
        httpx.post(f"{base}/api/apps/hello/scale", json={"formation": {"web": 2}}, headers=ci)
        wait_for(tmp_path / "home", 2)
        by_app = httpx.get(f"{base}/api/audit", params={"app": "hello"}, headers=admin()).json()
        by_actor = httpx.get(f"{base}/api/audit", params={"actor": "admin"}, headers=admin()).json()
    assert [(r["actor"], r["app"]) for r in by_app] == [("ci", "hello")]
    assert [(r["actor"], r["app"]) for r in by_actor] == [("admin", "shop")]


def test_rotation_keeps_at_most_keep_old_files_and_drops_the_oldest(tmp_path):
    """Without the size check in AuditLog._write the file grows past max_bytes and this fails."""
    log = AuditLog(tmp_path / "audit" / "audit.log", max_bytes=2000, keep=2)
    for i in range(300):
        log.record({"ts": float(i), "actor": "admin", "action": "POST /api/apps", "app": f"app{i}", "status": 201})
    log.close()
    files = sorted(p.name for p in (tmp_path / "audit").iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    assert all(p.stat().st_size <= 2000 for p in (tmp_path / "audit").iterdir())
    kept = [e["app"] for e in log.entries()]
    assert kept[-1] == "app299"  # the newest is kept, in order
    assert "app0" not in kept  # the oldest went with the dropped file
    assert kept == sorted(kept, key=lambda a: int(a[3:]))


def test_the_ui_names_its_session_and_its_audit_page_renders_the_lines(tmp_path):
    """A UI form's line names the session by a prefix of its id ("ui:…", from web.checked_post's
    note; without it the actor reads "ui"), never the cookie; the Audit page lists the lines."""
    with serve(tmp_path, "h11") as served:
        base = f"http://127.0.0.1:{served.port}"
        with httpx.Client(base_url=base) as ui:
            assert ui.post("/ui/login", data={"token": ADMIN, "next": "/ui/audit"}).status_code == 303
            page = ui.get("/ui/audit")
            assert page.status_code == 200
            csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            cookie = ui.cookies["lbsolo_session"]
            ui.post("/ui/apps/hello/scale", data={"csrf": csrf, "web": "2"})
            lines = wait_for(tmp_path / "home", 2)
            shown = ui.get("/ui/audit", params={"app": "hello", "since": "1h"}).text
    login, scale = lines
    assert login["action"] == "POST /ui/login" and login["actor"] == "ui" and login["status"] == 303
    assert scale["action"] == "POST /ui/apps/{name}/scale" and scale["app"] == "hello"
    assert scale["actor"].startswith("ui:") and len(scale["actor"]) == len("ui:") + 8
    assert scale["actor"][3:] == cookie[:8]
    assert cookie.split(".")[0] not in json.dumps(lines)  # the whole session id is not written
    assert "POST /ui/apps/{name}/scale" in shown and "formation=" in shown
    assert "POST /ui/login" not in shown  # filtered by app
