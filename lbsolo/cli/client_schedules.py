"""The API calls of an app's scheduled jobs (cron, cron:add, cron:remove, cron:run, cron:runs) and
log drains (drains, drains:add, drains:remove), typed as lbsolo.cli.client's are. They use only
the client's public request() and stream().
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lbsolo.cli.client import Client, api_path


# scheduled jobs
def cron_jobs(c: Client, name: str) -> list[dict[str, Any]]:
    return list(c.request("GET", api_path("apps", name, "cron")))


def add_cron(c: Client, name: str, job: dict[str, Any]) -> dict[str, Any]:
    return dict(c.request("POST", api_path("apps", name, "cron"), json=job))


def remove_cron(c: Client, name: str, job: str) -> dict[str, Any]:
    return dict(c.request("DELETE", api_path("apps", name, "cron", job)))


def run_cron(c: Client, name: str, job: str) -> Iterator[dict[str, Any]]:
    """A job now: its output lines, then its result."""
    return c.stream("POST", api_path("apps", name, "cron", job, "run"))


def cron_runs(c: Client, name: str, job: str | None = None) -> list[dict[str, Any]]:
    return list(c.request("GET", api_path("apps", name, "cron-runs"), params={"job": job} if job else None))


def cron_run_log(c: Client, name: str, run: str) -> list[str]:
    return list(c.request("GET", api_path("apps", name, "cron-runs", run, "logs")))


# log drains
def drains(c: Client, name: str) -> list[dict[str, Any]]:
    return list(c.request("GET", api_path("apps", name, "drains")))


def add_drain(c: Client, name: str, url: str) -> dict[str, Any]:
    return dict(c.request("POST", api_path("apps", name, "drains"), json={"url": url}))


def remove_drain(c: Client, name: str, drain: str) -> dict[str, Any]:
    return dict(c.request("DELETE", api_path("apps", name, "drains", drain)))
