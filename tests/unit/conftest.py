"""Shared fixtures of the unit and security tests: no error may be logged, and event loops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


@pytest.fixture(autouse=True)
def no_errors_logged(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture):
    """Internal errors are logged, never raised: make them fail the test."""
    caplog.set_level(logging.WARNING)
    yield
    if request.node.get_closest_marker("errors_logged") is None:
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]


LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[None]]], None]:
    """`run(scenario)` runs an async scenario on each event loop the daemon may use, within 10 s."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(scenario: Callable[[], Awaitable[None]]) -> None:
        with asyncio.Runner(loop_factory=factory) as r:
            r.run(asyncio.wait_for(scenario(), 10))

    return runner
