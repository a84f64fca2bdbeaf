"""The `lbsolo` command: `lbsolo up` and the entry point; the other verbs live in verbs_*.py.

Importing this module registers every verb on the app (cli/common.py's).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main
from typer.models import CommandInfo, TyperInfo

from lbsolo import __version__
from lbsolo.cli import (
    verbs_addon_backups,
    verbs_addons,
    verbs_alerts,
    verbs_apps,
    verbs_backup,
    verbs_cluster,
    verbs_cron,
    verbs_deploy,
    verbs_drains,
    verbs_export,
    verbs_platform,
    verbs_previews,
    verbs_service,
)
from lbsolo.cli.common import (
    Table,
    app,
    clean_errors,
    console,
)
from lbsolo.config import Settings
from lbsolo.errors import LbsoloError

__all__ = [
    "app",
    "app_for",
    "main",
    "verbs_addon_backups",
    "verbs_addons",
    "verbs_alerts",
    "verbs_apps",
    "verbs_backup",
    "verbs_cluster",
    "verbs_cron",
    "verbs_deploy",
    "verbs_drains",
    "verbs_export",
    "verbs_platform",
    "verbs_previews",
    "verbs_service",
]


@app.command()
@clean_errors
def up(
    proxy_host: Annotated[str | None, typer.Option(help="Proxy address (0.0.0.0 on a VPS).")] = None,
    proxy_port: Annotated[int | None, typer.Option(help="Proxy port (80 on a VPS).")] = None,
    https_port: Annotated[int | None, typer.Option(help="Proxy HTTPS port, 0 for none (443 on a VPS).")] = None,
    api_host: Annotated[str | None, typer.Option(help="API address.")] = None,
    api_port: Annotated[int | None, typer.Option(help="API port.")] = None,
    dns_host: Annotated[str | None, typer.Option(help="DNS address.")] = None,
    dns_port: Annotated[int | None, typer.Option(help="DNS port (UDP and TCP).")] = None,
    domain: Annotated[str | None, typer.Option(help="Apps are served at <app>.<domain>.")] = None,
    home: Annotated[Path | None, typer.Option(help="State directory ($LBSOLO_HOME, ~/.lbsolo).")] = None,
    backend: Annotated[
        str | None, typer.Option(help="Where containers run: docker (this engine) or swarm ($LBSOLO_BACKEND).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    """Start the daemon: API, scheduler, builder, HTTP proxy and DNS in one process."""
    import logging  # like the daemon's imports, only needed here: every other verb starts without them

    from lbsolo.daemon import Daemon

    settings = Settings.load(
        proxy_host=proxy_host,
        proxy_port=proxy_port,
        proxy_https_port=https_port,
        api_host=api_host,
        api_port=api_port,
        dns_host=dns_host,
        dns_port=dns_port,
        domain=domain,
        home=home,
        backend=backend,
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("urllib3", "docker", "uvicorn", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def ready(info: dict[str, Any]) -> None:
        table = Table(title=f"lbsolo {__version__} is up", show_header=False, box=None)
        table.add_row("API", info["api"])
        table.add_row("proxy", f"{info['proxy']}  (apps at http://<app>.{info['domain']}:{settings.proxy_port})")
        table.add_row("DNS", info["dns"])
        table.add_row("state", info["home"])
        table.add_row("docker", info["docker"])
        table.add_row("backend", info["backend"])
        table.add_row("apps", f"{info['apps']} ({info['replicas']} replicas serving)")
        console.print(table)
        for note in info["backend_notes"]:
            console.print(note, style="yellow")
        console.print("Press Ctrl+C to stop (apps keep running).", style="dim")

    import asyncio

    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is absent on Windows
        runner = asyncio.run
    try:
        runner(Daemon(settings).run(on_ready=ready))
    except OSError as e:
        raise LbsoloError(f"cannot start: {e}") from e
    console.print("lbsolo stopped.")


def app_for(args: list[str]) -> typer.Typer:
    """The app to run for these arguments: one with only the verb asked for, when there is one.

    typer turns every registered verb into a click command on each start, some 50 ms for all of
    them, paid by every call of the CLI; help, completion and typos (click suggests the nearest
    verb) need them all.
    """
    verb = args[0] if args else ""
    chosen = [c for c in app.registered_commands if _verb(c) == verb]
    groups = [g for g in app.registered_groups if g.name == verb]  # verbs with verbs under them: export k8s
    if len(chosen) + len(groups) != 1:
        return app
    single = copy.copy(app)
    single.registered_commands = chosen
    single.registered_groups = groups
    single.registered_callback = TyperInfo()  # still a group, so the verb's name is still expected first
    return single


def _verb(command: CommandInfo) -> str:
    return command.name or typer.main.get_command_name(getattr(command.callback, "__name__", ""))


def main() -> None:
    app_for(sys.argv[1:])()


# Help lists the verbs in the order a new user needs them: start, deploy, look; then the rest,
# grouped by module (an app's verbs, releases, the platform's).
_FIRST = ("up", "deploy", "apps", "apps:create", "ps", "logs", "releases", "rollback")
app.registered_commands.sort(key=lambda c: _FIRST.index(_verb(c)) if _verb(c) in _FIRST else len(_FIRST))
