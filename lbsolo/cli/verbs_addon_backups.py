"""Add-on backup verbs: `addons:backup`, `addons:backups`, `addons:backups:schedule`, `addons:backups:target`,
`addons:backups:verify`, `addons:backups:remove`, `addons:restore`, `addons:export`,
`addons:import` — dumps of a database, kept verified under the daemon's home, or streamed in
and out through the CLI.

Dumps cross the CLI as they are read (never held whole): an export is written to stdout piece
by piece, an import or a restore from a file is sent as it is read.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Annotated, Any

import typer

from lbsolo.cli.client import Client
from lbsolo.cli.common import Table, _client, _size, _when, app, clean_errors, console, escape, render_job
from lbsolo.errors import LbsoloError

AddonArg = Annotated[str, typer.Argument(help="Add-on name.")]
BackupArg = Annotated[str | None, typer.Argument(help="Backup id (default: the newest).")]
_BACKUP_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z(-[a-z0-9]{1,12})?$")  # addon_dumps.BACKUP_ID, without its imports


def _newest(c: Client, name: str) -> str:
    backups = c.addon_backups(name)["backups"]
    if not backups:
        raise LbsoloError(f"{name} has no backups yet: lbsolo addons:backup {name}")
    return str(backups[0]["id"])


def _verified(b: dict[str, Any]) -> str:
    if b.get("verified") is True:
        return "[green]yes[/]"
    if b.get("verified") is False:
        return f"[red]NO[/]: {escape(str(b.get('verify_error') or '')[:60])}"
    return "[yellow]not yet[/]"


@app.command("addons:backup")
@clean_errors
def addons_backup(name: AddonArg) -> None:
    """Back an add-on up now; the dump is then verified by a restore into a throw-away container."""
    with _client() as c:
        result = render_job(c.backup_addon(name), f"backing up {name}")
    b = result["backup"]
    console.print(f"[bold green]Backup {b['id']}[/] of {name}: {_size(b['size'])}, verified")


@app.command("addons:backups")
@clean_errors
def addons_backups(name: AddonArg) -> None:
    """List an add-on's backups (newest first) and its schedule."""
    with _client() as c:
        listing = c.addon_backups(name)
    rows = listing["backups"]
    table = Table("id", "created", "source", "size", "tables", "rows", "verified", "where")
    for b in rows:
        table.add_row(
            b["id"], _when(b["created"]), b["source"], _size(b["size"]), str(b["tables"]), str(b["rows"]), _verified(b),
            _where(b),
        )  # fmt: skip
    console.print(table if rows else f"No backups of {name} yet: lbsolo addons:backup {name}")
    target = listing.get("target")
    if target:
        sealed = ", encrypted" if target.get("encrypt") else ""
        console.print(f"Also kept in {escape(target['url'])} at {escape(target['endpoint'])}{sealed}")
    if listing.get("remote_error"):
        console.print(f"[red]The bucket could not be listed[/]: {escape(listing['remote_error'])}")
    if listing["schedule"]:
        when = _when(listing["next_run"])
        console.print(f"Scheduled: {escape(listing['schedule'])}, keeping {listing['keep']}; next run {when}")
    else:
        console.print(f'No schedule: lbsolo addons:backups:schedule {name} "0 3 * * *" --keep 7')


def _where(b: dict[str, Any]) -> str:
    location = b.get("location") or "local"
    if location == "lost":
        return "[red]file lost[/]"
    if location == "remote":
        return f"bucket only: {escape(str((b.get('remote') or {}).get('url') or ''))}"
    if location == "local+remote":
        return "here + bucket"
    if (b.get("remote") or {}).get("ok") is False:
        return "[red]here; upload failed[/]"
    return "here"


def target_body(
    url: str,
    endpoint: str,
    region: str | None,
    encrypt: bool,
    access_key_id: str | None,
    secret_access_key: str | None,
    key_file: str | None,
) -> dict[str, Any]:
    """What a bucket target is set with (add-on and platform backups alike); credentials default
    to the AWS_* environment variables."""
    return {
        "url": url, "endpoint": endpoint, "region": region, "encrypt": encrypt,
        "access_key_id": access_key_id or os.environ.get("AWS_ACCESS_KEY_ID"),
        "secret_access_key": secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "key": _read_key(key_file) if key_file else None,
    }  # fmt: skip


