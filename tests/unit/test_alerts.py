"""The alert rules' pure decisions (lbsolo.alerts): settings and their bad input, which incidents open
and resolve (once each), event signals, rates and p95 over a window, what a notification says."""

from __future__ import annotations

import itertools
import math

import pytest

from lbsolo import alerts as a
from lbsolo.alerts import RULES, Incident, Sample, Signal, decide, effective
from lbsolo.errors import InvalidInput

T = 1_800_000_000.0


def ids():
    counter = itertools.count(1)
    return lambda: f"i{next(counter)}"


def settings(**changes):
    doc: dict = {}
    for rule, kw in changes.items():
        doc = a.change(doc, rule, **kw)
    return effective(doc)


# ---- settings


def test_every_rule_has_defaults_and_the_table_in_the_docstring_names_it():
    s = effective({})
    assert set(s) == set(RULES) and all(r.enabled for r in s.values())
    assert s["disk"].threshold == 85 and s["cert_expiring"].threshold == 14 and s["crash_loop"].threshold == 5
    assert s["http_5xx"].window == 300 and s["deploy_failed"].threshold is None and s["deploy_failed"].window is None
    for name in RULES:
        assert f"- {name} (" in a.__doc__, name


def test_change_sets_one_rule_and_refuses_what_does_not_fit():
    doc = a.change({}, "http_5xx", threshold=20, window="2m")
    doc = a.change(doc, "disk", enabled=False)
    s = effective(doc)
    assert (s["http_5xx"].threshold, s["http_5xx"].window) == (20.0, 120.0)
    assert not s["disk"].enabled and s["disk"].threshold == 85
    assert a.change(doc, "http_5xx", reset=True)["rules"] == {"disk": {"enabled": False}}
    for rule, kw, message in [
        ("nope", {"enabled": True}, "unknown alert rule 'nope': one of deploy_failed, crash_loop"),
        ("deploy_failed", {"threshold": 3}, "deploy_failed takes no threshold"),
        ("deploy_failed", {"window": 3}, "deploy_failed takes no window"),
        ("disk", {"threshold": 0}, "invalid threshold 0 for disk"),
        ("disk", {"threshold": 101}, "at most 100"),
        ("disk", {"threshold": math.nan}, "invalid threshold for disk"),
        ("crash_loop", {"threshold": 2.5}, "a whole number of restarts in a row"),
        ("http_5xx", {"window": "5 minutes"}, "invalid window '5 minutes'"),
        ("http_5xx", {"window": -1}, "from 0 to 86400 seconds"),
        ("http_5xx", {"window": "2d"}, "from 0 to 86400 seconds"),
        ("http_5xx", {"window": 0}, "at least 1 second"),
    ]:
        with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
            a.change(doc, rule, **kw)
    assert a.parse_duration("90") == 90 and a.parse_duration("1h") == 3600 and a.parse_duration(2.5) == 2.5


# ---- decisions


def test_an_event_rule_opens_once_and_resolves_on_the_clearing_event():
    s, new = effective({}), ids()
    [opened] = a.signals_of("deploy.failed", "shop", "build failed", {})
    d = decide(s, [opened], [], {}, T, new)
    assert [(i.rule, i.key, i.app, i.message) for i in d.opened] == [("deploy_failed", "shop", "shop", "build failed")]
    incident = d.opened[0]
    again = decide(s, a.signals_of("deploy.failed", "shop", "again", {}), [incident], d.pending, T + 5, new)
    assert again.opened == [] and again.resolved == []  # once per incident
    other = decide(s, a.signals_of("deploy.succeeded", "api", "", {}), [incident], {}, T + 6, new)
    assert other.resolved == []  # another app's success
    done = decide(s, a.signals_of("deploy.succeeded", "shop", "", {}), [incident], {}, T + 7, new)
    assert (
        done.resolved == [incident] and incident.resolved_at == T + 7 and incident.resolution == "the condition cleared"
    )


def test_event_signals_name_their_key():
    assert a.signals_of("cron.failed", "shop", "m", {"job": "j1"})[0].key == "shop/j1"
    assert {s.rule for s in a.signals_of("cron.succeeded", "shop", "", {"job": "j1"})} == {"cron_failed", "cron_missed"}
    [backup] = a.signals_of("addon.backup.failed", "db1", "m", {})
    assert (backup.key, backup.app, backup.firing) == ("addon:db1", None, True)
    assert a.signals_of("platform.backup.missed", None, "m", {})[0].key == "platform"
    assert a.signals_of("replica.crashed", "shop", "", {}) == []


