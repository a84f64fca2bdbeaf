"""Alert verbs: `alerts` (open incidents, the recent resolved ones, the email channel), `alerts:rules`,
`alerts:set RULE` (on/off, threshold, window) and `alerts:test` (a test notification).

The rules and what each watches are in lbsolo/alerts.py's docstring and the README. Incidents go
to webhooks (`webhooks:add URL --event 'alert.*'`) and to email (LBSOLO_SMTP_URL).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lbsolo.cli import client_alerts as alerts_api
from lbsolo.cli.common import Table, _client, _when, app, clean_errors, console, escape
from lbsolo.errors import InvalidInput


def _channel(c: dict[str, Any]) -> str:
    if c["state"] == "off":
        return "Email: off (set LBSOLO_SMTP_URL=smtp://user:pass@host:587?from=…&to=… and restart lbsolo)"
    if c["state"] == "invalid":
        return f"Email: [red]LBSOLO_SMTP_URL is not used: {escape(c['problem'] or '')}[/]"
    color = {"ok": "green", "failing": "red"}.get(c["state"], "yellow")
    line = (
        f"Email to {escape(', '.join(c['to']))} via {escape(c['server'] or '')}: [{color}]{c['state']}[/], "
        f"{c['sent']} sent, {c['failed_attempts']} failed attempts, {c['dropped']} dropped, {c['waiting']} waiting"
    )
    if c.get("last_error"):
        line += f"\n  last error {_when(c['last_error_at'])}: {escape(c['last_error'])}"
    return line


@app.command("alerts")
@clean_errors
def alerts_list(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Resolved incidents shown.")] = 10,
) -> None:
    """Open alert incidents, the most recent resolved ones, and the email channel's state."""
    with _client() as c:
        out = alerts_api.alerts(c, limit)
    if out["open"]:
        table = Table("since", "rule", "about", "what")
        for i in out["open"]:
            table.add_row(
                _when(i["opened_at"]), f"[red]{i['rule']}[/]", escape(i["app"] or i["key"]), escape(i["message"])
            )
        console.print(table)
    else:
        console.print("[green]No open alerts.[/]")
    if out["resolved"]:
        console.print("Recently resolved:")
        table = Table("opened", "resolved", "rule", "about", "what")
        for i in out["resolved"]:
            table.add_row(
                _when(i["opened_at"]),
                _when(i["resolved_at"]),
                i["rule"],
                escape(i["app"] or i["key"]),
                escape(i["message"]),
            )
        console.print(table)
    for channel in out["channels"]:
        console.print(_channel(channel))


@app.command("alerts:rules")
@clean_errors
def alerts_rules() -> None:
    """The alert rules: on or off, threshold and window (defaults, or what alerts:set changed)."""
    with _client() as c:
        rows = alerts_api.rules(c)
    table = Table("rule", "what", "kind", "on", "threshold", "window")
    for r in rows:
        threshold = "-" if r["threshold"] is None else f"{r['threshold']:g} {r['unit']}"
        window = "-" if r["window"] is None else f"{r['window']:g} s ({r['window_is']})"
        table.add_row(
            r["rule"], escape(r["title"]), r["kind"], "on" if r["enabled"] else "[yellow]off[/]", threshold, window
        )
    console.print(table)


@app.command("alerts:set")
@clean_errors
def alerts_set(
    rule: Annotated[str, typer.Argument(help="Rule name (see: lbsolo alerts:rules).")],
    threshold: Annotated[float | None, typer.Option(help="In the rule's unit (%, seconds, days, restarts).")] = None,
    window: Annotated[str | None, typer.Option(help="Seconds, or 90s, 5m, 1h.")] = None,
    on: Annotated[bool | None, typer.Option("--on/--off", help="Turn the rule on or off.")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Back to the rule's defaults (then apply the rest).")] = False,
) -> None:
    """Change an alert rule: turn it on or off, or set its threshold or window."""
    body = {k: v for k, v in {"threshold": threshold, "window": window, "enabled": on}.items() if v is not None}
    if not body and not reset:
        raise InvalidInput("nothing to change: give --threshold, --window, --on/--off or --reset")
    with _client() as c:
        r = alerts_api.set_rule(c, rule, {**body, "reset": reset})
    threshold_s = "" if r["threshold"] is None else f", threshold {r['threshold']:g} {r['unit']}"
    window_s = "" if r["window"] is None else f", window {r['window']:g} s"
    console.print(f"Rule {r['rule']}: {'on' if r['enabled'] else 'off'}{threshold_s}{window_s}")


@app.command("alerts:test")
@clean_errors
def alerts_test() -> None:
    """Send a test alert: the event alert.test to the webhooks, and an email; then say how the email went."""
    import time

    with _client() as c:
        failed = alerts_api.test(c)["email"]["failed_attempts"]
        channel = alerts_api.alerts(c, 0)["channels"][0]
        deadline = time.monotonic() + 15
        # Until it is sent, or a try failed (it is retried in the background), or 15 s.
        while channel["waiting"] and channel["failed_attempts"] == failed and time.monotonic() < deadline:
            time.sleep(0.2)
            channel = alerts_api.alerts(c, 0)["channels"][0]
    console.print("Sent alert.test to the webhooks that want alert.*")
    console.print(_channel(channel))
