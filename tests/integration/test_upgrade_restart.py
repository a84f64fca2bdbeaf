"""An upgrade by `lbsolo restart` on the real engine: a daemon of an older lbsolo, whose state is at
schema 3 (this lbsolo with its migrations cut at 3: it reads, writes and stamps schema 3 as that
lbsolo did, and its extra token has no role yet), is replaced by this lbsolo while requests go
through the proxy and DNS queries are asked. The successor migrates the state (a copy of the old
file kept as state.json.schema-3.bak), adopts the app's replicas and takes the sockets over:
no request fails, the app keeps answering, and the token from before roles is an admin.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time

import httpx
import pytest

from lbsolo.state import SCHEMA

from .conftest import EXAMPLES, Daemon, remove_instance
from .test_restart import APP, Traffic, alive, pid_of

pytestmark = pytest.mark.docker

OLD = """
import sys
import lbsolo.state as state
state.MIGRATIONS = state.MIGRATIONS[:3]  # an lbsolo from before token roles (schema 4)
state.SCHEMA = 3
from lbsolo.cli.verbs import main
main()
"""
TOKEN = "lbs_from-before-roles-" + "x" * 20


def schema(path) -> int:
    return json.loads(path.read_text())["_meta"]["1"]["schema"]


def test_an_upgrade_by_restart_migrates_the_state_and_fails_no_request(docker_client, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    state = home / "state.json"
    row = {"id": "ab12cd34", "name": "ci", "hash": hashlib.sha256(TOKEN.encode()).hexdigest(),
           "prefix": TOKEN[:10], "created_at": 1764150000.0, "last_used": None}  # fmt: skip
    state.write_text(json.dumps({"_meta": {"1": {"schema": 3}}, "tokens": {"1": row}}))
    old = Daemon(home=home, command=[sys.executable, "-c", OLD])
    old.start()
    successor = None
    try:
        assert schema(state) == 3
        assert old.cli("apps:create", APP).returncode == 0
        out = old.cli("deploy", str(EXAMPLES / "hello"), "--app", APP)
        assert out.returncode == 0, out.stdout + out.stderr
        assert schema(state) == 3 and "role" not in json.loads(state.read_text())["tokens"]["1"]
        releases = old.api_get(f"/api/apps/{APP}/releases").json()
        before = pid_of(old)

        old.command = [sys.executable, "-m", "lbsolo"]  # the new lbsolo: `restart` starts it from here on
        with Traffic(old) as traffic:
            out = old.cli("restart")
            assert out.returncode == 0, out.stdout + out.stderr
            successor = pid_of(old)
            time.sleep(1)
        assert successor != before and not alive(before)
        assert traffic.failures == [], traffic.failures[:5]
        assert all(n > 10 for n in traffic.ok.values()), traffic.ok

        assert schema(state) == SCHEMA  # 4, or later: every migration from 3 on ran
        kept = home / "state.json.schema-3.bak"
        assert schema(kept) == 3 and os.stat(kept).st_mode & 0o777 == 0o600
        assert json.loads(state.read_text())["tokens"]["1"]["role"] == "admin"
        assert old.api_get(f"/api/apps/{APP}/releases").json() == releases
        r = httpx.get(f"{old.api}/api/tokens", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 200, r.text  # an admin read: the token from before roles is an admin
        out = old.cli("config:set", APP, "GREETING=Upgraded")  # the new daemon owns the state
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Upgraded" in old.get(APP).text
    finally:
        old.stop()
        if successor is not None and alive(successor):
            os.kill(successor, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while alive(successor) and time.monotonic() < deadline:
                time.sleep(0.1)
        remove_instance(docker_client, old.instance)
