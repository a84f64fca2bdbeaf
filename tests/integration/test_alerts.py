"""Alerts on the real daemon and engine: a broken build opens deploy_failed (once, mailed to a real
SMTP server on loopback and posted to a webhook) and the next good deploy resolves it; a crash loop;
an app answering 500 through the proxy; the disk rule; bad rule settings; an SMTP server that
refuses (recipients, logins) then accepts; a closed SMTP port and an invalid LBSOLO_SMTP_URL; an
open incident kept, not re-sent, across a daemon restart.

The rules' windows are shortened through alerts:set and the loop looks every second
(LBSOLO_ALERTS_INTERVAL=1). Each wait prints how long the alert took after its condition began.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.smtp_receiver import SmtpReceiver, smtp_receiver

from .conftest import EXAMPLES, running_daemon, webhook_receiver

pytestmark = pytest.mark.docker

ERRORS_APP = """import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        status, body = (200, b"ok\\n") if self.path == "/up" else (500, b"boom\\n")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "5000"))), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpReceiver]:
    with smtp_receiver() as box:
        yield box


@pytest.fixture(scope="module")
def daemon(docker_client, tmp_path_factory, smtp):
    env = {"LBSOLO_ALERTS_INTERVAL": "1", "LBSOLO_SMTP_URL": smtp.url(), "LBSOLO_ALERTS_SMTP_BACKOFF": "0.3"}
    with running_daemon(docker_client, tmp_path_factory.mktemp("alerts") / "home", env) as d:
        yield d


def ok(out: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} in {timeout:.0f}s")


def alerts(daemon) -> dict:
    r = daemon.api_get("/api/alerts?limit=100")
    assert r.status_code == 200, r.text
    return r.json()


def incident(daemon, rule: str, about: str, state: str = "open") -> dict | None:
    listing = alerts(daemon)
    found = [i for i in listing[state] if i["rule"] == rule and (i["app"] == about or i["key"] == about)]
    return found[0] if found else None


def mails(smtp: SmtpReceiver, subject: str) -> list:
    return [m for m in smtp.received() if m.message["Subject"] == subject]


