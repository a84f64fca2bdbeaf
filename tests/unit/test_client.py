"""lbsolo.cli.client against a stand-in API on a unix socket: each typed method sends the request
its API operation means (method, path, query, body) and hands back the answer; names are escaped;
the verbs call only these methods, never a raw path."""

from __future__ import annotations

import http.server
import json
import re
import socketserver
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lbsolo.cli.client import Client, in_background
from lbsolo.config import Settings
from lbsolo.errors import APIError

CLI = Path(__file__).resolve().parents[2] / "lbsolo" / "cli"


class StandInAPI(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Records each request and answers with the body the test set."""

    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answer = b"{}"
        super().__init__(path, _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StandInAPI

    def address_string(self) -> str:  # a unix peer has no host
        return "local"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.server.seen.append({
            "method": self.command,
            "path": parts.path,
            "query": urllib.parse.parse_qs(parts.query),
            "body": json.loads(raw) if raw else None,
            "auth": self.headers.get("Authorization"),
        })  # fmt: skip
        body = self.server.answer
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StandInAPI, Client]]:
    monkeypatch.delenv("LBSOLO_API_URL", raising=False)
    monkeypatch.delenv("LBSOLO_TOKEN", raising=False)
    path = str(tmp_path / "api.sock")
    server = StandInAPI(path)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    settings = Settings.load(home=tmp_path)
    settings.runtime_path.write_text(json.dumps({"api_url": "http://127.0.0.1:9", "socket": path}))
    settings.token_path.write_text("t0ken\n")
    try:
        yield server, Client(settings, timeout=5)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


OBJECT, LIST, JOB = b'{"ok": true}', b'["x"]', b'{"line": "one"}\n{"result": {"ok": true}}\n'

# (the call, its answer, method, path, query, body)
CALLS: list[tuple[Callable[[Client], Any], bytes, str, str, dict[str, list[str]], Any]] = [
    (lambda c: c.apps(), LIST, "GET", "/api/apps", {}, None),
    (lambda c: c.create_app("shop"), OBJECT, "POST", "/api/apps", {}, {"name": "shop"}),
    (lambda c: c.app("shop"), OBJECT, "GET", "/api/apps/shop", {}, None),
    (lambda c: c.destroy("shop", True), OBJECT, "DELETE", "/api/apps/shop",
     {"images": ["true"], "volumes": ["false"]}, None),
    (lambda c: c.disk(), OBJECT, "GET", "/api/disk", {}, None),
    (lambda c: c.gc(), OBJECT, "POST", "/api/gc", {"dry_run": ["false"]}, None),
    (lambda c: c.gc("shop", dry_run=True), OBJECT, "POST", "/api/gc", {"app": ["shop"], "dry_run": ["true"]}, None),
    (lambda c: c.config("shop"), OBJECT, "GET", "/api/apps/shop/config", {}, None),
    (lambda c: list(c.set_config("shop", {"A": "1"}, ["B"], True)), JOB, "PATCH", "/api/apps/shop/config", {},
     {"set": {"A": "1"}, "unset": ["B"], "secret": True}),
    (lambda c: c.ps("shop"), LIST, "GET", "/api/apps/shop/ps", {}, None),
    (lambda c: c.scale("shop", {"web": 2}), OBJECT, "POST", "/api/apps/shop/scale", {}, {"formation": {"web": 2}}),
    (lambda c: list(c.set_resources("shop", "web", "256m", None)), JOB, "PUT", "/api/apps/shop/resources/web", {},
     {"memory": "256m", "cpus": None}),
    (lambda c: list(c.add_volume("shop", "data", "/data")), JOB, "POST", "/api/apps/shop/volumes", {},
     {"name": "data", "path": "/data"}),
    (lambda c: c.set_health("shop", {"path": "/up"}), OBJECT, "PATCH", "/api/apps/shop/health", {}, {"path": "/up"}),
    (lambda c: list(c.run("shop", "ls -l")), JOB, "POST", "/api/apps/shop/run", {}, {"command": "ls -l"}),
    (lambda c: c.logs("shop", {"tail": 5}), LIST, "GET", "/api/apps/shop/logs", {"tail": ["5"]}, None),
    (lambda c: list(c.follow_logs("shop", {"tail": 5})), JOB, "GET", "/api/apps/shop/logs",
     {"tail": ["5"], "follow": ["true"]}, None),
    (lambda c: c.stats("shop"), OBJECT, "GET", "/api/apps/shop/stats", {}, None),
    (lambda c: c.metrics("shop"), OBJECT, "GET", "/api/apps/shop/metrics", {}, None),
    (lambda c: c.events(), LIST, "GET", "/api/events", {"n": ["30"]}, None),
    (lambda c: c.events("shop", 5), LIST, "GET", "/api/events", {"n": ["5"], "app": ["shop"]}, None),
    (lambda c: c.add_domains("shop", ["a.test"]), LIST, "PATCH", "/api/apps/shop/domains", {}, {"add": ["a.test"]}),
    (lambda c: c.remove_domains("shop", ["a.test"]), LIST, "PATCH", "/api/apps/shop/domains", {},
     {"remove": ["a.test"]}),
    (lambda c: c.https("shop"), OBJECT, "GET", "/api/apps/shop/https", {}, None),
    (lambda c: c.set_https("shop", False), OBJECT, "PATCH", "/api/apps/shop/https", {}, {"redirect": False}),
    (lambda c: c.proxy_settings("shop"), OBJECT, "GET", "/api/apps/shop/proxy", {}, None),
    (lambda c: c.set_proxy_settings("shop", True), OBJECT, "PATCH", "/api/apps/shop/proxy", {},
     {"request_buffering": True}),
    (lambda c: c.builds("shop"), LIST, "GET", "/api/apps/shop/builds", {}, None),
    (lambda c: c.cancel_builds("shop"), OBJECT, "POST", "/api/apps/shop/builds/cancel", {}, None),
    (lambda c: c.cancel_builds("shop", "b1"), OBJECT, "POST", "/api/apps/shop/builds/cancel",
     {"build_id": ["b1"]}, None),
    (lambda c: c.build_log("shop"), LIST, "GET", "/api/apps/shop/builds/latest/log", {}, None),
    (lambda c: c.build_log("shop", "b1"), LIST, "GET", "/api/apps/shop/builds/b1/log", {}, None),
    (lambda c: c.releases("shop"), LIST, "GET", "/api/apps/shop/releases", {}, None),
    (lambda c: list(c.rollback("shop")), JOB, "POST", "/api/apps/shop/rollback", {}, {"version": None}),
    (lambda c: list(c.promote("staging", "shop")), JOB, "POST", "/api/apps/staging/promote", {"to": ["shop"]}, None),
    (lambda c: list(c.deploy_git("shop", "https://g.test/r.git", "main")), JOB, "POST", "/api/apps/shop/deploy/git",
     {}, {"url": "https://g.test/r.git", "ref": "main"}),
    (lambda c: c.hook("shop"), OBJECT, "GET", "/api/apps/shop/hook", {}, None),
    (lambda c: c.set_hook_repo("shop", "https://g.test/r.git"), OBJECT, "PUT", "/api/apps/shop/hook", {},
     {"repo": "https://g.test/r.git"}),
    (lambda c: c.tokens(), LIST, "GET", "/api/tokens", {}, None),
    (lambda c: c.audit(app="shop", actor="ci", n=5), LIST, "GET", "/api/audit",
     {"app": ["shop"], "actor": ["ci"], "n": ["5"]}, None),
    (lambda c: c.create_token("ci", "deploy", ["shop"]), OBJECT, "POST", "/api/tokens", {},
     {"name": "ci", "role": "deploy", "apps": ["shop"]}),
    (lambda c: c.revoke_token("ci"), OBJECT, "DELETE", "/api/tokens/ci", {}, None),
    (lambda c: c.webhooks(), LIST, "GET", "/api/webhooks", {}, None),
    (lambda c: c.add_webhook("https://h.test/", None, None, False), OBJECT, "POST", "/api/webhooks", {},
     {"url": "https://h.test/", "app": None, "kinds": None, "slack": False}),
    (lambda c: c.remove_webhook("w1"), OBJECT, "DELETE", "/api/webhooks/w1", {}, None),
    (lambda c: c.routes(), LIST, "GET", "/api/routes", {}, None),
    (lambda c: c.add_route("db", "127.0.0.1:5432"), OBJECT, "POST", "/api/routes", {},
     {"name": "db", "to": "127.0.0.1:5432", "domains": []}),
    (lambda c: c.remove_route("db"), OBJECT, "DELETE", "/api/routes/db", {}, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "answer", "method", "path", "query", "body"),
    CALLS,
    ids=[f"{c[2]} {c[3]} {i}" for i, c in enumerate(CALLS)],
)
def test_each_method_sends_its_operation(api, call, answer, method, path, query, body):
    server, client = api
    server.answer = answer
    out = call(client)
    (seen,) = server.seen
    assert (seen["method"], seen["path"], seen["query"], seen["body"]) == (method, path, query, body)
    assert seen["auth"] == "Bearer t0ken"
    if answer is JOB:
        assert out == [{"line": "one"}, {"result": {"ok": True}}]
    elif out is not None:
        assert out == json.loads(answer)


def test_git_url_is_the_answers_url(api):
    server, client = api
    server.answer = b'{"url": "http://lbsolo.test/git/shop.git"}'
    assert client.git_url("shop") == "http://lbsolo.test/git/shop.git"
    assert server.seen[0]["path"] == "/api/apps/shop/git"


def test_a_name_never_adds_a_path_level_or_a_query(api):
    server, client = api
    client.revoke_token("a/b?c=d")
    assert server.seen[0]["path"] == "/api/tokens/a%2Fb%3Fc%3Dd" and server.seen[0]["query"] == {}


def test_an_answer_of_the_wrong_shape_is_a_protocol_error(api):
    server, client = api
    server.answer = b'{"not": "a list"}'
    with pytest.raises(APIError) as caught:
        client.apps()
    assert caught.value.code == "protocol"


def test_the_verbs_use_only_the_typed_methods():
    for path in sorted(CLI.glob("verbs*.py")):
        text = path.read_text()
        assert not re.search(r"[\"']/api/", text), f"{path.name} names an API path"
        assert not re.search(r"\.(request|stream)\(", text), f"{path.name} calls the client's raw request"


def test_a_call_in_the_background_hands_back_its_answer_or_its_error(api):
    server, client = api
    server.answer = b'{"app000": 12}'
    assert in_background(client.disk)() == {"app000": 12}
    server.answer = b"[]"
    waiting = in_background(client.disk)  # a list where an object was due
    with pytest.raises(APIError):
        waiting()
