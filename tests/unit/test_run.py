"""The health check's probe schedule (a pure decision)."""

from lbsolo.models import HealthCheck
from lbsolo.run import STARTUP_POLL, STARTUP_WINDOW, probe_delay


def test_a_starting_replica_is_probed_every_few_milliseconds():
    check = HealthCheck(interval=0.5)
    assert probe_delay(0.0, check, answered=False) == STARTUP_POLL
    assert probe_delay(STARTUP_WINDOW - 0.01, check, answered=False) == STARTUP_POLL


def test_slow_starters_and_failing_answers_are_probed_at_the_check_interval():
    check = HealthCheck(interval=0.5)
    assert probe_delay(STARTUP_WINDOW + 0.01, check, answered=False) == 0.5
    # an app that answers (say 503 while it warms up) does work for each probe: no fast polling
    assert probe_delay(0.1, check, answered=True) == 0.5


def test_a_check_interval_shorter_than_the_startup_poll_wins():
    assert probe_delay(0.0, HealthCheck(interval=0.005), answered=False) == 0.005
