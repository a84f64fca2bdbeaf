"""The `lbsolo` command line: each verb parses, calls the API (or starts the daemon), renders.

The only module that imports typer and rich. It never opens the state itself.
"""

from __future__ import annotations

import copy
import functools
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
import typer.main
from typer.models import CommandInfo, TyperInfo

from lbsolo import __version__
from lbsolo.build_source import pack, parse_dotenv
from lbsolo.cli.client import Client
from lbsolo.config import Settings
from lbsolo.errors import LbsoloError
from lbsolo.models import parse_formation, validate_app_name

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table as RichTable

app = typer.Typer(
    help="lbsolo: a one-server PaaS. `lbsolo up`, then `lbsolo deploy`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# rich loads on first use, not at start (some 45 ms): a deploy's upload goes out, and the daemon
# starts building, before render_job's live display needs it.
class _LazyConsole:
    """A rich Console, made on first use."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


def escape(markup: str) -> str:
    """rich's markup escape."""
    from rich.markup import escape as rich_escape

    return rich_escape(markup)


def Table(*columns: Any, **options: Any) -> RichTable:
    """rich's Table (named like the class it stands in for)."""
    from rich.table import Table as RichTable

    return RichTable(*columns, **options)


console = cast("Console", _LazyConsole())
err = cast("Console", _LazyConsole(stderr=True))

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
    https_port: Annotated[int | None, typer.Option(help="Proxy HTTPS port, 0 for none (443 on a VPS).")] = None,
    api_host: Annotated[str | None, typer.Option(help="API address.")] = None,
    api_port: Annotated[int | None, typer.Option(help="API port.")] = None,
    dns_host: Annotated[str | None, typer.Option(help="DNS address.")] = None,
    dns_port: Annotated[int | None, typer.Option(help="DNS port (UDP and TCP).")] = None,
    domain: Annotated[str | None, typer.Option(help="Apps are served at <app>.<domain>.")] = None,
    home: Annotated[Path | None, typer.Option(help="State directory ($LBSOLO_HOME, ~/.lbsolo).")] = None,
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


@app.command("apps")
@clean_errors
def apps_list() -> None:
    """List apps: name, status, release, URL."""
    with _client() as c:
        rows = c.apps()
        disk = c.request("GET", "/api/disk")
    table = Table("name", "status", "release", "replicas", "images", "url")
    colors = {"running": "green", "down": "red", "deploying": "yellow"}
    for a in rows:
        status = f"[{colors.get(a['status'], 'white')}]{a['status']}[/]"
        table.add_row(
            a["name"], status, a["release"] or "-", str(a["replicas"]), _size(disk.get(a["name"], 0)), a["url"]
        )
    console.print(table if rows else "No apps yet: lbsolo apps:create NAME")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@app.command()
@clean_errors
def gc(
    name: Annotated[str | None, typer.Argument(help="Only this app.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
) -> None:
    """Remove images older than each app's last releases (LBSOLO_KEEP_RELEASES) and build leftovers."""
    params: dict[str, Any] = {"dry_run": dry_run}
    if name:
        params["app"] = name
    with _client() as c:
        out = c.request("POST", "/api/gc", params=params, timeout=None)
    verb = "would remove" if dry_run else "removed"
    for image in out["removed"]:
        tags = ", ".join(image["tags"]) or image["id"][7:19]
        console.print(f"{verb} {image['app']}: {tags} ({_size(image['size'])})", highlight=False)
    console.print(f"{len(out['removed'])} image(s), {_size(out['bytes'])} {verb}")


@app.command()
@clean_errors
def builds(name: AppArg) -> None:
    """List an app's builds, newest first."""
    with _client() as c:
        rows = c.request("GET", f"/api/apps/{name}/builds")
    table = Table("build", "status", "started", "finished", "image", "error")
    for b in reversed(rows):
        image = (b.get("image") or "").removeprefix("sha256:")[:12]
        error = (b.get("error") or "").splitlines()[0][:60] if b.get("error") else ""
        table.add_row(b["id"], b["status"], _when(b["created_at"]), _when(b.get("finished_at")), image, escape(error))
    console.print(table if rows else f"{name} has no builds yet")


@app.command("builds:cancel")
@clean_errors
def builds_cancel(
    name: AppArg, build_id: Annotated[str | None, typer.Argument(help="Build id (default: all of the app's).")] = None
) -> None:
    """Cancel an app's queued or running builds; the release that is serving stays."""
    with _client() as c:
        out = c.request("POST", f"/api/apps/{name}/builds/cancel", params={"build_id": build_id})
    console.print(f"cancelled: {', '.join(out['cancelled']) or 'nothing was building'}")


@app.command("builds:logs")
@clean_errors
def builds_logs(
    name: AppArg, build_id: Annotated[str | None, typer.Argument(help="Build id (default: the latest).")] = None
) -> None:
    """Print a build's stored output."""
    with _client() as c:
        lines = c.request("GET", f"/api/apps/{name}/builds/{build_id or 'latest'}/log")
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


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
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="Redeploy whenever a file changes.")] = False,
    git: Annotated[str | None, typer.Option("--git", help="Deploy a git URL[#ref] the daemon can reach.")] = None,
    build_arg: Annotated[list[str] | None, typer.Option("--build-arg", help="KEY=VALUE for the build.")] = None,
) -> None:
    """Build PATH on the daemon and roll it out as a new release, streaming the build output."""
    settings = Settings.load()
    if git is not None:
        url, _, ref = git.partition("#")
        name = app_name or Path(url.rstrip("/")).name.removesuffix(".git")
        validate_app_name(name)
        with Client(settings) as c:
            body = {"url": url, "ref": ref or None}
            render_job(c.stream("POST", f"/api/apps/{name}/deploy/git", json=body), f"deploy of {name}")
        return
    name = app_name or path.resolve().name
    validate_app_name(name)

    from lbsolo.build_detect import detect  # jinja2 and friends: only for the verbs that need them

    def once() -> None:
        detect(path)  # a source lbsolo cannot build fails here, before anything is uploaded
        with pack(path, settings.max_upload_bytes) as archive, Client(settings) as c:
            c.app(name)  # fail on an unknown app before uploading
            render_job(c.deploy(name, archive, build_arg), f"deploy of {name}")

    once()
    if not watch_:
        return
    from lbsolo.cli.watch import watch

    def again() -> None:
        console.rule(f"change in {path}: redeploying {name}")
        try:
            once()
        except LbsoloError as e:  # keep watching: the next save may fix it
            err.print(f"[bold red]error:[/] {escape(e.message)}")
        console.print(f"[dim]watching {path} (Ctrl+C to stop)[/]")

    console.print(f"[dim]watching {path} (Ctrl+C to stop)[/]")
    try:
        watch(path, again)
    except KeyboardInterrupt:
        console.print("stopped watching")


