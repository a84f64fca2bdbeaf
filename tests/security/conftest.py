"""The security tests share the unit tests' fixtures: no error may be logged, each event loop."""

from tests.unit.conftest import no_errors_logged, run

__all__ = ["no_errors_logged", "run"]  # fixtures, found by pytest under these names