def test_an_observed_rule_waits_its_hold_window_and_a_gap_starts_it_again():
    s, new = settings(health_check={"window": 30}), ids()
    sick = Signal("health_check", "shop", True, "shop", "1 of 1 fail")
    d = decide(s, [sick], [], {}, T, new, observed=["health_check"])
    assert d.opened == [] and d.pending == {("health_check", "shop"): T}
    d = decide(s, [sick], [], d.pending, T + 29, new, observed=["health_check"])
    assert d.opened == []
    gap = decide(s, [], [], d.pending, T + 29.5, new, observed=["health_check"])
    assert gap.pending == {}  # it passed once: the window starts again
    d = decide(s, [sick], [], gap.pending, T + 40, new, observed=["health_check"])
    d = decide(s, [sick], [], d.pending, T + 70, new, observed=["health_check"])
    assert [i.opened_at for i in d.opened] == [T + 70]


def test_events_decided_between_looks_keep_an_observed_rules_window_running():
    s, new = settings(health_check={"window": 30}), ids()
    sick = Signal("health_check", "shop", True, "shop", "1 of 1 fail")
    d = decide(s, [sick], [], {}, T, new, observed=["health_check"])
    d = decide(s, a.signals_of("cron.succeeded", "api", "", {"job": "j"}), [], d.pending, T + 10, new)
    assert d.pending == {("health_check", "shop"): T}
    d = decide(s, [sick], [], d.pending, T + 30, new, observed=["health_check"])
    assert [i.opened_at for i in d.opened] == [T + 30]


def test_an_observed_incident_resolves_when_absent_from_a_look_but_not_when_the_look_failed():
    s, new = effective({}), ids()
    full = Signal("disk", "/var/lib/docker", True, None, "91% full", 91.0)
    [incident] = decide(s, [full], [], {}, T, new, observed=["disk"]).opened
    kept = decide(s, [], [incident], {}, T + 10, new, observed=["crash_loop"])  # the disk look failed
    assert kept.resolved == [] and incident.open
    gone = decide(s, [], [incident], {}, T + 20, new, observed=["disk"])
    assert gone.resolved == [incident] and not incident.open


def test_turning_a_rule_off_resolves_its_incidents_and_a_destroyed_app_its_own():
    new = ids()
    on = effective({})
    shop = decide(on, a.signals_of("deploy.failed", "shop", "x", {}), [], {}, T, new).opened[0]
    api = decide(on, a.signals_of("cron.failed", "api", "x", {"job": "j"}), [], {}, T, new).opened[0]
    off = settings(deploy_failed={"enabled": False})
    d = decide(off, a.signals_of("deploy.failed", "web", "x", {}), [shop, api], {}, T + 1, new)
    assert d.opened == [] and d.resolved == [shop] and shop.resolution == "the rule was turned off"
    d = decide(on, [], [api], {}, T + 2, new, gone_apps=["api"])
    assert d.resolved == [api] and api.resolution == "api was destroyed"


def test_within_one_batch_the_last_word_on_a_key_counts():
    s, new = effective({}), ids()
    batch = [*a.signals_of("deploy.failed", "shop", "x", {}), *a.signals_of("deploy.succeeded", "shop", "", {})]
    assert decide(s, batch, [], {}, T, new).opened == []


def test_prune_keeps_the_newest_resolved():
    done = [Incident(f"i{n}", "disk", "/", None, "", T, resolved_at=T + n) for n in range(5)]
    assert sorted(a.prune(done, 3)) == ["i0", "i1"]
    assert a.prune(done, 10) == []


def test_incidents_round_trip_through_their_stored_form():
    i = Incident("i1", "http_5xx", "shop", "shop", "50% of 20", T, 50.0, T + 9, "the condition cleared")
    assert Incident.from_dict(i.to_dict()) == i
    assert i.view()["state"] == "resolved" and i.view()["title"] == "5xx responses"


# ---- rates over a window


def metrics(requests: int, errors: int, slow: int = 0) -> dict:
    """The proxy's to_dict() shape: `slow` of the requests took 2.5 s, the rest 5 ms."""
    fast = requests - slow
    bounds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    cumulative = [[b, (fast if b >= 0.005 else 0) + (slow if b >= 2.5 else 0)] for b in bounds]
    return {
        "requests": requests,
        "responses": {"1xx": 0, "2xx": requests - errors, "3xx": 0, "4xx": 0, "5xx": errors},
        "latency_seconds": {"buckets": [*cumulative, ["+Inf", requests]]},
    }


