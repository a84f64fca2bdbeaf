"""The `lbsolo` command line: each verb parses, calls the API (or starts the daemon), renders.

The only module that imports typer and rich. It never opens the state itself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from lbsolo import __version__
from lbsolo.client import Client
from lbsolo.config import Settings
from lbsolo.errors import LbsoloError
from lbsolo.models import validate_app_name
from lbsolo.source import pack

app = typer.Typer(
    help="lbsolo: a one-server PaaS. `lbsolo up`, then `lbsolo deploy`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(fn: F) -> F:
    """Turn lbsolo's errors into one red line and exit status 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LbsoloError as e:
            err.print(f"[bold red]error:[/] {e.message}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _client() -> Client:
    return Client(Settings.load())


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


AppArg = Annotated[str, typer.Argument(help="App name.")]


@app.command()
@clean_errors
def up(
    proxy_host: Annotated[str | None, typer.Option(help="Proxy address (0.0.0.0 on a VPS).")] = None,
    proxy_port: Annotated[int | None, typer.Option(help="Proxy port (80 on a VPS).")] = None,
    api_host: Annotated[str | None, typer.Option(help="API address.")] = None,
    api_port: Annotated[int | None, typer.Option(help="API port.")] = None,
    dns_host: Annotated[str | None, typer.Option(help="DNS address.")] = None,
    dns_port: Annotated[int | None, typer.Option(help="DNS port (UDP and TCP).")] = None,
    domain: Annotated[str | None, typer.Option(help="Apps are served at <app>.<domain>.")] = None,
    home: Annotated[Path | None, typer.Option(help="State directory ($LBSOLO_HOME, ~/.lbsolo).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    """Start the daemon: API, scheduler, builder, HTTP proxy and DNS in one process."""
    from lbsolo.daemon import Daemon  # the daemon's imports are only needed here

    settings = Settings.load(
        proxy_host=proxy_host,
        proxy_port=proxy_port,
        api_host=api_host,
        api_port=api_port,
        dns_host=dns_host,
        dns_port=dns_port,
        domain=domain,
        home=home,
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
        table.add_row("apps", f"{info['apps']} ({info['replicas']} replicas serving)")
        console.print(table)
        console.print("Press Ctrl+C to stop (apps keep running).", style="dim")

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


@app.command("apps")
@clean_errors
def apps_list() -> None:
    """List apps: name, status, release, URL."""
    with _client() as c:
        rows = c.apps()
    table = Table("name", "status", "release", "replicas", "url")
    colors = {"running": "green", "down": "red", "deploying": "yellow"}
    for a in rows:
        status = f"[{colors.get(a['status'], 'white')}]{a['status']}[/]"
        table.add_row(a["name"], status, a["release"] or "-", str(a["replicas"]), a["url"])
    console.print(table if rows else "No apps yet: lbsolo apps:create NAME")


@app.command("apps:create")
@clean_errors
def apps_create(name: AppArg) -> None:
    """Create an app (its name becomes <name>.<domain>)."""
    validate_app_name(name)
    with _client() as c:
        a = c.create_app(name)
    console.print(
        f"Created [bold]{a['name']}[/]: deploy with `lbsolo deploy PATH --app {a['name']}`; it will serve at {a['url']}"
    )


@app.command()
@clean_errors
def deploy(
    path: Annotated[Path, typer.Argument(help="Source directory with a Dockerfile.")] = Path("."),
    app_name: Annotated[
        str | None, typer.Option("--app", "-a", help="App name (default: the directory's name).")
    ] = None,
) -> None:
    """Build PATH on the daemon and roll it out as a new release, streaming the build output."""
    name = app_name or path.resolve().name
    validate_app_name(name)
    settings = Settings.load()
    with pack(path, settings.max_upload_bytes) as archive, Client(settings) as c:
        c.app(name)  # fail on an unknown app before uploading
        result: dict[str, Any] = {}
        for event in c.deploy(name, archive):
            if "line" in event:
                console.print(event["line"], highlight=False, markup=False, soft_wrap=True)
            elif "result" in event:
                result = event["result"]
    if not result.get("ok"):
        error = result.get("error") or {"message": "the deploy ended without a result"}
        raise LbsoloError(f"deploy of {name} failed: {error['message'].splitlines()[0]}")
    console.print(f"[bold green]Deployed {name} {result['release']}[/] → {result['url']}")


@app.command()
@clean_errors
def ps(name: AppArg) -> None:
    """Show an app's containers (replicas)."""
    with _client() as c:
        rows = c.ps(name)
    table = Table("replica", "process", "release", "state", "port")
    for r in rows:
        port = f"127.0.0.1:{r['host_port']}" if r["host_port"] else "-"
        table.add_row(r["name"], r["process"], f"v{r['release']}", r["status"], port)
    console.print(table if rows else f"{name} has no containers")


@app.command()
@clean_errors
def releases(name: AppArg) -> None:
    """List an app's releases, newest first."""
    with _client() as c:
        rows = c.releases(name)
    table = Table("release", "status", "created", "image", "error")
    for r in reversed(rows):
        image = r["image"][7:19] if r["image"].startswith("sha256:") else r["image"]
        table.add_row(f"v{r['version']}", r["status"], _when(r["created_at"]), image, (r.get("error") or "")[:60])
    console.print(table if rows else f"{name} has no releases yet")


@app.command()
@clean_errors
def logs(
    name: AppArg,
    tail: Annotated[int, typer.Option("--tail", "-n", help="Lines per replica.")] = 200,
) -> None:
    """Print an app's recent log lines."""
    with _client() as c:
        rows = c.logs(name, tail)
    for row in rows:
        console.print(f"[dim]{row['replica']}[/] {row['line']}", highlight=False, soft_wrap=True)


@app.command()
@clean_errors
def destroy(
    name: AppArg,
    images: Annotated[bool, typer.Option("--images", help="Also remove the app's images.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove an app: its containers, route, releases and (with --images) images."""
    validate_app_name(name)
    if not yes and sys.stdin.isatty():
        typer.confirm(f"Destroy {name} and its containers?", abort=True)
    with _client() as c:
        out = c.destroy(name, images)
    console.print(f"Destroyed {name}: {out['containers']} containers, {out['images']} images removed")


@app.command()
def version() -> None:
    """Print lbsolo's version."""
    console.print(f"lbsolo {__version__}")


def main() -> None:
    app()
