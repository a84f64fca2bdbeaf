"""Preview app verbs: `previews`, `previews:settings`, `previews:destroy`.

Previews are made by the app's push webhook (`lbsolo hooks:url APP`) when a pull/merge request
opens, updated on each push to it and removed when it closes; these verbs show and tune them.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lbsolo.cli import client_previews as api
from lbsolo.cli.common import AppArg, Table, _client, _when, app, clean_errors, console, escape


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table("app", "PR", "status", "preview", "URL", "commit", "fork", "updated", "note")
    colors = {"running": "green", "building": "yellow", "failed": "red", "refused": "red", "missing": "red"}
    for p in rows:
        status = f"[{colors.get(p['status'], 'yellow')}]{p['status']}[/]"
        table.add_row(
            p["parent"], f"#{p['number']}", status, p["app"] or "-", p["url"] or "-", p["head"][:12] or "-",
            "yes" if p["fork"] else "", _when(p["updated_at"]), escape(p["error"][:80]),
        )  # fmt: skip
    return table


@app.command("previews")
@clean_errors
def previews(name: Annotated[str | None, typer.Argument(help="App name (all apps without one).")] = None) -> None:
    """List preview apps of pull requests: an app's (with its settings), or every app's."""
    with _client() as c:
        if name is None:
            rows = api.all_previews(c)
        else:
            out = api.app_previews(c, name)
            rows = out["previews"]
            s = out["settings"]
            state = "[green]on[/]" if s["enabled"] else "[yellow]off[/]"
            console.print(
                f"Previews of {name}: {state}; at most {s['max']} at once; secrets "
                f"{'included' if s['with_secrets'] else 'left out'}; add-ons {'cloned from their latest backup' if s['with_addons'] else 'none'}"  # noqa: E501
            )
            if not out["repo_connected"]:
                console.print(f"[yellow]{name} has no connected repository: lbsolo hooks:url {name} --repo URL[/]")
    if not rows:
        console.print("No previews: a pull request opened on the connected repository makes one (when enabled).")
        return
    console.print(_table(rows))


@app.command("previews:settings")
@clean_errors
def previews_settings(
    name: AppArg,
    enable: Annotated[bool | None, typer.Option("--enable/--disable", help="Pull requests get previews.")] = None,
    with_secrets: Annotated[
        bool | None,
        typer.Option("--with-secrets/--without-secrets", help="Previews get the app's secret config (never its add-on URLs)."),  # noqa: E501
    ] = None,
    with_addons: Annotated[
        bool | None,
        typer.Option("--with-addons/--without-addons", help="Previews get their own copy of the app's add-ons, from their latest backup."),  # noqa: E501
    ] = None,
    max_previews: Annotated[int | None, typer.Option("--max", help="Previews of this app at once (1-50).")] = None,
) -> None:
    """Turn an app's previews on or off and set what they get: secrets, add-ons, how many at once."""
    changes = {"enabled": enable, "with_secrets": with_secrets, "with_addons": with_addons, "max": max_previews}
    with _client() as c:
        out = api.set_settings(c, name, {k: v for k, v in changes.items() if v is not None})
    s = out["settings"]
    console.print(
        f"Previews of {name}: {'on' if s['enabled'] else 'off'}, at most {s['max']}, secrets "
        f"{'included' if s['with_secrets'] else 'left out'}, add-ons {'cloned from their latest backup' if s['with_addons'] else 'none'}"  # noqa: E501
    )


@app.command("previews:destroy")
@clean_errors
def previews_destroy(
    name: AppArg, number: Annotated[int, typer.Argument(help="The pull request's number.")]
) -> None:
    """Remove one preview (containers, images, volumes, route) as closing its pull request would."""
    with _client() as c:
        out = api.destroy(c, name, number)
    console.print(f"Removed the preview of {name} #{number} ({out['preview'] or 'never made'})")
