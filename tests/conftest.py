import os

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--skip-acme",
        action="store_true",
        help="skip the tests marked acme (a real ACME CA, pebble: slow); ignored in CI, where they always run",
    )
    parser.addoption(
        "--skip-drill",
        action="store_true",
        help="skip the whole-platform restore drill (slow); ignored in CI, where it always runs",
    )


def pytest_collection_modifyitems(config, items):
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    skip_acme = config.getoption("--skip-acme") and not in_ci
    skip_drill = config.getoption("--skip-drill") and not in_ci
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.docker)
        if skip_acme and item.get_closest_marker("acme") is not None:
            item.add_marker(pytest.mark.skip(reason="--skip-acme (they run in CI)"))
        if skip_drill and item.get_closest_marker("drill") is not None:
            item.add_marker(pytest.mark.skip(reason="--skip-drill (it runs in CI)"))


@pytest.fixture(scope="session")
def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
