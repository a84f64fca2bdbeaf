"""Whole-platform backup verbs: `lbsolo backup` (from the running daemon) and `lbsolo restore` (none running).

The archive crosses the CLI as it arrives (never held whole) into FILE.part, renamed once whole;
encryption happens here, so the passphrase or key never reaches the daemon. A restore runs in
this process against the engine (platform_restore.py), imported only by these verbs.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lbsolo.cli.common import _client, _size, app, clean_errors, console
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
) -> None:
    """Back the whole platform up into one archive: state, tokens, secrets, TLS/ACME files, git repositories,
    app volumes, add-ons' verified backups and the images of every kept release. Restore with lbsolo restore."""
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
    file: Annotated[Path, typer.Argument(help="A backup made by lbsolo backup.")],
    force: Annotated[bool, typer.Option("--force", help="Replace a home that already has apps (never merged).")] = False,  # noqa: E501
    key_file: KeyFile = None,
) -> None:
    """Bring a whole-platform backup back into $LBSOLO_HOME (no daemon may run on it), then: lbsolo up.
    Everything is checked first (version, free space, every entry's checksum): a refused backup changes nothing."""
    from lbsolo import platform_archive as pa
    from lbsolo.engine_docker import DockerBackend
    from lbsolo.engine_docker_archive import DockerArchive
    from lbsolo.platform_restore import restore as run

    if not file.is_file():
        raise InvalidInput(f"no backup file {file}")

    def key_for(kdf: int, salt: bytes, log_n: int, r: int, p: int) -> bytes:
        if kdf == pa.KDF_KEY_FILE:
            if key_file is None:
                raise InvalidInput("the backup is encrypted with a key file: pass --key-file")
            return _key(key_file)
        return pa.derive_key(_passphrase(confirm=False), salt, log_n, r, p)

    def engine_for(instance: str) -> DockerArchive:
        return DockerArchive(DockerBackend(instance))

    run(Settings.load(), file, force=force, key_for=key_for, engine_for=engine_for, say=console.print)
