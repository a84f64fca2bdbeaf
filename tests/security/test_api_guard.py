"""No body is read before the API knows who is asking, and no body grows past its cap (issue 11, items 2 and 14).

The real API (create_api over a hand-written fake Platform) served by a real uvicorn on port 0,
with both of uvicorn's HTTP parsers; clients on raw sockets, so what is sent, when the server
stops reading and what it answers are all visible. The memory test reads this process's RSS:
the server runs in it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from lbsolo.api.auth import Authenticator, basic_password, bearer_token
from lbsolo.api.guard import ApiGuard, BodyLimits, declared_length, needs_token
from lbsolo.api.rest import create_api
from lbsolo.api.tokens import TokenStore
from lbsolo.config import Settings
from lbsolo.errors import InvalidInput, NotFound
from lbsolo.events import EventBus
from lbsolo.notify import WebhookNotifier
from lbsolo.run_stats import StatsSampler
from lbsolo.state import State

ADMIN = "admin-token-for-the-guard-tests"
HOOK_SECRET = "hook-secret-of-hello"
MiB = 1024 * 1024


class FakePlatform:
    """What the routes under test reach of core.Platform; nothing runs."""

    def __init__(self, settings: Settings, state: State) -> None:
        self.settings = settings
        self.state = state
        self.apps = {"hello"}
        self.created: list[str] = []
        self.configs: dict[str, dict[str, str]] = {}
        self.uploads: list[int] = []
        self.pause_note: str | None = None  # set while a daemon hands over (lbsolo restart)
        self.cron = None  # the cron router is built over it; these tests call none of its routes

    async def get_app(self, name: str) -> dict[str, Any]:
        if name not in self.apps:
            raise NotFound(f"unknown app {name!r}")
        return {"name": name}

    async def create_app(self, name: str) -> None:
        self.created.append(name)
        self.apps.add(name)

    async def hook_secret(self, name: str, create: bool = True) -> str:
        await self.get_app(name)
        return HOOK_SECRET

    async def list_apps(self) -> list[dict[str, Any]]:
        return [{"name": name} for name in sorted(self.apps)]

    async def deploy(self, name: str, context: Path, build_args: dict[str, str]) -> None:
        self.uploads.append(context.stat().st_size)
        context.unlink()  # as the builder does once it has the context; None: nothing to roll out

    async def set_config(self, name: str, values: dict[str, str], unset: list[str], secret: bool) -> None:
        await self.get_app(name)
        self.configs.setdefault(name, {}).update(values)  # stored; None: nothing to roll out

    async def destroy_app(self, name: str, images: bool = False, volumes: bool = False) -> dict[str, Any]:
        await self.get_app(name)
        self.apps.discard(name)
        return {"destroyed": name}

    async def scale(self, name: str, formation: dict[str, int]) -> dict[str, Any]:
        await self.get_app(name)
        return {"name": name, "formation": formation}

    async def config(self, name: str) -> dict[str, str]:
        await self.get_app(name)
        return {k: "***" for k in self.configs.get(name, {})}


@dataclass
class Answer:
    status: int | None  # None: the connection ended without an answer
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the client got onto the socket before the server stopped it
    closed: bool  # the server closed the connection after answering

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Served:
    port: int
    platform: FakePlatform
    extra: str  # an extra API token
    tokens: TokenStore | None = None


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@contextlib.contextmanager
def serve(tmp_path: Path, http: str, **settings: Any) -> Iterator[Served]:
    """The real API on a real uvicorn (port 0) in a thread with its own event loop."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    state = State(home / "state.json")
    tokens = TokenStore(state)
    _, extra = tokens.create("ci")
    platform = FakePlatform(Settings(home=home, **settings), state)
    bus = EventBus()
    parts = {"bus": bus, "notifier": WebhookNotifier(state, bus), "sampler": StatsSampler(lambda: {}, interval=5)}
    app = create_api(platform, ADMIN, "http://127.0.0.1:0", tokens=tokens, **parts)  # type: ignore[arg-type]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, http=http, lifespan="off", log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield Served(sock.getsockname()[1], platform, extra, tokens)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        state.close()


def send_request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    size: int,
    *,
    chunked: bool = False,
    declare: int | None = None,
    fill: bytes = b"x",
) -> Answer:
    """Send a head and `size` body bytes (Content-Length `declare` or `size`, or chunked), pushing
    until the server stops reading; then read its answer."""
    headers = {"Host": "127.0.0.1", **headers}
    head = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size if declare is None else declare}")
    piece = fill * (64 * 1024 // len(fill))
    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            while sent < size:
                n = min(len(piece), size - sent)
                s.sendall(frame if n == len(piece) else (b"%x\r\n%s\r\n" % (n, piece[:n]) if chunked else piece[:n]))
                sent += n
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed: its answer is already on the way, read it
        return read_answer(s, sent)


def read_answer(s: socket.socket, sent: int) -> Answer:
    data = b""
    closed = False
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        s.settimeout(5)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    (
                        int(ln.split(b":", 1)[1])
                        for ln in head.split(b"\r\n")
                        if ln.lower().startswith(b"content-length:")
                    ),
                    None,
                )
                if length is not None and len(body) >= length:
                    # An answer is complete; did the server close after it? (a reset counts)
                    with contextlib.suppress(ConnectionResetError, TimeoutError):
                        s.settimeout(2)
                        closed = s.recv(1) == b""
                    if not closed:
                        closed = _reset(s)
                    break
    if not data:
        return Answer(None, {}, b"", sent, True)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return Answer(int(lines[0].split()[1]), fields, body, sent, closed)


