"""The dump commands run in add-on containers and in throw-away ones, off the event loop.

`Scratch.run` execs a command in a service's container (an add-on's, or a throw-away one) on a
worker thread: stdin read from a file in pieces, stdout handed to a sink as it comes; a caller
that is cancelled stops it at its next piece (so a daemon shutting down is not held up by a
dump). `load` restores a dump into a throw-away container of an image (no network, removed
after) and counts what it then holds; `replace_redis` swaps a Redis add-on's data with its
server stopped. Which commands to run is addon_dumps.py's; this decides nothing about backups
and keeps no state of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from lbsolo import addon_dumps as dumps
from lbsolo.addon_kinds import Credentials, Kind
from lbsolo.build import LogBuffer
from lbsolo.engine import Services
from lbsolo.errors import EngineError, LbsoloError

log = logging.getLogger("lbsolo.core")

DUMP_TIMEOUT = 6 * 3600.0  # a dump or a restore of a large database
COUNT_TIMEOUT = 600.0
PIECE = 1024 * 1024  # a file is fed to stdin in pieces of this size
TAIL_BYTES = 256
OUTPUT_CAP = 16 * 1024 * 1024  # what a command that answers in text may print
IDLE = ["tail", "-f", "/dev/null"]  # a throw-away container's command when only exec'd commands work in it


class BackupFailed(LbsoloError):
    """A dump, a verification or a restore did not succeed; the message says which step and why."""

    code = "backup_failed"
    status = 500


class WriteFailed(Exception):
    """Writing a dump to its file failed (a full disk, most often): not the engine's fault."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class Aborted(Exception):
    """The caller went away (cancelled): the command's stream is cut."""


