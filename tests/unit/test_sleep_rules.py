"""The pure rules of sleeping apps: how long is written, and which apps need asking twice."""

from __future__ import annotations

import pytest

from lbsolo.core_sleep import parse_sleep_after, runs_without_requests
from lbsolo.errors import InvalidInput
from lbsolo.models import App


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1d", 86400), ("45", 45), ("1.5m", 90)])
def test_durations(text, seconds):
    assert parse_sleep_after(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0", "0.5s", "-5m", "31d", "5 minutes", "1e3"])
def test_bad_durations_are_refused_with_the_form_to_use(text):
    with pytest.raises(InvalidInput):
        parse_sleep_after(text)


def test_workers_and_cron_make_an_app_that_no_request_wakes():
    assert not runs_without_requests(App("a", formation={"web": 2}), [])
    assert not runs_without_requests(App("a", formation={"web": 1, "worker": 0}), [])
    assert runs_without_requests(App("a", formation={"web": 1, "worker": 1}), [])
    assert runs_without_requests(App("a"), [{"schedule": "0 3 * * *", "command": "x"}])


def test_the_sleep_settings_survive_the_state_file_and_an_older_record_reads_awake():
    app = App("a", sleep_after=600.0, asleep=True)
    assert App.from_dict(app.to_dict()) == app
    old = App.from_dict({"name": "a"})
    assert (old.sleep_after, old.asleep) == (None, False)
