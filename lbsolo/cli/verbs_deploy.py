"""Verbs that make releases: deploy (and --watch, --git), detect, builds, releases, rollback,
promote, gc, and the git push set-up."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.main

from lbsolo.cli.client import Client
from lbsolo.cli.common import (
    AppArg,
    Table,
    _client,
    _size,
    _when,
    app,
    clean_errors,
    console,
    err,
    escape,
    render_job,
    validate_app_name,
)
from lbsolo.config import Settings
from lbsolo.errors import LbsoloError


@app.command()
@clean_errors
def gc(
    name: Annotated[str | None, typer.Argument(help="Only this app.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
) -> None:
    """Remove images older than each app's last releases (LBSOLO_KEEP_RELEASES) and build leftovers."""
    with _client() as c:
        out = c.gc(name, dry_run)
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
        rows = c.builds(name)
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
        out = c.cancel_builds(name, build_id)
    console.print(f"cancelled: {', '.join(out['cancelled']) or 'nothing was building'}")


@app.command("builds:logs")
@clean_errors
def builds_logs(
    name: AppArg, build_id: Annotated[str | None, typer.Argument(help="Build id (default: the latest).")] = None
) -> None:
    """Print a build's stored output."""
    with _client() as c:
        lines = c.build_log(name, build_id)
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


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
            render_job(c.deploy_git(name, url, ref or None), f"deploy of {name}")
        return
    name = app_name or path.resolve().name
    validate_app_name(name)

    from lbsolo.build_detect import detect  # jinja2 and friends: only for the verbs that need them
    from lbsolo.build_source import pack

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
        render_job(c.rollback(name, number), f"rollback of {name}")


@app.command()
@clean_errors
def promote(
    source: Annotated[str, typer.Argument(help="App whose current image goes out.")],
    target: Annotated[str, typer.Argument(help="App that receives it, with its own config.")],
) -> None:
    """Roll out SOURCE's current image on TARGET with TARGET's config (staging -> production)."""
    with _client() as c:
        render_job(c.promote(source, target), f"promote to {target}")


@app.command("git:remote")
@clean_errors
def git_remote(name: AppArg) -> None:
    """Print the git remote of an app: `git push lbsolo main` then builds and rolls it out."""
    settings = Settings.load()
    with Client(settings) as c:
        url = c.git_url(name)
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
        out = c.set_hook_repo(name, repo) if repo is not None else c.hook(name)
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
