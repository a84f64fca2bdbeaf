"""`lbsolo restart` on the real engine: the next daemon takes over the listening sockets, so
requests through the proxy (new connections and keep-alive ones) and DNS queries (UDP and TCP)
all get answers across restarts; the state and the apps are as they were; a successor that
does not come up leaves the old daemon serving; no daemon, a clear one-line error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import httpx
import pytest

from .conftest import EXAMPLES, running_daemon

pytestmark = pytest.mark.docker

APP = "steady"


def pid_of(daemon) -> int:
    return int(json.loads((daemon.home / "daemon.json").read_text())["pid"])


def alive(pid: int) -> bool:
    """Running (a zombie not reaped yet has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def steady(daemon):
    out = daemon.cli("apps:create", APP)
    assert out.returncode == 0, out.stderr
    out = daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", APP)
    assert out.returncode == 0, out.stdout + out.stderr
    yield APP
    # The daemon that serves now is not the fixture's child: stop it, then the fixture's (gone already).
    pid = pid_of(daemon)
    daemon.cli("destroy", APP, "--yes")
    if pid != daemon.proc.pid and alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


class Traffic:
    """Requests through the proxy (a new connection each, and one keep-alive client) and DNS
    queries (UDP, and TCP now and then), each checked, while the test restarts the daemon."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.ok = {"fresh": 0, "kept": 0, "dns": 0}
        self.failures: list[tuple[str, str]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=t, daemon=True) for t in (self.fresh, self.fresh, self.kept, self.dns)]

    def check(self, kind: str, call) -> None:
        try:
            call()
            self.ok[kind] += 1
        except Exception as e:  # every failure counts, whatever its kind
            self.failures.append((kind, repr(e)[:200]))

    def _get(self, client: httpx.Client) -> None:
        r = client.get("/", headers={"Host": f"{APP}.lbsolo.localhost"})
        assert r.status_code == 200 and "Hello" in r.text, (r.status_code, r.text[:100])

    def fresh(self) -> None:
        while not self.stopping.is_set():
            with httpx.Client(base_url=f"http://127.0.0.1:{self.daemon.proxy_port}", timeout=10) as c:
                self.check("fresh", lambda c=c: self._get(c))

    def kept(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.daemon.proxy_port}", timeout=10) as c:
            while not self.stopping.is_set():
                self.check("kept", lambda: self._get(c))

    def dns(self) -> None:
        i = 0
        while not self.stopping.is_set():
            i += 1
            query = dns.message.make_query(f"{APP}.lbsolo.localhost", dns.rdatatype.A)
            ask = dns.query.tcp if i % 10 == 0 else dns.query.udp

            def one(ask=ask, query=query) -> None:
                answer = ask(query, "127.0.0.1", port=self.daemon.dns_port, timeout=3)
                assert answer.answer and "127.0.0.1" in answer.answer[0].to_text(), answer

            self.check("dns", one)
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)
        self.stopping.set()
        for t in self.threads:
            t.join(15)


def test_restarts_answer_every_request_and_query_and_keep_the_state(daemon, steady):
    releases = daemon.api_get(f"/api/apps/{APP}/releases").json()
    pids = [pid_of(daemon)]
    with Traffic(daemon) as traffic:
        for _ in range(3):
            out = daemon.cli("restart")
            assert out.returncode == 0, out.stdout + out.stderr
            pids.append(pid_of(daemon))
            assert f"pid {pids[-2]} -> {pids[-1]}" in out.stdout, out.stdout
            time.sleep(0.5)
    assert traffic.failures == [], traffic.failures[:5]
    assert all(n > 10 for n in traffic.ok.values()), traffic.ok
    assert len(set(pids)) == 4 and not any(alive(p) for p in pids[:-1])
    assert daemon.api_get(f"/api/apps/{APP}/releases").json() == releases
    # The new daemon owns the state: changes work, through the unix socket the old one made.
    out = daemon.cli("config:set", APP, "GREETING=Again")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Again" in daemon.get(APP).text


def test_a_successor_that_does_not_come_up_leaves_the_daemon_serving(docker_client, tmp_path):
    # LBSOLO_FAIL_TAKEOVER is acted on by a successor only (a process that inherited sockets).
    with running_daemon(docker_client, tmp_path / "home", {"LBSOLO_FAIL_TAKEOVER": "1"}) as d:
        before = pid_of(d)
        out = d.cli("restart")
        assert out.returncode == 1 and "did not hand over and keeps serving" in out.stderr, out.stdout + out.stderr
        assert "Traceback" not in out.stderr
        assert pid_of(d) == before and d.proc.poll() is None
        assert d.api_get("/healthz").status_code == 200
        out = d.cli("apps:create", "after")  # changes are taken again
        assert out.returncode == 0, out.stdout + out.stderr
        query = dns.message.make_query("after.lbsolo.localhost", dns.rdatatype.A)
        assert dns.query.udp(query, "127.0.0.1", port=d.dns_port, timeout=3).answer


def test_restart_without_a_daemon_says_so_in_one_line(daemon, tmp_path):
    env = {**daemon.env, "LBSOLO_HOME": str(tmp_path / "nothing-here")}
    out = subprocess.run([sys.executable, "-m", "lbsolo", "restart"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "no lbsolo daemon runs with this home" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