class DumpSink:
    """Writes a dump's pieces to a file as they come, hashing them and keeping its first and last bytes."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.size = 0
        self.head = bytearray()
        self.tail = b""
        self._hash = hashlib.sha256()

    def __call__(self, piece: bytes) -> None:
        try:
            self.f.write(piece)
        except OSError as e:
            raise WriteFailed(e) from e
        self._hash.update(piece)
        self.size += len(piece)
        if len(self.head) < dumps.SNIFF_BYTES:
            self.head += piece[: dumps.SNIFF_BYTES - len(self.head)]
        self.tail = piece[-TAIL_BYTES:] if len(piece) >= TAIL_BYTES else (self.tail + piece)[-TAIL_BYTES:]

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def sync(self) -> None:
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            raise WriteFailed(e) from e


class Feed:
    """A file as an exec's stdin, in pieces, hashed on the way; it stops early when aborted."""

    def __init__(self, path: Path, abort: threading.Event) -> None:
        self.path = path
        self.abort = abort
        self.complete = False
        self._hash = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while not self.abort.is_set():
                piece = f.read(PIECE)
                if not piece:
                    self.complete = True
                    return
                self._hash.update(piece)
                yield piece

    def sha256(self) -> str | None:
        """The file's checksum, if it was fed whole."""
        return self._hash.hexdigest() if self.complete else None


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def last_line(err: str) -> str:
    lines = [line.strip() for line in err.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no error output"


def _discard(_piece: bytes) -> None:
    pass


class Scratch:
    """Commands in add-on containers, and throw-away containers to load dumps into."""

    def __init__(self, services: Services, ready_timeout: float) -> None:
        self.services = services
        self.ready_timeout = ready_timeout

    async def exec(
        self,
        service: str,
        argv: list[str],
        *,
        stdin: Path | None = None,
        sink: Callable[[bytes], None] | None = None,
        timeout: float = COUNT_TIMEOUT,
    ) -> tuple[int, str, str | None]:
        """Exit code, stderr's tail, and the checksum of the stdin file if it was all fed."""
        abort = threading.Event()
        feed = None if stdin is None else Feed(stdin, abort)
        out = sink or _discard

        def guarded(piece: bytes) -> None:
            if abort.is_set():
                raise Aborted
            out(piece)

        def call() -> tuple[int, str]:
            return self.services.exec_service(service, argv, stdin=feed, stdout_sink=guarded, timeout=timeout)

        try:
            code, err = await asyncio.to_thread(call)
        except asyncio.CancelledError:
            abort.set()
            raise
        return code, err, None if feed is None else feed.sha256()

    async def run(
        self,
        service: str,
        argv: list[str],
        *,
        stdin: Path | None = None,
        sink: Callable[[bytes], None] | None = None,
        timeout: float = COUNT_TIMEOUT,
    ) -> tuple[int, str]:
        code, err, _sha = await self.exec(service, argv, stdin=stdin, sink=sink, timeout=timeout)
        return code, err

    async def output(self, service: str, argv: list[str], what: str, stdin: Path | None = None) -> str:
        """A command's stdout as text (capped); BackupFailed if it exits non-zero."""
        buffer = bytearray()

        def keep(piece: bytes) -> None:
            if len(buffer) < OUTPUT_CAP:
                buffer.extend(piece[: OUTPUT_CAP - len(buffer)])

        code, err = await self.run(service, argv, stdin=stdin, sink=keep, timeout=COUNT_TIMEOUT)
        if code != 0:
            raise BackupFailed(f"{what} failed (exit {code}): {last_line(err)}")
        return buffer.decode("utf-8", "replace")

    async def counts(self, service: str, k: Kind, creds: Credentials, port: int | None = None) -> dict[str, int]:
        text = await self.output(service, dumps.counts_command(k, creds, port=port), f"counting in {service}")
        return dumps.parse_counts(text)

    async def wait_ready(self, service: str, k: Kind, creds: Credentials) -> None:
        command = ["sh", "-c", k.ready_command(creds)]
        deadline = time.monotonic() + self.ready_timeout
        while True:
            record = await asyncio.to_thread(self.services.find_service, service)
            if record is None or record["state"] in ("exited", "dead"):
                raise EngineError(f"{service} stopped while starting")
            if record["running"]:
                code, _err = await self.run(service, command, timeout=10)
                if code == 0:
                    return
            if time.monotonic() > deadline:
                raise EngineError(f"{service} did not take connections within {self.ready_timeout:.0f}s")
            await asyncio.sleep(0.25)

    async def _start(self, service: str, k: Kind, version: str, env: dict[str, str], command: list[str] | None,
                     volume: tuple[str, str] | None = None) -> None:  # fmt: skip
        image = k.image(version)
        try:
            await asyncio.to_thread(self.services.pull_image, image, _discard_line)
        except EngineError as e:
            raise BackupFailed(f"no image {image} here, and it could not be pulled: {e.message}") from e
        await asyncio.to_thread(
            lambda: self.services.run_scratch_service(
                service=service, kind=k.name, image=image, env=env, command=command, volume=volume
            )
        )

    async def _remove(self, service: str) -> None:
        try:
            await asyncio.to_thread(self.services.remove_service, service, volume=False)
        except LbsoloError as e:
            log.warning("could not remove the throw-away container %s: %s", service, e.message)

    async def load(
        self, name: str, k: Kind, version: str, path: Path, out: LogBuffer
    ) -> tuple[dict[str, int], str | None]:
        """Restore the dump at path into a throw-away container of `k` at `version`; what it then
        holds (rows per table, keys per database) and the checksum of the file as it was read."""
        scratch = f"{name}-verify-{secrets.token_hex(3)}"
        creds = k.credentials(name)  # its own password: nothing of the add-on's
        try:
            if k.name == "redis":
                # Nothing to wait for: the load starts a server of its own on the RDB (addon_dumps).
                await self._start(scratch, k, version, {}, IDLE)
            else:
                await self._start(scratch, k, version, k.environment(creds), k.command(creds))
                await self.wait_ready(scratch, k, creds)
            if k.name == "postgres":
                toc = await self.output(scratch, dumps.list_command(), "pg_restore --list", stdin=path)
                # The archive reads whole (exit 0); an empty database has no entries, and the
                # counts below catch a dump that lost tables.
                entries = [line for line in toc.splitlines() if line.strip() and not line.startswith(";")]
                out.append(f"       pg_restore --list: {len(entries) or 'no'} entries")
            argv = dumps.redis_load_command(creds) if k.name == "redis" else dumps.restore_command(k, creds)
            code, err, sha = await self.exec(scratch, argv, stdin=path, timeout=DUMP_TIMEOUT)
            if code != 0:
                raise BackupFailed(f"it does not load (exit {code}): {last_line(err)}")
            port = dumps.REDIS_SCRATCH_PORT if k.name == "redis" else None
            return await self.counts(scratch, k, creds, port=port), sha
        finally:
            await self._remove(scratch)

    async def replace_redis(self, name: str, k: Kind, version: str, creds: Credentials, path: Path) -> None:
        """The Redis add-on stopped, its data replaced by the RDB at path (in one atomic step), started again."""
        volume = await asyncio.to_thread(self.services.ensure_service_volume, name)
        helper = f"{name}-restore-{secrets.token_hex(3)}"
        await asyncio.to_thread(self.services.stop_service, name)
        try:
            await self._start(helper, k, version, {}, IDLE, volume=(volume, k.data_path))
            code, err = await self.run(
                helper, dumps.redis_replace_command(k.data_path), stdin=path, timeout=DUMP_TIMEOUT
            )
            if code != 0:
                raise BackupFailed(
                    f"replacing {name}'s data failed (exit {code}); its data is as before: {last_line(err)}"
                )
        finally:
            await self._remove(helper)
            await asyncio.to_thread(self.services.start_service, name)
            await self.wait_ready(name, k, creds)


def _discard_line(_line: str) -> None:
    pass
