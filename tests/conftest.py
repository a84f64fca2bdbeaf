import os

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--skip-acme",
        action="store_true",
        help="skip the tests marked acme (a real ACME CA, pebble: slow); ignored in CI, where they always run",
    )


def pytest_collection_modifyitems(config, items):
    skip_acme = config.getoption("--skip-acme") and os.environ.get("CI", "").lower() not in ("1", "true", "yes")
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.docker)
        if skip_acme and item.get_closest_marker("acme") is not None:
            item.add_marker(pytest.mark.skip(reason="--skip-acme (they run in CI)"))


@pytest.fixture(scope="session")
def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