def test_counts_and_p95_over_a_window_from_cumulative_counters():
    samples = [Sample.of(T, metrics(100, 0)), Sample.of(T + 60, metrics(150, 10)), Sample.of(T + 120, metrics(200, 40))]
    assert a.over_window(samples, T + 120, 60) == (50, 30, 0.005)
    assert a.over_window(samples, T + 120, 300)[:2] == (100, 40)  # the oldest sample when none is old enough
    slow = [Sample.of(T, metrics(0, 0)), Sample.of(T + 10, metrics(20, 0, slow=10))]
    assert a.over_window(slow, T + 10, 60)[2] == 2.5
    reset = [Sample.of(T, metrics(500, 5)), Sample.of(T + 10, metrics(30, 30))]
    assert a.over_window(reset, T + 10, 60)[:2] == (30, 30)  # a new proxy counts from zero
    assert a.over_window(samples[:1], T, 60) == (0, 0, None)


def test_rate_signals_need_enough_requests_and_a_share_above_the_threshold():
    s = settings(http_5xx={"threshold": 50, "window": 10}, latency_p95={"threshold": 1, "window": 10})
    few = [Sample(T, 0, 0, ()), Sample.of(T + 5, metrics(9, 9))]
    assert a.rate_signals("shop", few, T + 5, s) == []  # under MIN_REQUESTS
    bad = [Sample(T, 0, 0, ()), Sample.of(T + 5, metrics(20, 11))]
    [signal] = a.rate_signals("shop", bad, T + 5, s)
    assert (signal.rule, signal.key, signal.value) == ("http_5xx", "shop", 55.0)
    assert "55% of 20 responses were 5xx over the last 10 s (threshold 50%)" in signal.message
    slow = [Sample(T, 0, 0, ()), Sample.of(T + 5, metrics(20, 0, slow=5))]
    [p95] = a.rate_signals("shop", slow, T + 5, s)
    assert p95.rule == "latency_p95" and p95.value == 2.5 and "p95 latency up to 2.5 s" in p95.message


def test_trim_keeps_one_sample_older_than_the_longest_window():
    samples = [Sample(T + n, n, 0, ()) for n in range(0, 100, 10)]
    a.trim(samples, T + 90, 35)
    assert [s.at - T for s in samples] == [50, 60, 70, 80, 90]


# ---- notifications


def test_subject_and_body_name_the_app_and_the_rule():
    i = Incident("i9", "deploy_failed", "shop", "shop", "build failed: exit 1", T)
    assert a.subject(i) == "[lbsolo] ALERT shop: deploy failed"
    text = a.body(i, lambda ts: f"t{ts - T:g}")
    assert "Rule: deploy_failed (deploy failed)" in text and "App: shop" in text and "What: build failed" in text
    i.resolved_at, i.resolution = T + 60, "the condition cleared"
    assert a.subject(i) == "[lbsolo] RESOLVED shop: deploy failed"
    assert "Resolved: t60 (the condition cleared)" in a.body(i, lambda ts: f"t{ts - T:g}")
    disk = Incident("i8", "disk", "/var/lib/docker", None, "91%", T)
    assert a.subject(
        disk
    ) == "[lbsolo] ALERT /var/lib/docker: disk filling up" and "Subject: /var/lib/docker" in a.body(disk, str)


def test_reading_alerts_is_for_any_platform_reader_and_changing_a_rule_is_the_admins():
    from lbsolo.api.scopes import refusal

    rule = "/api/alerts/rules/{rule}"
    for role in ("read", "deploy", "admin"):
        assert refusal(role, (), "GET", "/api/alerts", {}) is None
        assert refusal(role, (), "GET", "/api/alerts/rules", {}) is None
    assert refusal("admin", (), "PUT", rule, {"rule": "disk"}) is None
    assert refusal("admin", (), "POST", "/api/alerts/test", {}) is None
    for role in ("read", "deploy"):
        assert "needs an admin token" in (refusal(role, (), "PUT", rule, {"rule": "disk"}) or "")
        assert "needs an admin token" in (refusal(role, (), "POST", "/api/alerts/test", {}) or "")
    assert "limited to the apps shop" in (refusal("read", ("shop",), "GET", "/api/alerts", {}) or "")
