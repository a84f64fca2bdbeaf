"""The real daemon refuses big anonymous bodies before reading them (issue 11, items 2 and 14).

200 MiB without a token to /api/apps, straight to the API port and through the proxy's own
route (lbsolo.<domain>), and to /hooks/<app>, declared and chunked: each gets 401 or 413,
and neither the daemon's RSS nor $LBSOLO_HOME grows by more than 20 MB. An extra API token
works as git's password.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import httpx

from tests.security.test_api_guard import MiB, send_request

from .conftest import Daemon, running_daemon

BODY = 200 * MiB
BOUND = 20 * 1000 * 1000


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def home_bytes(home: Path) -> int:
    total = 0
    for root, _, files in os.walk(home):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a temporary file gone meanwhile
                total += (Path(root) / name).lstat().st_size
    return total


def test_200_mib_without_a_token_neither_grows_the_daemon_nor_its_home(docker_client, tmp_path):
    with running_daemon(docker_client, tmp_path / "home") as d:
        auth = {"Authorization": f"Bearer {d.token}"}
        assert httpx.post(f"{d.api}/api/apps", json={"name": "edge"}, headers=auth, timeout=10).status_code == 201
        assert httpx.get(f"{d.api}/api/apps/edge/hook", headers=auth, timeout=10).status_code == 200  # a hook secret
        pid = d.proc.pid
        rss_before, home_before = rss(pid), home_bytes(d.home)
        own = {"Host": f"lbsolo.lbsolo.localhost:{d.proxy_port}", "Content-Type": "application/json"}
        cases = [
            ("api port", d.api_port, "/api/apps", {"Content-Type": "application/json"}, {401}),
            ("own route", d.proxy_port, "/api/apps", own, {401}),
            ("hook", d.api_port, "/hooks/edge", {"X-GitHub-Event": "push"}, {413}),
            ("hook, unknown app", d.api_port, "/hooks/nosuch", {}, {401, 413}),
        ]
        seen = []
        for what, port, path, headers, expected in cases:
            for chunked in (False, True):
                answer = send_request(port, "POST", path, headers, BODY, chunked=chunked)
                seen.append((what, chunked, answer.status, answer.sent))
                assert answer.status in expected, (what, chunked, answer)
                assert answer.sent < BODY, (what, chunked, "the whole body was taken in")
        rss_grown, home_grown = rss(pid) - rss_before, home_bytes(d.home) - home_before
        print(f"daemon RSS grew by {rss_grown / MiB:.1f} MiB, home by {home_grown / MiB:.2f} MiB; {seen}")
        assert rss_grown < BOUND, f"RSS grew by {rss_grown / MiB:.1f} MiB"
        assert home_grown < BOUND, f"{d.home} grew by {home_grown / MiB:.1f} MiB"
        assert d.api_get("/healthz", token=None).status_code == 200


def test_an_extra_token_is_a_git_password(daemon: Daemon):
    auth = {"Authorization": f"Bearer {daemon.token}"}
    assert httpx.post(f"{daemon.api}/api/apps", json={"name": "gitauth"}, headers=auth, timeout=10).status_code == 201
    created = httpx.post(f"{daemon.api}/api/tokens", json={"name": "pusher"}, headers=auth, timeout=10)
    assert created.status_code == 201, created.text
    token = created.json()["token"]

    def ls_remote(password: str) -> subprocess.CompletedProcess[str]:
        url = f"http://git:{password}@127.0.0.1:{daemon.api_port}/git/gitauth.git"
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
        return subprocess.run(["git", "ls-remote", url], capture_output=True, text=True, env=env, timeout=60)

    assert ls_remote(token).returncode == 0, ls_remote(token).stderr
    assert ls_remote(daemon.token).returncode == 0
    assert ls_remote(token + "x").returncode != 0
    httpx.delete(f"{daemon.api}/api/tokens/pusher", headers=auth, timeout=10)
    assert ls_remote(token).returncode != 0
