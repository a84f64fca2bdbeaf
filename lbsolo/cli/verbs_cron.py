"""Scheduled job verbs: `cron`, `cron:add`, `cron:remove`, `cron:run`, `cron:runs`, `cron:runs:logs`.

Jobs come from the app's lbsolo.toml (`[[cron]]` entries, with each deploy) or from cron:add;
each run is a one-off container of the current release, like `lbsolo run`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lbsolo.cli import client_schedules as schedules
from lbsolo.cli.common import AppArg, Table, _client, _when, app, clean_errors, console, escape
from lbsolo.errors import LbsoloError

JobArg = Annotated[str, typer.Argument(help="Job id or name (see: lbsolo cron APP).")]


def _result(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    status = run["status"]
    color = {"succeeded": "green", "failed": "red", "timeout": "red", "running": "yellow"}.get(status, "yellow")
    code = f" ({run['exit_code']})" if run.get("exit_code") not in (None, 0) else ""
    return f"[{color}]{status}[/]{code} {_when(run['started'])}"


@app.command("cron")
@clean_errors
def cron_list(name: AppArg) -> None:
    """List an app's scheduled jobs: schedule, command, where from, next run, last run's result."""
    with _client() as c:
        jobs = schedules.cron_jobs(c, name)
    if not jobs:
        console.print(f'No scheduled jobs: lbsolo cron:add {name} "0 3 * * *" -- CMD, or [[cron]] in lbsolo.toml')
        return
    table = Table("id", "name", "schedule", "command", "source", "next run", "last run")
    for j in jobs:
        table.add_row(
            j["id"], escape(j["name"] or "-"), escape(j["schedule"]), escape(j["command"][:60]), j["source"],
            j["next_run_local"], _result(j["last_run"]),
        )  # fmt: skip
    console.print(table)


@app.command("cron:add")
@clean_errors
def cron_add(
    name: AppArg,
    schedule: Annotated[str, typer.Argument(help='Five cron fields, e.g. "*/15 * * * *", or @daily.')],
    command: Annotated[list[str], typer.Argument(help="The command, after --.")],
    job_name: Annotated[str | None, typer.Option("--name", help="A name to refer to the job by.")] = None,
    overlap: Annotated[str, typer.Option(help="skip: no run while the previous one runs; allow.")] = "skip",
) -> None:
    """Run a command on a schedule, in a one-off container of the app's current release."""
    body = {"schedule": schedule, "command": " ".join(command), "name": job_name, "overlap": overlap}
    with _client() as c:
        job = schedules.add_cron(c, name, body)
    console.print(f"Added job {job['id']} to {name}: {escape(job['schedule'])}; next run {job['next_run_local']}")


@app.command("cron:remove")
@clean_errors
def cron_remove(name: AppArg, job: JobArg) -> None:
    """Remove a job added with cron:add (lbsolo.toml's: remove the entry and deploy)."""
    with _client() as c:
        schedules.remove_cron(c, name, job)
    console.print(f"Removed job {job} of {name}")


@app.command("cron:run")
@clean_errors
def cron_run(name: AppArg, job: JobArg) -> None:
    """Run a job now; its output streams here and its exit code is this command's."""
    result: dict[str, Any] = {}
    with _client() as c:
        for event in schedules.run_cron(c, name, job):
            if "line" in event:
                console.print(event["line"], highlight=False, markup=False, soft_wrap=True)
            elif "result" in event:
                result = event["result"]
    if result.get("error"):
        raise LbsoloError(result["error"]["message"])
    raise typer.Exit(int(result.get("exit_code", 1)))


@app.command("cron:runs")
@clean_errors
def cron_runs(name: AppArg, job: Annotated[str | None, typer.Argument(help="Only this job's runs.")] = None) -> None:
    """The history of an app's job runs, newest first: started, duration, exit code, trigger."""
    with _client() as c:
        runs = schedules.cron_runs(c, name, job)
    if not runs:
        console.print(f"No runs yet (lbsolo cron:run {name} JOB runs one now)")
        return
    table = Table("run", "job", "started", "duration", "status", "exit", "trigger")
    for r in runs:
        duration = "-" if r["duration"] is None else f"{r['duration']:.1f}s"
        exit_code = "-" if r["exit_code"] is None else str(r["exit_code"])
        table.add_row(r["id"], r["job"], _when(r["started"]), duration, r["status"], exit_code, r["trigger"])
    console.print(table)


@app.command("cron:runs:logs")
@clean_errors
def cron_run_logs(name: AppArg, run: Annotated[str, typer.Argument(help="Run id (see: lbsolo cron:runs).")]) -> None:
    """A run's output."""
    with _client() as c:
        lines = schedules.cron_run_log(c, name, run)
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