def _reset(s: socket.socket) -> bool:
    try:
        s.recv(1)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"git:{password}".encode()).decode()}


@pytest.fixture(params=["httptools", "h11"])
def served(request, tmp_path, caplog) -> Iterator[Served]:
    caplog.set_level(logging.WARNING)
    with serve(tmp_path, request.param, max_upload_bytes=8 * MiB) as s:
        yield s
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# ---- decisions, without sockets ------------------------------------------------------------


def test_which_routes_need_a_token_and_what_each_may_send():
    assert needs_token("/api/apps") and needs_token("/api") and needs_token("/metrics")
    for open_path in ("/healthz", "/ui/login", "/ui/static/app.css", "/hooks/hello", "/git/hello.git/info/refs"):
        assert not needs_token(open_path), open_path
    assert not needs_token("/apix") and not needs_token("/metrics/x")
    limits = BodyLimits(json=1, upload=2, hook=3)
    assert limits.cap("POST", "/api/apps")[0] == 1
    assert limits.cap("POST", "/api/apps/hello/deploy")[0] == 2
    assert limits.cap("POST", "/api/apps/hello/deploy/git")[0] == 1  # a JSON body
    assert limits.cap("PUT", "/api/apps/hello/deploy")[0] == 1
    assert limits.cap("POST", "/git/hello.git/git-receive-pack")[0] == 2
    assert limits.cap("POST", "/hooks/hello")[0] == 3
    assert limits.cap("POST", "/ui/apps/hello/config")[0] == 1
    assert BodyLimits.from_settings(Settings()) == BodyLimits(json=1 * MiB, upload=512 * MiB, hook=5 * MiB)


def test_content_length_is_read_strictly():
    assert declared_length([]) is None
    assert declared_length([(b"Content-Length", b"12")]) == 12
    assert declared_length([(b"content-length", b"5"), (b"content-length", b"5")]) == 5
    for bad in (
        [(b"content-length", b"-1")],
        [(b"content-length", b"1, 2")],
        [(b"content-length", b"5"), (b"content-length", b"6")],
    ):
        with pytest.raises(InvalidInput):
            declared_length(bad)


def test_credentials_from_headers(tmp_path, run):
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token("Bearer ") is None and bearer_token("") is None
    assert basic_password(basic("pw")["Authorization"]) == "pw"
    assert basic_password("Basic !!!") is None and basic_password("Bearer x") is None

    async def scenario() -> None:
        state = State(tmp_path / "state.json")
        tokens = TokenStore(state)
        token_id, extra = tokens.create("ci")
        auth = Authenticator(ADMIN, tokens)
        assert (await auth.bearer(f"Bearer {ADMIN}")).admin
        caller = await auth.basic(basic(extra)["Authorization"])
        assert caller is not None and caller.name == "ci" and caller.token_id == token_id and not caller.admin
        for wrong in ("", "Bearer", f"Bearer {ADMIN}x", f"Bearer {extra}x", "Bearer lbs_guess", f"Basic {ADMIN}"):
            assert await auth.bearer(wrong) is None, wrong
        tokens.revoke("ci")
        assert await auth.basic(basic(extra)["Authorization"]) is None
        state.close()

    run(scenario)


def test_an_anonymous_request_is_refused_without_reading_its_body(run):
    """The guard answers 401 before the app runs and without ever calling receive."""
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append("app")

    async def receive() -> dict[str, Any]:
        calls.append("receive")
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = ApiGuard(app, Authenticator(ADMIN), BodyLimits(json=MiB, upload=MiB, hook=MiB))
    scope = {"type": "http", "method": "POST", "path": "/api/apps", "headers": [(b"transfer-encoding", b"chunked")]}
    run(lambda: guard(scope, receive, send))
    assert calls == []
    assert sent[0]["status"] == 401 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "unauthorized"


