"""Log drain verbs: `drains`, `drains:add`, `drains:remove`.

A drain sends every line of an app's log (its processes, builds, releases and cron runs) to a
syslog receiver (RFC 5424 over TCP, optionally TLS) or an HTTPS endpoint (logplex batches).
"""

from __future__ import annotations

from typing import Annotated

import typer

from lbsolo.cli import client_schedules as schedules
from lbsolo.cli.common import AppArg, Table, _client, _when, app, clean_errors, console, escape


@app.command("drains")
@clean_errors
def drains_list(name: AppArg) -> None:
    """List an app's log drains: URL (secrets cut), state, delivered, dropped, failures, last error."""
    with _client() as c:
        drains = schedules.drains(c, name)
    if not drains:
        console.print(f"No log drains: lbsolo drains:add {name} syslog+tls://HOST:PORT (or https://...)")
        return
    table = Table("id", "url", "state", "delivered", "dropped", "failed", "waiting", "last error")
    for d in drains:
        color = {"ok": "green", "failing": "red"}.get(d["state"], "yellow")
        error = f"{_when(d['last_error_at'])} {escape(d['last_error'])}" if d["last_error"] else "-"
        table.add_row(
            d["id"], escape(d["url"]), f"[{color}]{d['state']}[/]", str(d["delivered"]), str(d["dropped"]),
            str(d["failed_attempts"]), str(d["buffered"] + d["spilled"]), error,
        )  # fmt: skip
    console.print(table)


@app.command("drains:add")
@clean_errors
def drains_add(
    name: AppArg,
    url: Annotated[str, typer.Argument(help="syslog+tls://host:port, syslog://host:port or https://...")],
) -> None:
    """Send an app's logs to a drain: syslog (RFC 5424 over TCP/TLS) or HTTPS (logplex batches)."""
    with _client() as c:
        d = schedules.add_drain(c, name, url)
    console.print(f"Added drain {d['id']} to {name}: {escape(d['url'])} (token {d['token']})")


@app.command("drains:remove")
@clean_errors
def drains_remove(
    name: AppArg, drain: Annotated[str, typer.Argument(help="Drain id (see: lbsolo drains APP).")]
) -> None:
    """Stop and remove a log drain."""
    with _client() as c:
        schedules.remove_drain(c, name, drain)
    console.print(f"Removed drain {drain} of {name}")
