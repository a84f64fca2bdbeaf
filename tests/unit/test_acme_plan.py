"""When lbsolo asks an ACME CA: renewal time, backoff, the hourly cap, public names (lbsolo.acme_plan)."""

from __future__ import annotations

import pytest

from lbsolo.acme_plan import (
    BACKOFF_MAX,
    HOUR,
    RENEW_JITTER,
    CertRecord,
    attempts_in_window,
    backoff,
    is_public_name,
    next_try,
    renew_at,
)

DAY = 86400.0


def test_renewal_starts_when_a_third_of_the_lifetime_is_left_a_little_earlier_per_domain():
    start, end = 1_000_000.0, 1_000_000.0 + 90 * DAY
    at = renew_at("shop.example.com", start, end)
    assert end - 30 * DAY - 90 * DAY * RENEW_JITTER <= at <= end - 30 * DAY
    assert renew_at("shop.example.com", start, end) == at  # the same domain: the same time, after a restart
    others = {renew_at(f"app{i}.example.com", start, end) for i in range(20)}
    assert len(others) > 15  # certificates issued together do not renew together


def test_backoff_doubles_from_a_minute_up_to_a_day():
    assert backoff(0) == 0
    assert [backoff(n) for n in (1, 2, 3, 4)] == [60, 120, 240, 480]
    assert backoff(11) == 61440 and backoff(12) == BACKOFF_MAX and backoff(10_000) == BACKOFF_MAX


def test_a_new_domain_is_due_at_once_and_a_valid_certificate_at_its_renewal_time():
    now = 5_000_000.0
    assert next_try(CertRecord("a.example.com"), now) == now
    record = CertRecord("a.example.com", not_before=now - DAY, not_after=now + 89 * DAY, last_success=now - DAY)
    assert next_try(record, now) == renew_at("a.example.com", now - DAY, now + 89 * DAY) > now
    record.wanted_at = now  # certs:renew
    assert next_try(record, now) == now


def test_failures_wait_out_their_backoff_whether_the_preflight_or_the_ca_failed():
    now = 5_000_000.0
    record = CertRecord("a.example.com", last_attempt=now - 100, failures=3, last_error="does not resolve")
    assert next_try(record, now) == now - 100 + 240


def test_at_most_the_cap_of_orders_per_hour_the_next_when_the_oldest_leaves_the_hour():
    now = 5_000_000.0
    record = CertRecord("a.example.com", ca_attempts=[now - 3000, now - 2000, now - 10])
    assert next_try(record, now, per_hour=3) == now - 3000 + HOUR
    assert next_try(record, now, per_hour=4) == now
    old = CertRecord("a.example.com", ca_attempts=[now - 2 * HOUR, now - HOUR - 1, now - 10])
    assert next_try(old, now, per_hour=2) == now
    assert attempts_in_window(old.ca_attempts, now) == [now - 10]


def test_records_survive_a_round_trip_through_json_and_ignore_unknown_keys():
    record = CertRecord("a.example.com", issuer="Pebble", not_after=9.0, ca_attempts=[1.0, 2.0], failures=2)
    data = {**record.to_dict(), "from_a_newer_lbsolo": True}
    assert CertRecord.from_dict(data) == record


@pytest.mark.parametrize(
    ("name", "public"),
    [
        ("shop.example.com", True),
        ("a.b.example.org", True),
        ("EXAMPLE.com.", True),
        ("shop.lbsolo.localhost", False),
        ("localhost", False),
        ("shop.test", False),
        ("printer.local", False),
        ("db.internal", False),
        ("nas.home.arpa", False),
        ("*.example.com", False),
        ("192.0.2.10", False),
        ("2001:db8::1", False),
        ("intranet", False),
        ("", False),
    ],
)
def test_only_names_a_public_ca_can_validate_over_http_are_public(name, public):
    assert is_public_name(name) is public