# ---- the real API on real sockets -------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_200_mib_without_a_token_is_refused_before_it_is_read(served, chunked):
    before = rss_bytes()
    for path in ("/api/apps", "/api/apps/hello/deploy", "/metrics"):
        answer = send_request(
            served.port, "POST", path, {"Content-Type": "application/json"}, 200 * MiB, chunked=chunked
        )
        assert answer.status == 401, (path, answer)
        assert answer.json()["error"]["code"] == "unauthorized"
        assert answer.closed and answer.sent < 64 * MiB  # the rest was never taken in
    # A declared size over the hook cap is refused at once; chunked, an unknown app (or one without
    # a hook secret) is refused before its body is read, and a real hook's is read up to the cap.
    refused = send_request(served.port, "POST", "/hooks/nosuch", {}, 200 * MiB, chunked=chunked)
    assert refused.status == (401 if chunked else 413) and refused.closed and refused.sent < 64 * MiB
    capped = send_request(served.port, "POST", "/hooks/hello", {"X-GitHub-Event": "push"}, 200 * MiB, chunked=chunked)
    assert capped.status == 413 and capped.json()["error"]["code"] == "too_large", capped
    assert capped.closed and capped.sent < 64 * MiB
    assert "LBSOLO_MAX_HOOK_BYTES" in capped.json()["error"]["message"]
    grown = rss_bytes() - before
    assert grown < 20 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"
    assert served.platform.created == []


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_with_a_token_json_is_capped_at_1_mib(served, chunked):
    big = b'{"name": "' + b"a" * (2 * MiB) + b'"}'
    answer = send_request(served.port, "POST", "/api/apps", bearer(ADMIN), len(big), chunked=chunked, fill=b"a")
    assert answer.status == 413 and answer.closed, answer
    assert "LBSOLO_MAX_JSON_BYTES" in answer.json()["error"]["message"]
    # Under the cap, the same route works, for the admin token and for an extra one.
    for token, name in ((ADMIN, "small"), (served.extra, "other")):
        ok = httpx.post(f"http://127.0.0.1:{served.port}/api/apps", json={"name": name}, headers=bearer(token))
        assert ok.status_code == 201, ok.text
    assert served.platform.created == ["small", "other"]


def test_uploads_get_the_upload_cap_not_the_json_one(served):
    url = f"http://127.0.0.1:{served.port}/api/apps/hello/deploy"
    ok = httpx.post(url, content=b"t" * (3 * MiB), headers=bearer(ADMIN), timeout=20)
    assert ok.status_code == 200, ok.text
    assert served.platform.uploads == [3 * MiB]
    for chunked in (False, True):
        too_big = send_request(served.port, "POST", "/api/apps/hello/deploy", bearer(ADMIN), 200 * MiB, chunked=chunked)
        assert too_big.status == 413 and too_big.closed and too_big.sent < 64 * MiB, too_big
        assert "LBSOLO_MAX_UPLOAD_BYTES" in too_big.json()["error"]["message"]
    assert served.platform.uploads == [3 * MiB]
    assert list((served.platform.settings.uploads_dir).iterdir()) == []  # the partial upload is gone


def test_open_pages_stay_open_and_ui_forms_are_capped(served):
    base = f"http://127.0.0.1:{served.port}"
    assert httpx.get(f"{base}/healthz").json() == {"ok": True}
    assert httpx.get(f"{base}/ui/login").status_code == 200
    assert httpx.get(f"{base}/api/apps").status_code == 401
    assert httpx.get(f"{base}/api/apps", headers=bearer(served.extra)).status_code == 200
    assert httpx.get(f"{base}/metrics", headers=bearer("lbs_wrong")).status_code == 401
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = send_request(served.port, "POST", "/ui/login", form, 200 * MiB, chunked=True, fill=b"token=")
    assert answer.status == 413 and answer.closed and answer.sent < 64 * MiB


def test_extra_tokens_work_for_git_too(served):
    """Item 14: git's HTTP Basic password may be any API token, not only the admin's."""
    url = f"http://127.0.0.1:{served.port}/git/hello.git/info/refs?service=git-receive-pack"
    for password in (ADMIN, served.extra):
        r = httpx.get(url, headers=basic(password), timeout=20)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/x-git-receive-pack-advertisement"
    for wrong in ("", "nope", served.extra + "x"):
        r = httpx.get(url, headers=basic(wrong), timeout=20)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(url, timeout=20).status_code == 401


def test_while_the_daemon_hands_over_changes_are_refused_and_reads_answered(served):
    """lbsolo restart: between the old daemon's last state write and the new one's first, a change
    would be lost: it is refused (503, retry) before its body is read; reads go on."""
    served.platform.pause_note = "lbsolo is restarting: try again in a few seconds"
    try:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        r = httpx.post(f"http://127.0.0.1:{served.port}/api/apps", json={"name": "later"}, headers=auth, timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
        assert r.json()["error"] == {"code": "restarting", "message": served.platform.pause_note}
        assert served.platform.created == []
        r = httpx.get(f"http://127.0.0.1:{served.port}/api/apps", headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()
        unauthenticated = httpx.post(f"http://127.0.0.1:{served.port}/api/apps", json={"name": "x"}, timeout=10)
        assert unauthenticated.status_code == 401  # who asks is still checked first
    finally:
        served.platform.pause_note = None
    r = httpx.post(f"http://127.0.0.1:{served.port}/api/apps", json={"name": "later"}, headers=auth, timeout=10)
    assert r.status_code < 300 and served.platform.created == ["later"], r.text
