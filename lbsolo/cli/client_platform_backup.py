"""The API calls of the platform backups the daemon keeps (backup --schedule, --status, --now,
backup:target), typed as lbsolo.cli.client's are: they belong there, and move there once that
file is free to take them. They use only the client's public request().
"""

from __future__ import annotations

from typing import Any

from lbsolo.cli.client import Client

# A target is checked by writing to it; a backup now stages and writes the whole platform.
TARGET_TIMEOUT = 120.0


def status(c: Client) -> dict[str, Any]:
    return dict(c.request("GET", "/api/backup/status"))


def backup_now(c: Client) -> dict[str, Any]:
    return dict(c.request("POST", "/api/backup/now", timeout=None))


def set_schedule(c: Client, schedule: str | None, keep: int | None) -> dict[str, Any]:
    return dict(c.request("PUT", "/api/backup/schedule", json={"schedule": schedule, "keep": keep}))


def set_target(c: Client, body: dict[str, Any]) -> dict[str, Any]:
    return dict(c.request("PUT", "/api/backup/target", json=body, timeout=TARGET_TIMEOUT))