def render_job(events: Iterator[dict[str, Any]], what: str) -> dict[str, Any]:
    """Print a release-making job's output as it streams, with a live step and elapsed-time line; raise if it failed."""
    result: dict[str, Any] = {}
    started = time.monotonic()
    stage = "waiting for the daemon"
    events = iter(events)
    first = list(itertools.islice(events, 1))  # the request (a deploy's upload) goes out before rich loads
    with console.status(stage) as status:
        for event in itertools.chain(first, events):
            if "line" in event:
                line = event["line"]
                console.print(line, highlight=False, markup=False, soft_wrap=True)
                if line.startswith(("Step ", "-----> ")):
                    stage = line.removeprefix("-----> ")[:70]
            elif "result" in event:
                result = event["result"]
            status.update(f"{escape(stage)}  [dim]{time.monotonic() - started:.1f}s[/]")
    if not result.get("ok"):
        error = result.get("error") or {"message": "it ended without a result"}
        raise LbsoloError(f"{what} failed: {error['message'].splitlines()[0]}")
    if result.get("release"):
        elapsed = time.monotonic() - started
        console.print(f"[bold green]Deployed {result['app']} {result['release']}[/] → {result['url']} ({elapsed:.1f}s)")
    return result


@app.command("detect")
@clean_errors
def detect_command(path: Annotated[Path, typer.Argument(help="Source directory.")] = Path(".")) -> None:
    """Show how PATH would be built: its kind, processes, and the Dockerfile (generated if it has none)."""
    from lbsolo.build_detect import detect

    found = detect(path)
    console.print(f"[bold]{found.kind}[/]: " + "; ".join(found.reasons), highlight=False)
    for kind, command in found.processes.items():
        console.print(f"  {kind}: {command}", highlight=False, markup=False)
    console.rule("Dockerfile")
    console.print(found.dockerfile, highlight=False, markup=False, end="")


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
    """List an app's releases, newest first: version, status, what changed."""
    with _client() as c:
        rows = c.releases(name)
    table = Table("release", "status", "created", "description", "image", "error")
    colors = {"active": "green", "failed": "red", "deploying": "yellow"}
    for r in reversed(rows):
        image = r["image"].removeprefix("sha256:")[:12]
        status = f"[{colors.get(r['status'], 'white')}]{r['status']}[/]"
        error = r["error"].splitlines()[0][:60] if r.get("error") else ""
        table.add_row(
            f"v{r['version']}", status, _when(r["created_at"]), escape(r["description"]), image, escape(error)
        )
    console.print(table if rows else f"{name} has no releases yet")


