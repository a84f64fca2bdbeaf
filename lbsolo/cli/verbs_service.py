"""Verbs for running lbsolo on a server: `doctor`, `restart`, and `service:install` / `service:status` /
`service:uninstall` (a systemd unit). They work without a running daemon and never call the API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from lbsolo import doctor, service
from lbsolo.cli.common import Table, app, clean_errors, console, escape
from lbsolo.config import Settings

_MARK = {doctor.Level.OK: "[green]ok[/]", doctor.Level.WARN: "[yellow]warn[/]", doctor.Level.FAIL: "[red]FAIL[/]"}


@app.command("doctor")
@clean_errors
def doctor_verb() -> None:
    """Check this machine for lbsolo: the engine, ports, disk, DNS. Exits 1 if anything fails."""
    settings = Settings.load()
    findings = doctor.judge(doctor.gather(settings), settings)
    table = Table("", "check", "finding", "fix")
    for f in findings:
        table.add_row(_MARK[f.level], escape(f.what), escape(f.detail), escape(f.fix))
    console.print(table)
    if doctor.failed(findings):
        raise typer.Exit(1)


def _plan(user: str | None, unit_dir: Path | None, env_file: Path | None) -> service.ServicePlan:
    settings = Settings.load()
    user = service.check_user(user)
    home = settings.home
    if user and "LBSOLO_HOME" not in os.environ:
        home = Path(f"/var/lib/lbsolo-{user}")
    elif "LBSOLO_HOME" not in os.environ and os.geteuid() == 0:
        home = Path("/var/lib/lbsolo")
    return service.ServicePlan(
        command=service.this_command(),
        home=home.resolve(),
        user=user,
        unit_dir=unit_dir or service.UNIT_DIR,
        env_file=env_file or service.ENV_FILE,
    )


UnitDir = Annotated[Path | None, typer.Option(help="Where the unit goes (default /etc/systemd/system).")]
EnvFile = Annotated[Path | None, typer.Option(help="The settings file (default /etc/lbsolo/lbsolo.env).")]


@app.command("service:install")
@clean_errors
def service_install(
    user: Annotated[str | None, typer.Option(help="Run as this user (in the docker group) instead of root.")] = None,
    start: Annotated[bool, typer.Option(help="Start it now.")] = True,
    unit_dir: UnitDir = None,
    env_file: EnvFile = None,
) -> None:
    """Install lbsolo as a systemd service (restarted on failure, logs in the journal)."""
    plan = _plan(user, unit_dir, env_file)
    for line in service.install(plan, dict(os.environ), start=start):
        console.print(escape(line), highlight=False)
    console.print(f"home: {plan.home}; settings: {plan.env_file}; status: lbsolo service:status", highlight=False)


@app.command("service:status")
@clean_errors
def service_status(unit_dir: UnitDir = None) -> None:
    """Is the service installed, and what does systemd say about it."""
    installed, text = service.status(_plan(None, unit_dir, None))
    console.print(escape(text), highlight=False)
    if not installed:
        raise typer.Exit(1)


@app.command("service:uninstall")
@clean_errors
def service_uninstall(unit_dir: UnitDir = None) -> None:
    """Stop and remove the service; apps' data under the home and the settings file stay."""
    for line in service.uninstall(_plan(None, unit_dir, None)):
        console.print(escape(line), highlight=False)


def _daemon_pid(settings: Settings) -> int | None:
    """The pid of the daemon serving this home, from its runtime file (None: none runs)."""
    import json

    try:
        pid = int(json.loads(settings.runtime_path.read_text())["pid"])
        os.kill(pid, 0)
    except PermissionError:
        return pid  # someone else's process (root's): it exists
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie that no one has reaped yet has ended)."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: the signal said it exists
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@app.command("restart")
@clean_errors
def restart() -> None:
    """Restart the daemon without dropping a request (also how an upgrade takes effect).

    A new daemon starts with the running one's listening sockets, serves, and only then the old
    one answers what it had accepted and exits. `systemctl reload lbsolo` does the same."""
    import signal
    import time

    from lbsolo.errors import LbsoloError

    settings = Settings.load()
    old = _daemon_pid(settings)
    if old is None:
        raise LbsoloError("no lbsolo daemon runs with this home: start it with `lbsolo up`")
    try:
        os.kill(old, signal.SIGUSR2)
    except PermissionError:
        raise LbsoloError(f"the daemon (pid {old}) is not yours to restart: run this as its user") from None
    deadline = time.monotonic() + settings.handover_timeout + settings.shutdown_timeout + 10
    new = None
    with console.status("restarting"):
        while time.monotonic() < deadline:
            current = _daemon_pid(settings)
            if current is not None and current != old:
                new = current
            if new is not None and not _alive(old):
                break
            if current is None and not _alive(old):
                break
            time.sleep(0.1)
    if new is None:
        raise LbsoloError(
            f"the daemon (pid {old}) did not hand over and keeps serving: a deploy may still be running, "
            "or the new process failed to start (see the daemon's log)"
        )
    state = "" if not _alive(old) else f" (pid {old} still finishing its requests)"
    console.print(f"lbsolo restarted: pid {old} -> {new}{state}", highlight=False)
