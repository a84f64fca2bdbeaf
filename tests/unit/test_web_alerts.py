"""The web UI's Alerts page (lbsolo.api.web_alerts): open and resolved incidents, the email channel's
state and last error, and a rule's form (CSRF checked, a bad value refused in red, nothing changed);
text escaped, no SMTP password on the page."""

from __future__ import annotations

from typing import Any

from lbsolo import alerts as rules
from lbsolo.alerts import Incident
from lbsolo.alerts_smtp import MailChannel
from tests.unit.test_web import client, login, platform  # noqa: F401  (fixtures)

T = 1_800_000_000.0


class FakeAlerts:
    """The alerts' use cases the page calls, over the real rule settings."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {}
        self.mail = MailChannel("smtp://ops:hunter2pw@127.0.0.1:2525?from=a@example.com&to=ops@example.com")
        self.mail.failures, self.mail.failed_attempts = 2, 2
        self.mail.last_error, self.mail.last_error_at = "recipient refused by 127.0.0.1:2525: 550 <nope>", T
        self.incidents = [
            Incident("i1", "deploy_failed", "hello", "hello", "build failed: <script>x</script>", T),
            Incident("i2", "disk", "/var/lib/docker", None, "91% full", T - 60, 91.0, T - 10, "the condition cleared"),
        ]

    async def listing(self, limit: int) -> dict[str, Any]:
        return {
            "open": [i.view() for i in self.incidents if i.open],
            "resolved": [i.view() for i in self.incidents if not i.open],
            "channels": [self.mail.status()],
            "rules": [r.view() for r in rules.effective(self.doc).values()],
        }

    async def set_rule(self, rule: str, **kw: Any) -> dict[str, Any]:
        self.doc = rules.change(self.doc, rule, **kw)
        return rules.effective(self.doc)[rule].view()


def test_the_alerts_page_shows_incidents_the_channel_and_changes_a_rule(client, platform):  # noqa: F811
    assert client.get("/ui/alerts").headers["location"].startswith("/ui/login")
    csrf = login(client)
    platform.alerts = FakeAlerts()
    page = client.get("/ui/alerts").text
    assert 'href="/ui/alerts"' in page  # in the nav
    assert 'class="incident incident-open" data-rule="deploy_failed"' in page
    assert "build failed: &lt;script&gt;x&lt;/script&gt;" in page and "<script>x" not in page
    assert 'class="incident incident-resolved" data-rule="disk"' in page and "the condition cleared" in page
    assert 'data-state="failing"' in page and "550 &lt;nope&gt;" in page and "hunter2pw" not in page
    assert 'action="/ui/alerts/rules/http_5xx"' in page

    form = {"enabled": "on", "threshold": "20", "window": "60", "csrf": csrf}
    assert client.post("/ui/alerts/rules/http_5xx", data={**form, "csrf": "stale"}).status_code == 403
    r = client.post("/ui/alerts/rules/http_5xx", data=form)
    assert r.status_code == 303 and r.headers["location"] == "/ui/alerts"
    assert "rule http_5xx on (threshold 20, window 60)" in client.get("/ui/alerts").text
    assert platform.alerts.doc == {"rules": {"http_5xx": {"threshold": 20.0, "window": 60.0, "enabled": True}}}

    r = client.post("/ui/alerts/rules/disk", data={"threshold": "500", "csrf": csrf})
    assert r.status_code == 303 and "invalid threshold 500 for disk" in client.get("/ui/alerts").text
    r = client.post("/ui/alerts/rules/disk", data={"enabled": "on", "threshold": "lots", "csrf": csrf})
    assert "the threshold must be a number" in client.get("/ui/alerts").text
    assert "disk" not in platform.alerts.doc["rules"]  # nothing changed
    client.post("/ui/alerts/rules/deploy_failed", data={"csrf": csrf})  # unchecked box: off
    assert platform.alerts.doc["rules"]["deploy_failed"] == {"enabled": False}


def test_the_alerts_page_without_alerts_running(client, platform):  # noqa: F811
    login(client)
    assert "No open incidents." in client.get("/ui/alerts").text
