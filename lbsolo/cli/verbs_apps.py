"""Verbs on one app: create, destroy, ps, config, scale, resources, volumes, health checks, run,
logs, metrics, events, domains, HTTPS and proxy settings."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main

from lbsolo.cli.client import Client, in_background
from lbsolo.cli.common import (
    AppArg,
    Table,
    _client,
    _size,
    _when,
    app,
    clean_errors,
    console,
    escape,
    load_output,
    render_job,
    validate_app_name,
)
from lbsolo.errors import APIError, LbsoloError


@app.command("apps")
@clean_errors
def apps_list() -> None:
    """List apps: name, status, release, URL."""
    with _client() as c:
        # Image sizes come from the engine (the slower answer): both go out at once, and rich
        # loads while they are out.
        usage = in_background(c.disk)
        listed = in_background(c.apps)
        load_output()
        rows, disk = listed(), usage()
    table = Table("name", "status", "release", "replicas", "images", "url")
    colors = {"running": "green", "down": "red", "deploying": "yellow"}
    for a in rows:
        status = f"[{colors.get(a['status'], 'white')}]{a['status']}[/]"
        table.add_row(
            a["name"], status, a["release"] or "-", str(a["replicas"]), _size(disk.get(a["name"], 0)), a["url"]
        )
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
def ps(name: AppArg) -> None:
    """Show an app's containers (replicas)."""
    with _client() as c:
        rows = c.ps(name)
    table = Table("replica", "process", "release", "state", "port")
    for r in rows:
        port = f"{r.get('host', '127.0.0.1')}:{r['host_port']}" if r["host_port"] else "-"
        table.add_row(r["name"], r["process"], f"v{r['release']}", r["status"], port)
    console.print(table if rows else f"{name} has no containers")


@app.command("config")
@clean_errors
def config_show(name: AppArg) -> None:
    """Show an app's config vars (secret values masked)."""
    with _client() as c:
        values = c.config(name)
    for key, value in values.items():
        console.print(f"[bold]{key}[/]={escape(value)}", highlight=False)
    if not values:
        console.print(f"{name} has no config vars")


def _change_config(name: str, values: dict[str, str], unset: list[str], secret: bool) -> None:
    with _client() as c:
        result = render_job(c.set_config(name, values, unset, secret), f"config change of {name}")
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
    from lbsolo.build_source import parse_dotenv

    _change_config(name, parse_dotenv(text), [], secret)


@app.command()
@clean_errors
def scale(name: AppArg, pairs: Annotated[list[str], typer.Argument(help="TYPE=COUNT, e.g. web=3 worker=1.")]) -> None:
    """Set how many replicas of each process type run; web replicas join the proxy once healthy."""
    from lbsolo.models import parse_formation

    formation = parse_formation(pairs)
    with _client() as c:
        out = c.scale(name, formation)
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
        render_job(c.set_resources(name, process, memory, cpus), f"resources of {name}")


@app.command("volumes:add")
@clean_errors
def volumes_add(name: AppArg, spec: Annotated[str, typer.Argument(help="NAME:/mount/path")]) -> None:
    """Mount a named persistent volume into every replica, kept across releases."""
    volume, sep, path = spec.partition(":")
    if not sep or not volume:
        raise LbsoloError(f"expected NAME:/path, got {spec!r}")
    with _client() as c:
        render_job(c.add_volume(name, volume, path), f"volumes of {name}")


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
        out = c.set_health(name, body)
    console.print(f"{name} health check: {out} (applies from the next release)", highlight=False)


@app.command("run")
@clean_errors
def run_command(name: AppArg, command: Annotated[list[str], typer.Argument(help="The command, after --.")]) -> None:
    """Run a one-off command in a new container of the current release, with its config."""
    result: dict[str, Any] = {}
    with _client() as c:
        for event in c.run(name, " ".join(command)):
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
    """Print an app's logs, kept across releases and container removal (an add-on's: its container's)."""
    params = {"tail": tail, "process": process, "release": release, "since": _since(since), "grep": grep}
    params = {k: v for k, v in params.items() if v is not None}
    with _client() as c:
        try:
            for row in _log_rows(c, name, params, follow):
                _print_log(row)
        except KeyboardInterrupt:
            return


