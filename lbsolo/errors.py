"""The one exception tree of lbsolo.

Every error a user can cause or see is an LbsoloError with a stable code; the API maps the
code's status to HTTP, the CLI prints the message. Library errors are re-raised `from` these.
"""


class LbsoloError(Exception):
    """Base of every error lbsolo raises on purpose."""

    code = "error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(LbsoloError):
    code = "invalid"
    status = 422


class NotFound(LbsoloError):
    code = "not_found"
    status = 404


class Conflict(LbsoloError):
    code = "conflict"
    status = 409


class Unauthorized(LbsoloError):
    code = "unauthorized"
    status = 401


class TooLarge(LbsoloError):
    code = "too_large"
    status = 413


class BuildFailed(LbsoloError):
    code = "build_failed"
    status = 422


class DeployFailed(LbsoloError):
    code = "deploy_failed"
    status = 500


class EngineError(LbsoloError):
    """The Docker engine refused or failed an operation."""

    code = "engine"
    status = 502


class EngineUnavailable(EngineError):
    code = "engine_unavailable"
    status = 503


class DaemonUnavailable(LbsoloError):
    """The CLI could not reach the daemon's API."""

    code = "daemon_unavailable"
    status = 503


class APIError(LbsoloError):
    """An error the daemon's API answered with, as seen by a client."""

    def __init__(self, message: str, code: str = "error", status: int = 500) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