def set_rule(daemon, rule: str, **body) -> dict:
    r = httpx.put(
        f"{daemon.api}/api/alerts/rules/{rule}", json=body, headers={"Authorization": f"Bearer {daemon.token}"}
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_a_broken_build_opens_deploy_failed_once_and_the_next_good_deploy_resolves_it(daemon, smtp, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "hello", broken)
    (broken / "Dockerfile").write_text("FROM python:3.12-slim\nRUN echo this build breaks && false\n")
    with webhook_receiver() as hooks:
        ok(daemon.cli("webhooks:add", hooks.url, "--event", "alert.*"))
        ok(daemon.cli("apps:create", "af"))
        assert daemon.cli("deploy", str(broken), "--app", "af").returncode != 0
        failed_at = time.monotonic()
        opened = wait_for(lambda: incident(daemon, "deploy_failed", "af"), 30, "deploy_failed incident")
        print(f"deploy_failed open {time.monotonic() - failed_at:.2f} s after the deploy command returned")
        assert opened["key"] == "af" and opened["title"] == "deploy failed"

        subject = "[lbsolo] ALERT af: deploy failed"
        [mail] = wait_for(lambda: mails(smtp, subject), 15, "alert email")
        print(f"its email arrived {time.monotonic() - failed_at:.2f} s after the deploy command returned")
        text = mail.message.get_content()
        assert "Rule: deploy_failed (deploy failed)" in text and "App: af" in text and opened["id"] in text
        assert mail.recipients == ["ops@example.com"] and mail.user == "alerts"
        posted = wait_for(
            lambda: [json.loads(b) for _, b in hooks.received if json.loads(b)["event"] == "alert.opened"],
            15,
            "alert.opened webhook",
        )
        assert posted[0]["app"] == "af" and posted[0]["data"]["rule"] == "deploy_failed"

        # Failing again while it is open: the same incident, nothing sent again.
        assert daemon.cli("deploy", str(broken), "--app", "af").returncode != 0
        listed = ok(daemon.cli("alerts")).stdout
        assert "deploy_failed" in listed and "af" in listed

        ok(daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", "af"))
        resolved = wait_for(lambda: incident(daemon, "deploy_failed", "af", "resolved"), 30, "resolution")
        assert resolved["id"] == opened["id"] and resolved["resolution"] == "the condition cleared"
        [done] = wait_for(lambda: mails(smtp, "[lbsolo] RESOLVED af: deploy failed"), 15, "resolved email")
        assert "Resolved:" in done.message.get_content()
        kinds = wait_for(
            lambda: (k := [json.loads(b)["event"] for _, b in hooks.received])[-1:] == ["alert.resolved"] and k,
            15,
            "alert.resolved webhook",
        )
        assert kinds == ["alert.opened", "alert.resolved"]
        assert len(mails(smtp, subject)) == 1  # once per incident
        assert "Recently resolved" in ok(daemon.cli("alerts")).stdout
        with httpx.Client(base_url=daemon.api, timeout=10) as ui:  # the UI's Alerts page, logged in
            login = ui.post("/ui/login", data={"token": daemon.token, "next": "/ui/alerts"})
            assert login.status_code == 303 and login.headers["location"] == "/ui/alerts"
            page = ui.get("/ui/alerts").text
        assert 'class="incident incident-resolved" data-rule="deploy_failed"' in page and "af" in page
        assert 'data-state="ok"' in page and smtp.password not in page


def test_a_failed_cron_run_opens_cron_failed_and_the_jobs_next_success_resolves_it(daemon, smtp):
    # examples/hello serves as af after the test above.
    ok(daemon.cli("cron:add", "af", "0 0 1 1 *", "--name", "flip", "--", "exit ${CODE:-3}"))
    assert daemon.cli("cron:run", "af", "flip").returncode == 3
    ran_at = time.monotonic()
    opened = wait_for(lambda: incident(daemon, "cron_failed", "af"), 15, "cron_failed incident")
    print(f"cron_failed open {time.monotonic() - ran_at:.2f} s after cron:run returned")
    assert opened["key"].startswith("af/") and "flip" in opened["message"]
    wait_for(lambda: mails(smtp, "[lbsolo] ALERT af: cron job failed"), 15, "cron email")
    ok(daemon.cli("config:set", "af", "CODE=0"))
    ok(daemon.cli("cron:run", "af", "flip"))
    resolved = wait_for(lambda: incident(daemon, "cron_failed", "af", "resolved"), 15, "resolution")
    assert resolved["id"] == opened["id"]
    ok(daemon.cli("cron:remove", "af", "flip"))


def test_a_crash_loop_opens_its_alert(daemon, docker_client, smtp, tmp_path):
    set_rule(daemon, "crash_loop", threshold=2)
    src = tmp_path / "flaky"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "Dockerfile").write_text(
        "FROM python:3.12-slim\nWORKDIR /app\nCOPY app.py .\nENV PYTHONUNBUFFERED=1\n"
        'CMD ["sh", "-c", "[ -e /tmp/started ] && exit 3; touch /tmp/started; exec python app.py"]\n'
    )
    ok(daemon.cli("apps:create", "cl"))
    ok(daemon.cli("deploy", str(src), "--app", "cl"))
    labels = [f"lbsolo.instance={daemon.instance}", "lbsolo.app=cl", "lbsolo.process=web"]
    [container] = docker_client.containers.list(filters={"label": labels})
    killed_at = time.monotonic()
    subprocess.run(["docker", "kill", container.id], check=True, capture_output=True)
    opened = wait_for(lambda: incident(daemon, "crash_loop", "cl"), 30, "crash_loop incident")
    print(f"crash_loop open {time.monotonic() - killed_at:.2f} s after the kill")
    assert "restarted" in opened["message"] and opened["value"] >= 2
    wait_for(lambda: mails(smtp, "[lbsolo] ALERT cl: crash loop"), 15, "crash loop email")
    ok(daemon.cli("destroy", "cl", "--yes"))
    gone = wait_for(lambda: incident(daemon, "crash_loop", "cl", "resolved"), 15, "resolution")
    assert gone["resolution"] == "cl was destroyed"
    set_rule(daemon, "crash_loop", reset=True)


def test_an_app_answering_500_through_the_proxy_opens_http_5xx_and_latency_p95_and_quiet_resolves_them(
    daemon, smtp, tmp_path
):
    src = tmp_path / "errors"
    src.mkdir()
    (src / "app.py").write_text(ERRORS_APP)
    (src / "Dockerfile").write_text((EXAMPLES / "hello" / "Dockerfile").read_text())
    (src / "lbsolo.toml").write_text('[healthcheck]\npath = "/up"\ninterval = 0.5\n')
    ok(daemon.cli("apps:create", "e5"))
    ok(daemon.cli("deploy", str(src), "--app", "e5"))
    set_rule(daemon, "http_5xx", threshold=50, window=5)
    set_rule(daemon, "latency_p95", threshold=0.0005, window=5)  # below the histogram's first bucket (1 ms)
    first = time.monotonic()
    for _ in range(20):
        assert daemon.get("e5").status_code == 500
    opened = wait_for(lambda: incident(daemon, "http_5xx", "e5"), 30, "http_5xx incident")
    print(f"http_5xx open {time.monotonic() - first:.2f} s after the first 500 (20 sent in a row)")
    assert opened["value"] == 100.0 and re.search(
        r"100% of \d+ responses were 5xx over the last 5 s", opened["message"]
    )
    [mail] = wait_for(lambda: mails(smtp, "[lbsolo] ALERT e5: 5xx responses"), 15, "5xx email")
    slow = wait_for(lambda: incident(daemon, "latency_p95", "e5"), 15, "latency_p95 incident")
    assert re.search(r"e5: p95 latency up to [\d.]+ s over the last 5 s", slow["message"]), slow["message"]
    assert "App: e5" in mail.message.get_content() and "Rule: http_5xx" in mail.message.get_content()
    # No more requests: the window empties and the incident resolves.
    resolved = wait_for(lambda: incident(daemon, "http_5xx", "e5", "resolved"), 30, "resolution")
    assert resolved["id"] == opened["id"]
    assert wait_for(lambda: incident(daemon, "latency_p95", "e5", "resolved"), 15, "p95 resolution")["id"] == slow["id"]
    ok(daemon.cli("destroy", "e5", "--yes"))
    set_rule(daemon, "http_5xx", reset=True)  # its 500s are still within the default window: gone with it
    set_rule(daemon, "latency_p95", reset=True)


def test_rule_settings_and_their_bad_input(daemon):
    out = ok(daemon.cli("alerts:set", "latency_p95", "--threshold", "0.25", "--window", "2m"))
    assert "Rule latency_p95: on, threshold 0.25 seconds, window 120 s" in out.stdout
    assert "latency_p95" in ok(daemon.cli("alerts:rules")).stdout
    for args, message in [
        (("alerts:set", "disk", "--threshold", "500"), "invalid threshold 500 for disk"),
        (("alerts:set", "nope", "--off"), "unknown alert rule 'nope'"),
        (("alerts:set", "deploy_failed", "--window", "5"), "the rule deploy_failed takes no window"),
        (("alerts:set", "http_5xx", "--window", "soon"), "invalid window 'soon'"),
        (("alerts:set", "disk"), "nothing to change"),
    ]:
        out = daemon.cli(*args)
        assert out.returncode != 0 and message in out.stdout + out.stderr, (args, out.stdout + out.stderr)
    rules = {r["rule"]: r for r in daemon.api_get("/api/alerts/rules").json()}
    assert rules["disk"]["threshold"] == 85 and rules["latency_p95"]["window"] == 120
    ok(daemon.cli("alerts:set", "latency_p95", "--reset"))


def test_an_smtp_server_that_refuses_is_shown_and_retried_until_it_accepts(daemon, smtp):
    for mode, said in [("rcpt", "recipient refused by 127.0.0.1"), ("auth", "authentication refused by 127.0.0.1")]:
        smtp.mode = mode
        t0 = time.monotonic()
        set_rule(daemon, "disk", threshold=0.01)  # any disk in use is over it: opens at the next look
        channel = wait_for(
            lambda: (c := alerts(daemon)["channels"][0])["state"] == "failing" and c, 15, f"failing channel ({mode})"
        )
        assert channel["last_error"].startswith(said) and channel["waiting"] >= 1, channel
        assert smtp.password not in json.dumps(alerts(daemon))
        shown = ok(daemon.cli("alerts")).stdout
        assert "failing" in shown and said in shown and smtp.password not in shown
        smtp.mode = "accept"
        wait_for(lambda: alerts(daemon)["channels"][0]["state"] == "ok", 20, "delivery after the refusals")
        print(f"{mode}: delivered {time.monotonic() - t0:.2f} s after the rule changed, once the server accepted")
        set_rule(daemon, "disk", reset=True)
        wait_for(lambda: not [i for i in alerts(daemon)["open"] if i["rule"] == "disk"], 15, "resolution")


def test_alerts_test_sends_a_test_email_and_says_how_it_went(daemon, smtp):
    out = ok(daemon.cli("alerts:test"))
    assert "Email to ops@example.com via smtp://127.0.0.1" in out.stdout and ": ok," in out.stdout, out.stdout
    [mail] = wait_for(lambda: mails(smtp, "[lbsolo] TEST alert email"), 15, "test email")
    assert f"smtp://127.0.0.1:{smtp.port}" in mail.message.get_content()


def test_an_open_incident_is_kept_and_not_sent_again_across_a_restart(daemon, smtp):
    set_rule(daemon, "disk", threshold=0.01)
    opened = wait_for(lambda: [i for i in alerts(daemon)["open"] if i["rule"] == "disk"], 15, "disk incident")
    wait_for(lambda: alerts(daemon)["channels"][0]["waiting"] == 0, 15, "the email sent")
    before = len(smtp.received())
    daemon.stop()
    daemon.start()
    time.sleep(3)  # three looks
    after = [i for i in alerts(daemon)["open"] if i["rule"] == "disk"]
    assert [i["id"] for i in after] == [i["id"] for i in opened]
    assert len(smtp.received()) == before, [m.message["Subject"] for m in smtp.received()[before - 2 :]]
    set_rule(daemon, "disk", reset=True)
    wait_for(lambda: not [i for i in alerts(daemon)["open"] if i["rule"] == "disk"], 15, "resolution")


def test_nothing_else_is_open(daemon):
    assert alerts(daemon)["open"] == []


def test_a_closed_smtp_port_and_an_invalid_url(docker_client, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"smtp://u:hunter22@127.0.0.1:{port}?from=a@example.com&to=b@example.com"
    env = {"LBSOLO_ALERTS_INTERVAL": "1", "LBSOLO_SMTP_URL": url, "LBSOLO_ALERTS_SMTP_BACKOFF": "0.3"}
    with running_daemon(docker_client, tmp_path / "closed", env) as d:
        set_rule(d, "disk", threshold=0.01)
        channel = wait_for(lambda: (c := alerts(d)["channels"][0])["failed_attempts"] and c, 15, "a failed send")
        assert channel["last_error"] == f"connection refused by 127.0.0.1:{port}" and channel["state"] == "failing"
        assert "hunter22" not in json.dumps(alerts(d)) and "hunter22" not in (d.log_path.read_text())
        assert any(i["rule"] == "disk" for i in alerts(d)["open"])  # the alert itself is not held up
        shown = d.cli("alerts:test").stdout
        assert "failing" in shown and f"connection refused by 127.0.0.1:{port}" in shown
    env["LBSOLO_SMTP_URL"] = "smtp://u:hunter22@mail.example.com:587?from=a@example.com"
    with running_daemon(docker_client, tmp_path / "invalid", env) as d:
        channel = alerts(d)["channels"][0]
        assert channel["state"] == "invalid" and "LBSOLO_SMTP_URL needs ?to=ADDRESS" in channel["problem"]
        assert "LBSOLO_SMTP_URL needs ?to=ADDRESS" in d.log_path.read_text()
        assert "hunter22" not in d.log_path.read_text()
        assert "LBSOLO_SMTP_URL is not used" in ok(d.cli("alerts")).stdout
