"""Whole-platform backup verbs: `lbsolo backup` (from the running daemon; with --schedule, --status,
--now: the backups the daemon keeps), `backup:target` and `lbsolo restore` (none running).

The archive crosses the CLI as it arrives (never held whole) into FILE.part, renamed once whole;
encryption happens here, so the passphrase or key never reaches the daemon. A restore runs in
this process against the engine (platform_restore.py), imported only by these verbs.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lbsolo.cli import client_platform_backup as backups_api
from lbsolo.cli.common import Table, _client, _size, _when, app, clean_errors, console, escape
from lbsolo.config import Settings
from lbsolo.errors import InvalidInput, LbsoloError

PASSPHRASE_ENV = "LBSOLO_BACKUP_PASSPHRASE"
KeyFile = Annotated[Path | None, typer.Option("--key-file", help="A key file: 32 raw bytes or 64 hex characters.")]


def _passphrase(confirm: bool) -> str:
    if value := os.environ.get(PASSPHRASE_ENV):
        return value
    if not sys.stdin.isatty():
        raise InvalidInput(f"the backup is encrypted with a passphrase: set {PASSPHRASE_ENV} or run from a terminal")
    first = getpass.getpass("backup passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise InvalidInput("the two passphrases differ")
    return first


def _key(path: Path) -> bytes:
    from lbsolo.addon_backup_crypt import parse_key

    try:
        return parse_key(path.read_bytes())
    except OSError as e:
        raise InvalidInput(f"cannot read the key file {path}: {e.strerror}") from None


@app.command("backup")
@clean_errors
def backup(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write it (default: the name the daemon gives, here).")] = None,  # noqa: E501
    encrypt: Annotated[bool, typer.Option("--encrypt", help=f"Seal it with a passphrase (asked, or {PASSPHRASE_ENV}).")] = False,  # noqa: E501
    key_file: KeyFile = None,
    schedule: Annotated[str | None, typer.Option("--schedule", help='Back up on the daemon on a cron schedule ("0 4 * * *", @daily), or "off".')] = None,  # noqa: E501
    keep: Annotated[int | None, typer.Option("--keep", help="How many scheduled backups the daemon keeps (default 7).")] = None,  # noqa: E501
    status: Annotated[bool, typer.Option("--status", help="Show the schedule, the target and the backups the daemon keeps.")] = False,  # noqa: E501
    now: Annotated[bool, typer.Option("--now", help="Take one into the daemon's folder now (uploaded if a target is set).")] = False,  # noqa: E501
) -> None:
    """Back the whole platform up into one archive: state, tokens, secrets, TLS/ACME files, git repositories,
    app volumes, add-ons' verified backups and the images of every kept release. Restore with lbsolo restore.
    With --schedule/--keep, --status or --now: the backups the daemon keeps in $LBSOLO_HOME/backups/platform/."""
    if schedule is not None or keep is not None:
        return _schedule(schedule, keep)
    if status:
        return _status()
    if now:
        with _client() as c:
            b = backups_api.backup_now(c)
        return console.print(f"[bold green]backed up[/] into {escape(b['file'])} on the daemon: {_size(b['size'])}"
                             + _uploaded(b))  # fmt: skip
    _backup_here(out, encrypt, key_file)


def _schedule(schedule: str | None, keep: int | None) -> None:
    with _client() as c:
        if schedule is None:  # --keep alone: the schedule as it is
            schedule = backups_api.status(c)["schedule"]
        out = backups_api.set_schedule(c, schedule, keep)
    if out["schedule"]:
        console.print(f"platform backups scheduled: {escape(out['schedule'])}, keeping {out['keep']}; "
                      f"next run {_when(out['next_run'])}")  # fmt: skip
    else:
        console.print("no scheduled platform backups (those kept stay: lbsolo backup --status)")


def _uploaded(b: dict[str, Any]) -> str:
    remote = b.get("remote")
    if not remote:
        return ""
    if remote.get("ok"):
        return f", uploaded to {escape(remote['url'])}" + (" (encrypted)" if remote.get("encrypted") else "")
    return f" [red]not uploaded[/]: {escape(str(remote.get('error')))}"


def _status() -> None:
    with _client() as c:
        st = backups_api.status(c)
    table = Table("name", "created", "source", "size", "where")
    where = {"local": "here", "remote": "bucket only", "local+remote": "here + bucket"}
    for b in st["backups"]:
        failed = (b.get("remote") or {}).get("ok") is False
        place = "[red]here; upload failed[/]" if failed else where.get(b.get("location") or "local", "here")
        table.add_row(b["file"], _when(b["created"]), b["source"], _size(b["size"]), place)
    console.print(table if st["backups"] else f"No platform backups kept in {escape(st['folder'])} yet")
    if st["schedule"]:
        console.print(f"Scheduled: {escape(st['schedule'])}, keeping {st['keep']}; next run {_when(st['next_run'])}")
    else:
        console.print('No schedule: lbsolo backup --schedule "0 4 * * *" --keep 7')
    if st.get("target"):
        t = st["target"]
        sealed = f", encrypted with key {t['key_id']}" if t.get("encrypt") else ""
        console.print(f"Also kept in {escape(t['url'])}/platform/ at {escape(t['endpoint'])}{sealed}")
    if st.get("remote_error"):
        console.print(f"[red]The bucket could not be listed[/]: {escape(st['remote_error'])}")
    if st.get("last_failure"):
        f = st["last_failure"]
        console.print(f"[red]Last failure[/] {_when(f['at'])}: {escape(f['error'])}")


@app.command("backup:target")
@clean_errors
def backup_target(
    url: Annotated[str | None, typer.Argument(help="s3://BUCKET/PREFIX: where platform backups are also kept.")] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="The S3 API's http(s):// URL.")] = None,
    region: Annotated[str | None, typer.Option("--region", help="The bucket's region.")] = None,
    access_key_id: Annotated[str | None, typer.Option("--access-key-id", help="Default: $AWS_ACCESS_KEY_ID.", show_default=False)] = None,  # noqa: E501
    secret_access_key: Annotated[str | None, typer.Option("--secret-access-key", help="Default: $AWS_SECRET_ACCESS_KEY.", show_default=False)] = None,  # noqa: E501
    encrypt: Annotated[bool, typer.Option("--encrypt", help="Seal uploads with a new key, printed once.")] = False,
    key_file: Annotated[str | None, typer.Option("--key-file", help="Seal uploads with this key: 32 bytes or 64 hex.")] = None,  # noqa: E501
    local: Annotated[bool, typer.Option("--local", help="Keep platform backups here only again.")] = False,
) -> None:
    """Keep the platform's backups in an S3-compatible bucket too (under PREFIX/platform/): each scheduled
    backup and each lbsolo backup is uploaded, and lbsolo restore NAME takes one from there. The target
    is checked at once; credentials are kept by the daemon and never shown again. An encrypted upload
    is opened by lbsolo restore --key-file with the key printed here."""
    from lbsolo.cli.verbs_addon_backups import show_new_key, target_body

    if local:
        if url or endpoint or encrypt or key_file:
            raise LbsoloError("--local takes no bucket, endpoint or key")
        with _client() as c:
            backups_api.set_target(c, {"url": None})
        return console.print("platform backups are kept here only (the bucket's copies stay where they are)")
    if not url or not endpoint:
        raise LbsoloError("usage: lbsolo backup:target s3://BUCKET/PREFIX --endpoint URL (or --local)")
    body = target_body(url, endpoint, region, encrypt, access_key_id, secret_access_key, key_file)
    with _client() as c:
        out = backups_api.set_target(c, body)
    sealed = f", encrypted with key {out['key_id']}" if out.get("encrypt") else ""
    console.print(f"platform backups also go to {escape(out['target']['url'])}/platform/{sealed} (checked: writable)")
    show_new_key(out, "platform backups", "lbsolo restore NAME --key-file FILE")


def _backup_here(out: Path | None, encrypt: bool, key_file: Path | None) -> None:
    import secrets

    from lbsolo import platform_archive as pa

    target = out or Path("lbsolo-backup.tar")
    part = target.with_name(target.name + ".part")
    key: bytes | None = None
    header = b""
    if key_file is not None:
        key, header = _key(key_file), pa.sealed_header(pa.KDF_KEY_FILE)
    elif encrypt:
        salt = secrets.token_bytes(16)
        key, header = pa.derive_key(_passphrase(confirm=True), salt), pa.sealed_header(pa.KDF_SCRYPT, salt)
    try:
        with open(part, "wb") as f:
            sink = f
            if key is not None:
                f.write(header)
                sink = pa.Sealer(f, key)  # type: ignore[assignment]
            with _client() as c:
                name, _written = c.platform_backup(sink)
            if key is not None:
                sink.close()
            f.flush()
            os.fsync(f.fileno())
        if out is None:
            target = Path(name + (".enc" if key is not None else ""))
        os.replace(part, target)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise LbsoloError(f"the backup was cut off: it failed on the daemon (see its log) or here: {e}") from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    sealed = " (encrypted)" if key is not None else ""
    console.print(f"[bold green]backed up[/] into {target}: {_size(target.stat().st_size)}{sealed}")


@app.command("restore")
@clean_errors
def restore(
    file: Annotated[Path, typer.Argument(help="A backup made by lbsolo backup, or the name of one in the bucket.")],
    force: Annotated[bool, typer.Option("--force", help="Replace a home that already has apps (never merged).")] = False,  # noqa: E501
    key_file: KeyFile = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="s3://BUCKET/PREFIX of lbsolo backup:target (default: the home's).")] = None,  # noqa: E501
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="The bucket's S3 API URL.")] = None,
    region: Annotated[str | None, typer.Option("--region", help="The bucket's region.")] = None,
) -> None:
    """Bring a whole-platform backup back into $LBSOLO_HOME (no daemon may run on it), then: lbsolo up.
    Everything is checked first (version, free space, every entry's checksum): a refused backup changes nothing.
    A NAME that is no file here is taken from the bucket (--bucket/--endpoint with $AWS_ACCESS_KEY_ID and
    $AWS_SECRET_ACCESS_KEY, or the target the home's state has)."""
    settings = Settings.load()
    downloaded: Path | None = None
    if not file.is_file():
        if bucket is None and endpoint is None and "/" in str(file):
            raise InvalidInput(f"no backup file {file}")
        from lbsolo.platform_restore import check_home

        check_home(settings, force)  # refused before a download, not after
        downloaded = file = _from_bucket(settings, str(file), bucket, endpoint, region)
    try:
        _restore(settings, file, force, key_file)
    finally:
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                downloaded.parent.rmdir()


def _from_bucket(settings: Settings, name: str, bucket: str | None, endpoint: str | None, region: str | None) -> Path:
    from lbsolo.addon_backup_remote import Target
    from lbsolo.platform_restore import fetch, home_target

    if bucket or endpoint:
        if not (bucket and endpoint):
            raise InvalidInput("a backup from the bucket needs both --bucket s3://BUCKET/PREFIX and --endpoint URL")
        target = Target.parse(bucket, endpoint, region, os.environ.get("AWS_ACCESS_KEY_ID"),
                              os.environ.get("AWS_SECRET_ACCESS_KEY"))  # fmt: skip
    elif t := home_target(settings):
        target = Target.from_dict(t)
    else:
        raise InvalidInput(f"no backup file {name}, and no bucket to take it from: pass --bucket and --endpoint")
    return fetch(target, name, settings.home.parent / f".{settings.home.name}.download", say=console.print)


def _restore(settings: Settings, file: Path, force: bool, key_file: Path | None) -> None:
    from lbsolo import platform_archive as pa
    from lbsolo.engine_docker import DockerBackend
    from lbsolo.engine_docker_archive import DockerArchive
    from lbsolo.platform_restore import restore as run

    def key_for(kdf: int, salt: bytes, log_n: int, r: int, p: int) -> bytes:
        if kdf == pa.KDF_KEY_FILE:
            if key_file is None:
                raise InvalidInput("the backup is encrypted with a key file: pass --key-file")
            return _key(key_file)
        return pa.derive_key(_passphrase(confirm=False), salt, log_n, r, p)

    def engine_for(instance: str) -> DockerArchive:
        return DockerArchive(DockerBackend(instance))

    run(settings, file, force=force, key_for=key_for, engine_for=engine_for, say=console.print)
