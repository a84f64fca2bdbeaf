"""Add-on verbs: `addons`, `addons:create`, `addons:info`, `addons:attach`, `addons:detach`,
`addons:destroy`, `addons:expose`, `addons:unexpose`, `addons:credentials:rotate`,
`addons:promote`, `addons:shell`, `addons:upgrade` — databases for apps, each a container lbsolo runs and links
by a config var.

The access verbs (expose, rotate, promote, shell) and upgrade call lbsolo.cli.client_addon_access.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from lbsolo.cli import client_addon_access as access
from lbsolo.cli.common import Table, _client, _size, _when, app, clean_errors, console, err, escape, render_job
from lbsolo.errors import LbsoloError

AddonArg = Annotated[str, typer.Argument(help="Add-on name.")]
AppOption = Annotated[str, typer.Option("--app", "-a", help="The app it is for.")]
AsOption = Annotated[str | None, typer.Option("--as", help="The app's config var for its URL (default per kind).")]


def _cpu(a: dict[str, Any]) -> str:
    stats = a.get("stats")
    return "-" if not stats else f"{stats['cpu_percent']:.1f} %"


def _memory(a: dict[str, Any]) -> str:
    """Used / limit (the machine's memory when the container has no limit of its own)."""
    stats = a.get("stats")
    if not stats:
        return "-"
    limit = f" / {_size(int(stats['mem_limit']))}" if stats.get("mem_limit") else ""
    return f"{_size(int(stats['mem_bytes']))}{limit}"


def _attached(result: dict[str, object], app_name: str, var: str) -> None:
    if not result.get("release"):
        console.print(f"{var} set on {app_name}; it applies from the first deploy.")


@app.command("addons")
@clean_errors
def addons_list() -> None:
    """List add-ons: name, kind, version, status, CPU and memory now, attached apps."""
    with _client() as c:
        rows = c.addons()
    table = Table("name", "kind", "version", "status", "cpu", "memory", "attached to", "created")
    for a in rows:
        attached = ", ".join(f"{app_name} ({var})" for app_name, var in sorted(a["attachments"].items())) or "-"
        table.add_row(
            a["name"], a["kind"], a["version"], a["status"], _cpu(a), _memory(a), attached, _when(a["created_at"])
        )
    console.print(table if rows else "No add-ons yet: lbsolo addons:create postgres --app APP")


@app.command("addons:create")
@clean_errors
def addons_create(
    kind: Annotated[str, typer.Argument(help="postgres, redis or mariadb.")],
    app_name: AppOption,
    name: Annotated[str | None, typer.Option("--name", help="Default: <app>-<kind>.")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Major version, pinned (default per kind).")] = None,
    as_var: AsOption = None,
) -> None:
    """Create a database for an app: its URL becomes a secret config var, in a new release."""
    with _client() as c:
        result = render_job(c.create_addon(kind, app_name, name, version, as_var), f"creating the {kind} add-on")
    console.print(f"[bold green]{result.get('addon')}[/] is attached to {app_name}")
    _attached(result, app_name, as_var or "its URL")


@app.command("addons:info")
@clean_errors
def addons_info(name: AddonArg) -> None:
    """One add-on: kind, version, status, container, CPU and memory now, URL (password masked), attachments."""
    with _client() as c:
        a = c.addon(name)
    table = Table(show_header=False, box=None)
    container = a.get("container") or {}
    for key, value in (
        ("name", a["name"]),
        ("kind", f"{a['kind']} {a['version']}"),
        ("status", a["status"]),
        ("container", f"{container.get('state', 'missing')} ({container.get('image', '-')})"),
        ("cpu", _cpu(a)),
        ("memory", _memory(a)),
        ("url", a["url"]),
        ("attached", ", ".join(f"{k} as {v}" for k, v in sorted(a["attachments"].items())) or "-"),
        ("exposed", a.get("exposed_url") or "-"),
        ("created", _when(a["created_at"])),
    ):
        table.add_row(f"[bold]{key}[/]", escape(str(value)))
    console.print(table)


@app.command("addons:attach")
@clean_errors
def addons_attach(name: AddonArg, app_name: AppOption, as_var: AsOption = None) -> None:
    """Give one more app the add-on's URL (a new release of that app)."""
    with _client() as c:
        result = render_job(c.attach_addon(name, app_name, as_var), f"attaching {name}")
    _attached(result, app_name, as_var or "its URL")


@app.command("addons:detach")
@clean_errors
def addons_detach(name: AddonArg, app_name: AppOption) -> None:
    """Take the add-on's URL away from an app (a new release) and the add-on off its network."""
    with _client() as c:
        render_job(c.detach_addon(name, app_name), f"detaching {name}")
    console.print(f"{name} detached from {app_name}")


@app.command("addons:destroy")
@clean_errors
def addons_destroy(
    name: AddonArg,
    confirm: Annotated[str, typer.Option("--confirm", help="The add-on's name again: its data is deleted.")] = "",
    detach: Annotated[bool, typer.Option("--detach", help="Detach it from its apps first.")] = False,
    no_backup: Annotated[bool, typer.Option("--no-backup", help="Skip the final backup.")] = False,
) -> None:
    """Delete an add-on and its data, after a final verified backup (unless --no-backup)."""
    if confirm != name:
        raise LbsoloError(f"destroying {name} deletes its data: repeat its name with --confirm {name}")
    with _client() as c:
        out = c.destroy_addon(name, confirm, detach, backup=not no_backup)
    detached = f" (detached from {', '.join(out['detached'])})" if out.get("detached") else ""
    console.print(f"Destroyed {name}{detached}")
    final = out.get("final_backup")
    if final:
        console.print(f"Its final backup {final['id']} is kept at {escape(final['path'])} "
                      f"(restore it with: lbsolo addons:restore OTHER {escape(final['path'])})")  # fmt: skip


@app.command("addons:upgrade")
@clean_errors
def addons_upgrade(
    name: AddonArg,
    version: Annotated[str, typer.Option("--version", help="The version to run, e.g. 15.8 or 17.")],
    via_dump: Annotated[
        bool, typer.Option("--via-dump", help="A new major: dump, restore into a new add-on, verify, move the apps.")
    ] = False,
    new_name: Annotated[
        str | None, typer.Option("--name", help="The new add-on's name (default: NAME-<major>).")
    ] = None,
) -> None:
    """A new version of an add-on: the same major in place (it restarts once); a new major only
    with --via-dump, the old one kept stopped until addons:destroy. A silent major jump is refused."""
    with _client() as c:
        result = render_job(access.upgrade(c, name, version, via_dump, new_name), f"upgrading {name}")
    if result.get("new"):
        moved = ", ".join(result.get("moved") or []) or "no app"
        console.print(f"[bold green]{result['new']}[/] runs {result['version']} and serves {moved}; {name} is "
                      f"stopped: lbsolo addons:destroy {name} --confirm {name} once you are sure")  # fmt: skip
    else:
        console.print(f"[bold green]{name}[/] runs {result['version']}")


def _public_warning(name: str, url: str) -> None:
    err.print(
        f"[bold red on yellow] PUBLIC [/] [bold red]{escape(name)} is reachable from other machines at "
        f"{escape(url)}[/]: anyone who reaches this machine can try its password. "
        f"Firewall it, or undo with: lbsolo addons:unexpose {escape(name)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("addons:expose")
@clean_errors
def addons_expose(
    name: AddonArg,
    port: Annotated[int | None, typer.Option("--port", "-p", help="Port here (default: a free one).")] = None,
    address: Annotated[str, typer.Option("--address", help="IP address to listen on.")] = "127.0.0.1",
    public: Annotated[bool, typer.Option("--public", help="Allow an address other machines reach.")] = False,
) -> None:
    """Publish an add-on's port on this machine (127.0.0.1 unless --public); it restarts once."""
    with _client() as c:
        out = access.expose(c, name, address, port, public)
    console.print(f"{name} is exposed at {escape(out['exposed_url'])}")
    if out.get("public"):
        _public_warning(name, out["exposed_url"])


@app.command("addons:unexpose")
@clean_errors
def addons_unexpose(name: AddonArg) -> None:
    """Take an add-on's published port away (it restarts once); its apps keep reaching it."""
    with _client() as c:
        access.unexpose(c, name)
    console.print(f"{name} is no longer exposed")


@app.command("addons:credentials:rotate")
@clean_errors
def addons_rotate(name: AddonArg) -> None:
    """New credentials: a second user (Redis: password), every attached app moved onto it in a
    zero-downtime release, then the old one removed."""
    with _client() as c:
        result = render_job(access.rotate(c, name), f"rotating {name}")
    moved = ", ".join(result.get("apps") or []) or "no app"
    console.print(f"[bold green]{name}[/]'s credentials are rotated ({moved} moved; the old ones no longer work)")


@app.command("addons:promote")
@clean_errors
def addons_promote(name: AddonArg, app_name: AppOption) -> None:
    """Make an add-on the app's DATABASE_URL (Redis: REDIS_URL); the one that was keeps the other var."""
    with _client() as c:
        render_job(access.promote(c, name, app_name), f"promoting {name}")
    console.print(f"{name} is {app_name}'s primary now")


@app.command("addons:shell")
@clean_errors
def addons_shell(name: AddonArg) -> None:
    """psql, redis-cli or mariadb inside the add-on's container; interactive on a terminal, or
    reading what is piped in (`echo 'select 1' | lbsolo addons:shell NAME`)."""
    with _client() as c:
        code = access.shell(c, name, tty=sys.stdin.isatty() and sys.stdout.isatty())
    raise typer.Exit(code)
