"""engine_unreachable on a real engine that stops: a private engine in its own network namespace (see
private_engine.py), the daemon under test in there with it, and an SMTP receiver on that
namespace's loopback. Stopping the engine opens the incident (mailed, the daemon still answering);
starting it again resolves it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.smtp_receiver import SmtpReceiver, smtp_receiver

from .private_engine import NetnsDaemon, PrivateEngine, private_engine

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def engine(docker_client, in_ci) -> Iterator[PrivateEngine]:
    if os.geteuid() != 0:
        if in_ci:
            pytest.fail("the engine test needs root (network namespaces, a private dockerd)")
        pytest.skip("needs root: network namespaces and a private dockerd")
    with private_engine(["busybox:latest"]) as e:  # any image: an empty load fails
        yield e


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} in {timeout:.0f}s")


def test_a_stopped_engine_opens_engine_unreachable_and_its_return_resolves_it(engine, tmp_path):
    receiver = smtp_receiver()
    smtp: SmtpReceiver = engine.netns.call(receiver.__enter__)  # listening on the namespace's loopback
    env = {"LBSOLO_ALERTS_INTERVAL": "1", "LBSOLO_SMTP_URL": smtp.url(), "LBSOLO_ALERTS_SMTP_BACKOFF": "0.3"}
    daemon = NetnsDaemon(home=tmp_path / "home", engine=engine, extra_env=env)
    daemon.start()
    try:
        out = daemon.cli("alerts:set", "engine_unreachable", "--window", "2")
        assert out.returncode == 0, out.stdout + out.stderr

        def incident(state: str) -> dict | None:
            found = [i for i in daemon.api_get("/api/alerts").json()[state] if i["rule"] == "engine_unreachable"]
            return found[0] if found else None

        assert incident("open") is None
        engine.stop()
        stopped = time.monotonic()
        opened = wait_for(lambda: incident("open"), 20, "engine_unreachable incident")
        print(f"engine_unreachable open {time.monotonic() - stopped:.2f} s after the engine stopped (window 2 s)")
        assert opened["key"] == "engine" and "the Docker engine does not answer" in opened["message"]
        [mail] = wait_for(lambda: smtp.received(), 15, "alert email")
        assert mail.message["Subject"] == "[lbsolo] ALERT engine: engine unreachable"
        assert "Rule: engine_unreachable" in mail.message.get_content()

        engine.start()
        back = time.monotonic()
        resolved = wait_for(lambda: incident("resolved"), 20, "resolution")
        print(f"engine_unreachable resolved {time.monotonic() - back:.2f} s after the engine answered")
        assert resolved["id"] == opened["id"]
        wait_for(lambda: len(smtp.received()) == 2, 15, "resolved email")
        assert smtp.received()[1].message["Subject"] == "[lbsolo] RESOLVED engine: engine unreachable"
    finally:
        daemon.stop()
        if not engine.answers():
            engine.start()
        receiver.__exit__(None, None, None)
