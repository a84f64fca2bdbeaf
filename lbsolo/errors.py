"""The one exception tree of lbsolo.

Every error a user can cause or see is an LbsoloError with a stable code; the API maps the
code's status to HTTP, the CLI prints the message. Library errors are re-raised `from` these.
"""

from __future__ import annotations

import errno


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


class Forbidden(LbsoloError):
    """The caller is known but its token's role or apps do not cover this."""

    code = "forbidden"
    status = 403


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


class StorageError(LbsoloError):
    """A file lbsolo keeps (its state) could not be written; what was there before is kept."""

    code = "storage"
    status = 500

    @classmethod
    def writing(cls, what: str, path: object, e: OSError) -> StorageError:
        """The error for a failed write of `what` at `path`: DiskFull when the disk (or quota) is full."""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(f"cannot save {what} to {path}: the disk holding it is full; the previous {what} is kept")
        return cls(f"cannot save {what} to {path}: {e.strerror or e}; the previous {what} is kept")


class DiskFull(StorageError):
    code = "disk_full"
    status = 507  # Insufficient Storage


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