def _log_rows(c: Client, name: str, params: dict[str, Any], follow: bool) -> Iterator[dict[str, Any]]:
    """The app's stored lines; if there is no such app, the add-on's container output (add-ons
    share the apps' names); if neither, the app's error."""
    try:
        yield from c.follow_logs(name, params) if follow else c.logs(name, params)
        return
    except APIError as e:
        if e.status != 404:
            raise
        not_an_app = e
    try:
        if "process" in params or "release" in params:
            c.addon(name)
            raise LbsoloError(f"{name} is an add-on: --process and --release are for apps")
        kept = {k: v for k, v in params.items() if k in ("tail", "since", "grep")}
        rows = iter(c.follow_addon_logs(name, kept) if follow else c.addon_logs(name, kept))
        first = next(rows, None)
    except APIError as e:
        if e.status in (404, 501):  # no such add-on either, or a daemon without add-ons
            raise not_an_app from None
        raise
    if first is not None:
        yield first
        yield from rows


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
        stats = c.stats(name)["latest"]
        data = c.metrics(name)
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
    with _client() as c:
        rows = c.events(name, n)
    for e in rows:
        console.print(
            f"[dim]{_when(e['ts'])}[/] [cyan]{e['kind']}[/] {escape(e.get('app') or '-')}: {escape(e['message'])}"
        )


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
        found = c.add_domains(name, domains)
    console.print(f"{name} domains: {', '.join(found)}", highlight=False)


@app.command("domains:remove")
@clean_errors
def domains_remove(name: AppArg, domains: Annotated[list[str], typer.Argument(help="e.g. example.com")]) -> None:
    """Stop routing custom domains to an app."""
    with _client() as c:
        found = c.remove_domains(name, domains)
    console.print(f"{name} domains: {', '.join(found) or 'none'}", highlight=False)


@app.command("apps:https")
@clean_errors
def apps_https(
    name: AppArg,
    redirect: Annotated[
        bool | None, typer.Option("--redirect/--no-redirect", help="Send plain-HTTP requests to https:// (308).")
    ] = None,
    hsts: Annotated[
        bool | None,
        typer.Option(
            "--hsts/--no-hsts", help="Send Strict-Transport-Security over HTTPS (browsers then refuse http://)."
        ),
    ] = None,
    hsts_max_age: Annotated[
        int | None, typer.Option("--hsts-max-age", help="HSTS max-age in seconds (default a year; at most two).")
    ] = None,
    hsts_subdomains: Annotated[
        bool | None, typer.Option("--hsts-subdomains/--no-hsts-subdomains", help="HSTS for every subdomain too.")
    ] = None,
) -> None:
    """Show or change an app's HTTPS settings: with --redirect, http:// requests get a 308 to https://;
    with --hsts, its HTTPS responses carry Strict-Transport-Security. A public custom domain turns the
    redirect on with its first ACME certificate, unless --no-redirect was said before."""
    extra = {"hsts": hsts, "hsts_max_age": hsts_max_age, "hsts_subdomains": hsts_subdomains}
    with _client() as c:
        changing = redirect is not None or any(v is not None for v in extra.values())
        out = c.set_https(name, redirect, **extra) if changing else c.https(name)
    state = "on" if out["redirect"] else "off"
    note = "" if out["active"] or not out["redirect"] else " (no effect until the proxy has HTTPS: up --https-port)"
    console.print(f"{name}: HTTP -> HTTPS redirect {state}{note}", highlight=False)
    if out.get("hsts"):
        subdomains = "; includeSubDomains" if out["hsts_subdomains"] else ""
        console.print(f"{name}: HSTS on (max-age={out['hsts_max_age']}{subdomains}, over HTTPS only)", highlight=False)
    else:
        console.print(f"{name}: HSTS off", highlight=False)


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
        out = c.proxy_settings(name) if choice is None else c.set_proxy_settings(name, choice)
    mode = "on (bodies read whole first)" if out["request_buffering"] else "off (bodies streamed)"
    console.print(f"{name}: request buffering {mode}", highlight=False)


@app.command("apps:sleep")
@clean_errors
def apps_sleep(
    name: AppArg,
    after: Annotated[
        str | None,
        typer.Option("--after", metavar="30m|2h|1d", help="Stop its replicas after this long without a request."),
    ] = None,
    never: Annotated[bool, typer.Option("--never", help="Never sleep (a sleeping app wakes now).")] = False,
    with_workers: Annotated[
        bool, typer.Option("--with-workers", help="Let an app with worker processes or cron jobs sleep too.")
    ] = False,
) -> None:
    """Show or change whether an idle app sleeps: its replicas stop after --after without a request, and
    the next request waits while one starts (routes and DNS stay)."""
    if after is not None and never:
        raise typer.BadParameter("give --after or --never, not both")
    with _client() as c:
        out = c.sleep_settings(name) if after is None and not never else c.set_sleep(name, after, with_workers)
    if out["sleep_after"] is None:
        console.print(f"{name}: never sleeps", highlight=False)
        return
    now = "asleep now" if out["asleep"] else "awake"
    idle = "" if out["idle_seconds"] is None else f", idle for {out['idle_seconds']:.0f} s"
    console.print(f"{name}: sleeps after {out['sleep_after']:.0f} s without a request ({now}{idle})", highlight=False)
