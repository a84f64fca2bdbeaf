"""The web UI's pure view helpers: natural sorting of app names; add-on backups' red mark, sizes,
intervals and the state of a backup or restore the UI started."""

from __future__ import annotations

import random
import time

from lbsolo.api.web_views import BACKUP_GRACE, backup_alarm, duration_text, job_view, natural_key, size_text

DAY = 86400.0


def test_names_sort_as_people_read_them():
    names = ["s10", "s2", "s1", "api", "s2-worker", "s100", "web3", "web20", "2fa", "Api-2"]
    want = ["api", "Api-2", "s1", "s2", "s2-worker", "s10", "s100", "web3", "web20", "2fa"]
    assert sorted(names, key=natural_key) == want


def test_two_hundred_apps_sort_by_their_numbers():
    names = [f"shop-{i}" for i in range(1, 201)]
    shuffled = names[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=natural_key) == names


def test_leading_zeros_and_equal_numbers_still_sort_deterministically():
    assert sorted(["a01", "a1", "a001"], key=natural_key) == sorted(["a001", "a01", "a1"], key=natural_key)
    assert natural_key("a01") != natural_key("a1")
    assert sorted(["b", "a", "c"], key=natural_key) == ["a", "b", "c"]


def listing(*backups: dict, schedule: str | None = None, next_run: float | None = None) -> dict:
    return {"addon": "db", "schedule": schedule, "keep": 7, "next_run": next_run, "backups": list(backups)}


def backup(created: float, verified: bool | None = True, error: str | None = None) -> dict:
    return {"id": f"b{int(created)}", "created": created, "verified": verified, "verify_error": error}


def test_no_red_mark_for_verified_backups_or_none_at_all():
    now = time.time()
    assert backup_alarm(listing(), now) is None
    assert backup_alarm(listing(backup(now - 30 * DAY)), now) is None  # no schedule: old is not late
    assert backup_alarm(listing(backup(now), backup(now - 60, verified=False, error="x")), now) is None  # newest counts
    assert backup_alarm(listing(backup(now - 10, verified=None)), now) is None  # not verified yet is not a failure


def test_red_mark_when_the_newest_backup_failed_verification():
    now = time.time()
    alarm = backup_alarm(listing(backup(now - 60), backup(now, verified=False, error="3 keys missing")), now)
    assert alarm is not None and "failed verification: 3 keys missing" in alarm
    assert "no reason given" in (backup_alarm(listing(backup(now, verified=False)), now) or "")


def test_red_mark_when_a_schedule_has_no_backup_within_its_interval():
    now = time.time()
    daily = "0 3 * * *"
    assert backup_alarm(listing(backup(now - 3600), schedule=daily, next_run=now + 3600), now) is None
    late = backup_alarm(listing(backup(now - 3 * DAY), schedule=daily, next_run=now + 3600), now)
    assert late is not None and "no backup within its interval (1 day)" in late
    # A schedule just set, no backup yet: its first run is not late; once overdue it is.
    assert backup_alarm(listing(schedule=daily, next_run=now + 3600), now) is None
    assert backup_alarm(listing(schedule=daily, next_run=now - 10), now) is None  # the scheduler's tick
    overdue = backup_alarm(listing(schedule=daily, next_run=now - BACKUP_GRACE - 1), now)
    assert overdue is not None and "overdue" in overdue


def test_sizes_and_intervals_read_as_people_say_them():
    assert [size_text(n) for n in (0, 512, 1536, 2 * 1024**2, 5 * 1024**3, 3 * 1024**4)] == [
        "0 B", "512 B", "1.5 KB", "2.0 MB", "5.0 GB", "3.0 TB",
    ]  # fmt: skip
    assert [duration_text(s) for s in (30, 900, 6 * 3600, DAY, 7 * DAY)] == ["30 s", "15 min", "6 h", "1 day", "7 days"]


def test_job_view_says_running_then_what_came_of_it():
    assert job_view("backup", None, 1.0)["running"] is True
    assert job_view("restore", {}, 1.0)["text"] == "restoring…"
    done = job_view("backup", {"ok": True, "backup": {"id": "20250101T030000Z"}}, 1.0)
    assert (done["running"], done["ok"], done["text"]) == (False, True, "backup 20250101T030000Z made and verified")
    assert job_view("restore", {"ok": True, "backup": {"id": "X"}}, 1.0)["text"] == "restored from X"
    failed = job_view("restore", {"ok": False, "error": {"message": "boom"}}, 1.0)
    assert (failed["ok"], failed["text"]) == (False, "restore failed: boom")