def show_new_key(out: dict[str, Any], what: str, restore_hint: str) -> None:
    """A key the daemon just made for a sealed target: shown this once, loudly."""
    if not out.get("key"):
        return
    console.print(
        f"[bold red]!!! KEEP THIS KEY[/] — it is shown this once. Without it the encrypted {what} in the "
        f"bucket cannot be restored ({restore_hint}):"
    )
    console.print(out["key"], markup=False, highlight=False, soft_wrap=True)
    if out.get("key_file"):
        console.print(f"(a copy is kept on this server in {escape(out['key_file'])}, mode 0600)")


def _read_key(path: str) -> str:
    """A key file's key, in hex: 32 raw bytes or 64 hex characters (checked here and again by the daemon)."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError as e:
        raise LbsoloError(f"cannot read the key file {path}: {e.strerror}") from e
    if len(data) == 32:
        return data.hex()
    text = data.strip()
    if len(text) == 64 and all(c in b"0123456789abcdefABCDEF" for c in text):
        return text.decode().lower()
    raise LbsoloError(f"the key file {path} holds {len(data)} bytes: a key is 32 raw bytes or 64 hex characters")


@app.command("addons:backups:target")
@clean_errors
def addons_backups_target(
    name: AddonArg,
    url: Annotated[str | None, typer.Argument(help="s3://BUCKET/PREFIX: where backups are also kept.")] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="The S3 API's http(s):// URL.")] = None,
    region: Annotated[str | None, typer.Option("--region", help="The bucket's region.")] = None,
    access_key_id: Annotated[
        str | None, typer.Option("--access-key-id", help="Default: $AWS_ACCESS_KEY_ID.", show_default=False)
    ] = None,
    secret_access_key: Annotated[
        str | None, typer.Option("--secret-access-key", help="Default: $AWS_SECRET_ACCESS_KEY.", show_default=False)
    ] = None,
    encrypt: Annotated[bool, typer.Option("--encrypt", help="Seal uploads with a new key, printed once.")] = False,
    key_file: Annotated[
        str | None, typer.Option("--key-file", help="Seal (and open) uploads with this key: 32 bytes or 64 hex.")
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Keep backups here only again.")] = False,
) -> None:
    """Keep an add-on's backups in an S3-compatible bucket too: each verified backup is uploaded,
    listed by addons:backups and restored from there when its file is not here. The target is
    checked at once (a small object written and deleted); credentials are kept by the daemon and
    never shown again."""
    if local:
        if url or endpoint or encrypt or key_file:
            raise LbsoloError("--local takes no bucket, endpoint or key")
        with _client() as c:
            c.set_backup_target(name, {"url": None})
        console.print(f"{name}: backups are kept here only (the bucket's copies stay where they are)")
        return
    if not url or not endpoint:
        raise LbsoloError(f"usage: lbsolo addons:backups:target {name} s3://BUCKET/PREFIX --endpoint URL (or --local)")
    body = target_body(url, endpoint, region, encrypt, access_key_id, secret_access_key, key_file)
    with _client() as c:
        out = c.set_backup_target(name, body)
    sealed = f", encrypted with key {out['key_id']}" if out.get("encrypt") else ""
    console.print(f"{name}: backups also go to {escape(out['target']['url'])}{sealed} (checked: writable)")
    show_new_key(out, "backups", "on a new server: addons:backups:target … --key-file FILE")


@app.command("addons:backups:schedule")
@clean_errors
def addons_backups_schedule(
    name: AddonArg,
    schedule: Annotated[str, typer.Argument(help='Cron: "0 3 * * *" (daily at 03:00), @hourly…; "off": none.')],
    keep: Annotated[int | None, typer.Option("--keep", help="Scheduled backups to keep (default 7).")] = None,
) -> None:
    """Back an add-on up on a cron schedule (this machine's time zone), keeping the newest --keep."""
    with _client() as c:
        out = c.schedule_backups(name, None if schedule == "off" else schedule, keep)
    if out["schedule"]:
        console.print(f"{name}: backed up {out['schedule']}, keeping {out['keep']}; next run {_when(out['next_run'])}")
    else:
        console.print(f"{name}: no scheduled backups (the ones made stay)")


@app.command("addons:backups:verify")
@clean_errors
def addons_backups_verify(name: AddonArg, backup_id: BackupArg = None) -> None:
    """Verify a backup again: restore it into a throw-away container and compare the counts."""
    with _client() as c:
        backup_id = backup_id or _newest(c, name)
        render_job(c.verify_backup(name, backup_id), f"verifying {backup_id}")
    console.print(f"[bold green]Backup {backup_id}[/] of {name} is verified")


@app.command("addons:backups:remove")
@clean_errors
def addons_backups_remove(name: AddonArg, backup_id: Annotated[str, typer.Argument(help="Backup id.")]) -> None:
    """Delete one stored backup."""
    with _client() as c:
        c.remove_backup(name, backup_id)
    console.print(f"Removed backup {backup_id} of {name}")


@app.command("addons:restore")
@clean_errors
def addons_restore(
    name: AddonArg,
    source: Annotated[str, typer.Argument(help="A backup id (see addons:backups), or a dump file to upload.")],
) -> None:
    """Put a backup's data (or a dump file's) back into an add-on; it is checked first: another kind,
    a newer major, a changed or cut-off file are refused and the add-on left as it is."""
    with _client() as c:
        if os.path.isfile(source) or not _BACKUP_ID.match(source):
            try:
                with open(source, "rb") as f:
                    render_job(c.import_dump(name, f), f"restoring {name} from {source}")
            except FileNotFoundError:
                raise LbsoloError(f"no backup id or file {source!r}: see lbsolo addons:backups {name}") from None
        else:
            render_job(c.restore_backup(name, source), f"restoring {name} from {source}")
    console.print(f"[bold green]{name} restored[/] from {source}")


@app.command("addons:export")
@clean_errors
def addons_export(
    name: AddonArg,
    backup_id: Annotated[str | None, typer.Option("--backup", help="A stored backup instead of a fresh dump.")] = None,
) -> None:
    """Write a fresh dump of an add-on (or a stored backup) to stdout: `lbsolo addons:export NAME > dump`."""
    if sys.stdout.isatty():
        raise LbsoloError(f"the dump goes to stdout: redirect it to a file (lbsolo addons:export {name} > {name}.dump)")
    out = sys.stdout.buffer
    try:
        with _client() as c:
            written = c.export_dump(name, backup_id, out)
    except OSError as e:
        raise LbsoloError(f"the dump was cut off: it failed on the daemon (see its log): {e}") from e
    out.flush()
    print(f"{written} bytes of {name} written", file=sys.stderr)


@app.command("addons:import")
@clean_errors
def addons_import(
    name: AddonArg,
    file: Annotated[str | None, typer.Argument(help="A dump file (default: stdin).")] = None,
) -> None:
    """Load a dump (pg_dump -Fc, a Redis RDB, mariadb-dump SQL) into an add-on: `lbsolo addons:import NAME < dump`.

    Checked first (kind, major, whole, and a load into a throw-away container): a dump that is
    refused leaves the add-on as it is. It is kept as a backup too."""
    if file is None and sys.stdin.isatty():
        raise LbsoloError(f"the dump comes on stdin: lbsolo addons:import {name} < {name}.dump")
    try:
        source = sys.stdin.buffer if file is None else open(file, "rb")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise LbsoloError(f"cannot read {file}: {e.strerror}") from e
    try:
        with _client() as c:
            result = render_job(c.import_dump(name, source), f"importing into {name}")
    finally:
        if file is not None:
            source.close()
    console.print(f"[bold green]Imported[/] into {name} (kept as backup {result['backup']['id']})")