@app.command()
@clean_errors
def rollback(
    name: AppArg,
    version: Annotated[
        str | None, typer.Argument(help="Release to go back to, e.g. v3 (default: the previous).")
    ] = None,
) -> None:
    """Roll out an earlier release's image and config again, as a new release, without rebuilding."""
    number = None
    if version is not None:
        if not version.lstrip("v").isdigit():
            raise LbsoloError(f"expected a release like v3, got {version!r}")
        number = int(version.lstrip("v"))
    with _client() as c:
        render_job(c.stream("POST", f"/api/apps/{name}/rollback", json={"version": number}), f"rollback of {name}")


@app.command()
@clean_errors
def promote(
    source: Annotated[str, typer.Argument(help="App whose current image goes out.")],
    target: Annotated[str, typer.Argument(help="App that receives it, with its own config.")],
) -> None:
    """Roll out SOURCE's current image on TARGET with TARGET's config (staging -> production)."""
    with _client() as c:
        render_job(c.stream("POST", f"/api/apps/{source}/promote", params={"to": target}), f"promote to {target}")


@app.command("config")
@clean_errors
def config_show(name: AppArg) -> None:
    """Show an app's config vars (secret values masked)."""
    with _client() as c:
        values = c.request("GET", f"/api/apps/{name}/config")
    for key, value in values.items():
        console.print(f"[bold]{key}[/]={escape(value)}", highlight=False)
    if not values:
        console.print(f"{name} has no config vars")


def _change_config(name: str, values: dict[str, str], unset: list[str], secret: bool) -> None:
    with _client() as c:
        body = {"set": values, "unset": unset, "secret": secret}
        result = render_job(c.stream("PATCH", f"/api/apps/{name}/config", json=body), f"config change of {name}")
    if not result.get("release"):
        console.print(f"Config of {name} saved; it applies from the first deploy.")


@app.command("config:set")
@clean_errors
def config_set(
    name: AppArg,
    pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE pairs.")],
    secret: Annotated[bool, typer.Option("--secret", help="Never show these values again.")] = False,
) -> None:
    """Set config vars; a deployed app gets a new release with them."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise LbsoloError(f"expected KEY=VALUE, got {pair!r}")
        values[key] = value
    _change_config(name, values, [], secret)


@app.command("config:unset")
@clean_errors
def config_unset(name: AppArg, keys: Annotated[list[str], typer.Argument(help="Keys to remove.")]) -> None:
    """Remove config vars; a deployed app gets a new release without them."""
    _change_config(name, {}, keys, False)


@app.command("config:import")
@clean_errors
def config_import(
    name: AppArg,
    path: Annotated[Path, typer.Argument(help="A .env file of KEY=VALUE lines.")],
    secret: Annotated[bool, typer.Option("--secret", help="Treat every imported value as secret.")] = False,
) -> None:
    """Set every var of a .env file in one release."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LbsoloError(f"cannot read {path}: {e.strerror}") from e
    _change_config(name, parse_dotenv(text), [], secret)


@app.command()
@clean_errors
def scale(name: AppArg, pairs: Annotated[list[str], typer.Argument(help="TYPE=COUNT, e.g. web=3 worker=1.")]) -> None:
    """Set how many replicas of each process type run; web replicas join the proxy once healthy."""
    formation = parse_formation(pairs)
    with _client() as c:
        out = c.request("POST", f"/api/apps/{name}/scale", json={"formation": formation}, timeout=None)
    shown = " ".join(f"{k}={v}" for k, v in sorted(out["formation"].items()))
    console.print(f"{name} scaled: {shown} ({out['replicas']} web replicas serving)")


@app.command("resources:set")
@clean_errors
def resources_set(
    name: AppArg,
    process: Annotated[str, typer.Argument(help="Process type, e.g. web.")] = "web",
    memory: Annotated[str | None, typer.Option(help="Memory limit, e.g. 256m.")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPU limit, e.g. 0.5.")] = None,
) -> None:
    """Set memory and CPU limits of a process type (rolled out as a new release)."""
    with _client() as c:
        body = {"memory": memory, "cpus": cpus}
        render_job(c.stream("PUT", f"/api/apps/{name}/resources/{process}", json=body), f"resources of {name}")


@app.command("volumes:add")
@clean_errors
def volumes_add(name: AppArg, spec: Annotated[str, typer.Argument(help="NAME:/mount/path")]) -> None:
    """Mount a named persistent volume into every replica, kept across releases."""
    volume, sep, path = spec.partition(":")
    if not sep or not volume:
        raise LbsoloError(f"expected NAME:/path, got {spec!r}")
    with _client() as c:
        body = {"name": volume, "path": path}
        render_job(c.stream("POST", f"/api/apps/{name}/volumes", json=body), f"volumes of {name}")


@app.command("healthcheck:set")
@clean_errors
def healthcheck_set(
    name: AppArg,
    path: Annotated[str | None, typer.Option(help="HTTP path checked with the app's Host header.")] = None,
    tcp: Annotated[bool, typer.Option("--tcp", help="Only check that the port accepts connections.")] = False,
    interval: Annotated[float | None, typer.Option(help="Seconds between checks.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds one check may take.")] = None,
    retries: Annotated[int | None, typer.Option(help="Passing checks needed in a row.")] = None,
    grace: Annotated[float | None, typer.Option(help="Seconds after start before checking.")] = None,
) -> None:
    """Configure the health check new replicas must pass before they get traffic."""
    body: dict[str, Any] = {"interval": interval, "timeout": timeout, "retries": retries, "grace": grace}
    body["path"] = None if tcp else (path or "/")
    with _client() as c:
        out = c.request("PATCH", f"/api/apps/{name}/health", json=body)
    console.print(f"{name} health check: {out} (applies from the next release)", highlight=False)


@app.command("run")
@clean_errors
def run_command(name: AppArg, command: Annotated[list[str], typer.Argument(help="The command, after --.")]) -> None:
    """Run a one-off command in a new container of the current release, with its config."""
    result: dict[str, Any] = {}
    with _client() as c:
        for event in c.stream("POST", f"/api/apps/{name}/run", json={"command": " ".join(command)}):
            if "line" in event:
                console.print(event["line"], highlight=False, markup=False, soft_wrap=True)
            elif "result" in event:
                result = event["result"]
    if result.get("error"):
        raise LbsoloError(result["error"]["message"])
    raise typer.Exit(int(result.get("exit_code", 1)))


def _since(value: str | None) -> float | None:
    """'10m', '2h', '30s', '1d' ago -> a timestamp."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit():
        raise LbsoloError(f"--since takes e.g. 30s, 10m, 2h or 1d, not {value!r}")
    return datetime.now(UTC).timestamp() - int(value[:-1]) * units[value[-1]]


@app.command()
@clean_errors
def logs(
    name: AppArg,
    tail: Annotated[int, typer.Option("--tail", "-n", help="How many lines.")] = 200,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    process: Annotated[str | None, typer.Option("--process", "-p", help="Only this process type.")] = None,
    release: Annotated[str | None, typer.Option("--release", "-r", help="Only this release, e.g. v3.")] = None,
    since: Annotated[str | None, typer.Option(help="Only lines newer than e.g. 10m.")] = None,
    grep: Annotated[str | None, typer.Option(help="Only lines containing this text.")] = None,
) -> None:
    """Print an app's logs, kept across releases and container removal."""
    params = {"tail": tail, "process": process, "release": release, "since": _since(since), "grep": grep}
    params = {k: v for k, v in params.items() if v is not None}
    with _client() as c:
        if not follow:
            for row in c.logs(name, params):
                _print_log(row)
            return
        try:
            for row in c.stream("GET", f"/api/apps/{name}/logs", params={**params, "follow": True}):
                _print_log(row)
        except KeyboardInterrupt:
            return


def _print_log(row: dict[str, Any]) -> None:
    when = datetime.fromtimestamp(row["ts"], UTC).astimezone().strftime("%H:%M:%S")
    console.print(
        f"[dim]{when}[/] [cyan]{row['process']}.{row['release']}[/] {escape(row['line'])}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@clean_errors
def destroy(
    name: AppArg,
    images: Annotated[bool, typer.Option("--images", help="Also remove the app's images.")] = False,
    volumes: Annotated[bool, typer.Option("--volumes", help="Also remove its volumes (their data is lost).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove an app: its containers, route, releases, logs and (with flags) images and volumes."""
    validate_app_name(name)
    if not yes and sys.stdin.isatty():
        typer.confirm(f"Destroy {name} and its containers?", abort=True)
    with _client() as c:
        out = c.destroy(name, images, volumes)
    console.print(
        f"Destroyed {name}: {out['containers']} containers, {out['images']} images, {out['volumes']} volumes removed"
    )


@app.command()
@clean_errors
def metrics(name: AppArg) -> None:
    """Show an app's CPU, memory, network and request rate now, and its proxy counters since start."""
    with _client() as c:
        stats = c.request("GET", f"/api/apps/{name}/stats")["latest"]
        data = c.request("GET", f"/api/apps/{name}/metrics")
    table = Table(show_header=False, box=None)
    units = {"cpu": "%", "mem": "B", "net_rx": "B/s", "net_tx": "B/s", "rps": "req/s", "latency_ms": "ms"}
    for key, unit in units.items():
        value = stats.get(key)
        shown = "-" if value is None else (_size(int(value)) if unit == "B" else f"{value:.1f} {unit}")
        table.add_row(key, shown)
    for key, value in data.items():
        shown = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        table.add_row(key, escape(shown))
    console.print(table)


@app.command()
@clean_errors
def events(
    name: Annotated[str | None, typer.Argument(help="Only this app.")] = None,
    n: Annotated[int, typer.Option("-n", help="How many recent events.")] = 30,
) -> None:
    """Show recent events: deploys, releases, crashes, config changes, scaling."""
    params: dict[str, Any] = {"n": n}
    if name:
        params["app"] = name
    with _client() as c:
        rows = c.request("GET", "/api/events", params=params)
    for e in rows:
        console.print(
            f"[dim]{_when(e['ts'])}[/] [cyan]{e['kind']}[/] {escape(e.get('app') or '-')}: {escape(e['message'])}"
        )


@app.command("tokens")
@clean_errors
def tokens_list() -> None:
    """List extra API tokens (only their prefixes are known)."""
    with _client() as c:
        rows = c.request("GET", "/api/tokens")
    table = Table("id", "name", "prefix", "created", "last used")
    for t in rows:
        table.add_row(t["id"], t["name"], t["prefix"] + "…", _when(t["created_at"]), _when(t.get("last_used")))
    console.print(table if rows else "No extra tokens; the admin token is in $LBSOLO_HOME/token")


@app.command("tokens:create")
@clean_errors
def tokens_create(name: Annotated[str, typer.Argument(help="What the token is for, e.g. ci.")]) -> None:
    """Create an API token; it is shown once and stored only as a hash."""
    with _client() as c:
        out = c.request("POST", "/api/tokens", json={"name": name})
    console.print(out["token"], highlight=False, markup=False)
    err.print(f"token {out['id']} ({name}) created; it is not shown again")


@app.command("tokens:revoke")
@clean_errors
def tokens_revoke(token: Annotated[str, typer.Argument(help="Token id or name.")]) -> None:
    """Revoke an API token at once."""
    with _client() as c:
        c.request("DELETE", f"/api/tokens/{token}")
    console.print(f"revoked {token}")


@app.command("webhooks")
@clean_errors
def webhooks_list() -> None:
    """List outbound webhooks."""
    with _client() as c:
        rows = c.request("GET", "/api/webhooks")
    table = Table("id", "url", "app", "events", "slack")
    for w in rows:
        table.add_row(w["id"], w["url"], w.get("app") or "(all)", ", ".join(w.get("kinds") or ["*"]), str(w["slack"]))
    console.print(table if rows else "No webhooks")


@app.command("webhooks:add")
@clean_errors
def webhooks_add(
    url: Annotated[str, typer.Argument(help="http(s) URL that receives POSTed events.")],
    app_name: Annotated[str | None, typer.Option("--app", "-a", help="Only this app's events.")] = None,
    kinds: Annotated[list[str] | None, typer.Option("--event", "-e", help="Event kinds, e.g. deploy.*")] = None,
    slack: Annotated[bool, typer.Option("--slack", help="Slack-compatible payload.")] = False,
) -> None:
    """Send events to a URL, signed with a secret (X-Lbsolo-Signature: sha256=HMAC)."""
    body = {"url": url, "app": app_name, "kinds": kinds or None, "slack": slack}
    with _client() as c:
        out = c.request("POST", "/api/webhooks", json=body)
    console.print(f"webhook {out['id']} added; secret: {out.get('secret', '(hidden)')}", highlight=False)


@app.command("webhooks:remove")
@clean_errors
def webhooks_remove(hook_id: Annotated[str, typer.Argument(help="Webhook id.")]) -> None:
    """Stop sending events to a webhook."""
    with _client() as c:
        c.request("DELETE", f"/api/webhooks/{hook_id}")
    console.print(f"removed {hook_id}")


@app.command("domains")
@clean_errors
def domains_list(name: AppArg) -> None:
    """List an app's custom domains."""
    with _client() as c:
        found = c.app(name)["domains"]
    console.print("\n".join(found) if found else f"{name} has no custom domains", highlight=False)


@app.command("domains:add")
@clean_errors
def domains_add(name: AppArg, domains: Annotated[list[str], typer.Argument(help="e.g. example.com")]) -> None:
    """Route custom domains to an app (proxy and DNS both follow at once)."""
    with _client() as c:
        found = c.request("PATCH", f"/api/apps/{name}/domains", json={"add": domains})
    console.print(f"{name} domains: {', '.join(found)}", highlight=False)


@app.command("domains:remove")
@clean_errors
def domains_remove(name: AppArg, domains: Annotated[list[str], typer.Argument(help="e.g. example.com")]) -> None:
    """Stop routing custom domains to an app."""
    with _client() as c:
        found = c.request("PATCH", f"/api/apps/{name}/domains", json={"remove": domains})
    console.print(f"{name} domains: {', '.join(found) or 'none'}", highlight=False)


@app.command("apps:https")
@clean_errors
def apps_https(
    name: AppArg,
    redirect: Annotated[
        bool | None, typer.Option("--redirect/--no-redirect", help="Send plain-HTTP requests to https:// (308).")
    ] = None,
) -> None:
    """Show or change an app's HTTPS settings: with --redirect, http:// requests get a 308 to https://."""
    with _client() as c:
        if redirect is None:
            out = c.request("GET", f"/api/apps/{name}/https")
        else:
            out = c.request("PATCH", f"/api/apps/{name}/https", json={"redirect": redirect})
    state = "on" if out["redirect"] else "off"
    note = "" if out["active"] or not out["redirect"] else " (no effect until the proxy has HTTPS: up --https-port)"
    console.print(f"{name}: HTTP -> HTTPS redirect {state}{note}", highlight=False)


@app.command("apps:proxy")
@clean_errors
def apps_proxy(
    name: AppArg,
    request_buffering: Annotated[
        str | None,
        typer.Option(
            "--request-buffering",
            metavar="on|off",
            help="on (default): bodies are read whole before the app gets them; off: streamed as they arrive.",
        ),
    ] = None,
) -> None:
    """Show or change how the proxy passes requests to an app (request buffering)."""
    choice = None if request_buffering is None else {"on": True, "off": False}.get(request_buffering.lower())
    if request_buffering is not None and choice is None:
        raise typer.BadParameter("must be on or off", param_hint="--request-buffering")
    with _client() as c:
        if choice is None:
            out = c.request("GET", f"/api/apps/{name}/proxy")
        else:
            out = c.request("PATCH", f"/api/apps/{name}/proxy", json={"request_buffering": choice})
    mode = "on (bodies read whole first)" if out["request_buffering"] else "off (bodies streamed)"
    console.print(f"{name}: request buffering {mode}", highlight=False)


@app.command("routes")
@clean_errors
def routes_list() -> None:
    """List static routes: hosts routed to services on this machine that lbsolo does not run."""
    with _client() as c:
        rows = c.request("GET", "/api/routes")
    table = Table("name", "to", "url", "domains")
    for r in rows:
        table.add_row(r["name"], r["to"], r["url"], ", ".join(r["domains"]))
    console.print(table if rows else "No static routes (add one: lbsolo routes:add NAME --to 127.0.0.1:PORT)")


@app.command("routes:add")
@clean_errors
def routes_add(
    name: Annotated[str, typer.Argument(help="Served at <name>.<domain>; not an app's name.")],
    to: Annotated[str, typer.Option("--to", help="HOST:PORT on this machine, e.g. 127.0.0.1:3000.")],
    domains: Annotated[list[str] | None, typer.Option("--domain", "-d", help="Also route this host.")] = None,
) -> None:
    """Route <name>.<domain> to a service on this machine that lbsolo does not run (proxy and DNS follow)."""
    validate_app_name(name, "route name")
    with _client() as c:
        out = c.request("POST", "/api/routes", json={"name": name, "to": to, "domains": domains or []})
    extra = f" and {', '.join(out['domains'])}" if out["domains"] else ""
    console.print(f"{out['url']}{extra} -> {out['to']}", highlight=False)


@app.command("routes:remove")
@clean_errors
def routes_remove(name: Annotated[str, typer.Argument(help="Static route name.")]) -> None:
    """Stop routing a static route."""
    with _client() as c:
        c.request("DELETE", f"/api/routes/{name}")
    console.print(f"removed {name}", highlight=False)


@app.command("dns:setup")
@clean_errors
def dns_setup(
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the files and restart the resolver (needs root).")
    ] = False,
    system: Annotated[
        str | None, typer.Option(help="linux-resolved, linux-other or macos (default: detected).")
    ] = None,
) -> None:
    """Print (or apply) the steps that make this machine's resolver ask lbsolo for its domain."""
    import subprocess

    from lbsolo.cli.dnssetup import apply_plan, detect_system, setup_plan

    settings = Settings.load()
    plan = setup_plan(settings.domain, settings.dns_host, settings.dns_port, system or detect_system())
    console.print(plan.text, highlight=False, markup=False)
    if apply:
        try:
            written = apply_plan(plan, run=lambda cmd: subprocess.run(cmd, check=True))
        except (OSError, subprocess.CalledProcessError) as e:
            raise LbsoloError(f"could not apply the DNS setup: {e}") from e
        console.print(f"applied: {', '.join(map(str, written))}")


@app.command("tls:trust")
@clean_errors
def tls_trust() -> None:
    """Print how to make this machine trust lbsolo's local CA (for https://<app>.<domain>)."""
    from lbsolo.proxy_tls import LocalCA

    settings = Settings.load()
    ca = LocalCA(settings.tls_dir, domain=settings.domain).load_or_create()
    console.print(ca.trust_instructions(), highlight=False, markup=False)
    problem = ca.problem()
    if problem:
        err.print(f"[yellow]warning:[/] {escape(problem)}")


@app.command("tls:rotate-ca")
@clean_errors
def tls_rotate_ca() -> None:
    """Replace lbsolo's local CA with a new one (stop the daemon first); then trust the new one.

    Works on the files under $LBSOLO_HOME/tls: the old key is deleted, the old certificate kept as
    ca.pem.old. Certificates the old CA signed stop verifying; `lbsolo up` then serves new ones.
    """
    import json
    import os

    from lbsolo.proxy_tls import LocalCA

    settings = Settings.load()
    try:
        pid = int(json.loads(settings.runtime_path.read_text())["pid"])
        os.kill(pid, 0)
        running = True
    except PermissionError:  # someone else's process: it exists
        running = True
    except (OSError, ValueError, KeyError, TypeError):
        running = False  # no daemon runs with this home
    if running:
        raise LbsoloError(f"the daemon (pid {pid}) is running: stop it, rotate the CA, then start it again")
    ca = LocalCA(settings.tls_dir, domain=settings.domain).rotate()
    console.print(f"new local CA: {ca.cert_path} (limited to {settings.domain}, localhost and loopback addresses)")
    console.print("Every machine that trusted the old CA must trust this one instead:", highlight=False)
    console.print(ca.trust_instructions(), highlight=False, markup=False)


@app.command("git:remote")
@clean_errors
def git_remote(name: AppArg) -> None:
    """Print the git remote of an app: `git push lbsolo main` then builds and rolls it out."""
    settings = Settings.load()
    with Client(settings) as c:
        url = c.request("GET", f"/api/apps/{name}/git")["url"]
        token = c.token
    scheme, _, rest = url.partition("://")
    console.print(f"git remote add lbsolo {scheme}://lbsolo:{token}@{rest}", highlight=False, soft_wrap=True)
    console.print("[dim]then: git push lbsolo main (the token is the password; keep the remote private)[/]")


@app.command("hooks:url")
@clean_errors
def hooks_url(
    name: AppArg,
    repo: Annotated[
        str | None, typer.Option("--repo", help="The git URL pushes deploy (https, ssh or git); kept on the app.")
    ] = None,
) -> None:
    """Print the inbound push webhook of an app (GitHub, GitLab, Gitea), its secret and repository.

    A push deploys the app's repository (set with --repo, or by the first `deploy --git`) at the
    pushed commit; the repository named in the payload is never cloned.
    """
    with _client() as c:
        if repo is not None:
            out = c.request("PUT", f"/api/apps/{name}/hook", json={"repo": repo})
        else:
            out = c.request("GET", f"/api/apps/{name}/hook")
    console.print(f"URL:    {out['url']}\nsecret: {out['secret']}", highlight=False)
    console.print(f"repo:   {out.get('repo') or '(none: set it with --repo URL)'}", highlight=False, markup=False)
    console.print("[dim]content type application/json; push events to main or master deploy[/]")


@app.command("git-hook", hidden=True)
def git_hook(name: str) -> None:
    """Run by the post-receive hook of an app's repository: deploy the pushed main/master branch."""
    import subprocess
    import tempfile

    pushed = [line.split() for line in sys.stdin.read().splitlines() if len(line.split()) == 3]
    branches = {ref.removeprefix("refs/heads/"): new for _, new, ref in pushed if ref.startswith("refs/heads/")}
    branch = next((b for b in ("main", "master") if b in branches), None)
    if branch is None or set(branches[branch]) == {"0"}:
        console.print(f"lbsolo: only main or master deploys; pushed {', '.join(branches) or 'nothing'}")
        return
    with tempfile.TemporaryFile() as archive:
        subprocess.run(["git", "archive", "--format=tar", branches[branch]], stdout=archive, check=True)
        archive.seek(0)
        try:
            with Client(Settings.load()) as c:
                render_job(c.deploy(name, archive), f"deploy of {name}")
        except LbsoloError as e:
            console.print(f"lbsolo: {e.message}", highlight=False)
            raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print lbsolo's version."""
    console.print(f"lbsolo {__version__}")


def app_for(args: list[str]) -> typer.Typer:
    """The app to run for these arguments: one with only the verb asked for, when there is one.

    typer turns every registered verb into a click command on each start, some 50 ms for all of
    them, paid by every call of the CLI; help, completion and typos (click suggests the nearest
    verb) need them all.
    """
    verb = args[0] if args else ""
    chosen = [c for c in app.registered_commands if _verb(c) == verb]
    if len(chosen) != 1:
        return app
    single = copy.copy(app)
    single.registered_commands = chosen
    single.registered_callback = TyperInfo()  # still a group, so the verb's name is still expected first
    return single


def _verb(command: CommandInfo) -> str:
    return command.name or typer.main.get_command_name(getattr(command.callback, "__name__", ""))


def main() -> None:
    app_for(sys.argv[1:])()
