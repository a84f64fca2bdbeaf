"""Request buffering: the bodies the proxy holds whole before an app sees them, and their budget.

A route with request buffering on has each body read whole before an upstream connection is
taken (a slow client then costs the app nothing). `HeldBodies` keeps up to `memory` bytes of one
body in memory, past that (or when all held bodies in memory pass `HELD_MEMORY_MAX`) the body in
an unlinked temp file in `spool_dir`; at most `max_body` bytes a body, and at most `disk` bytes in
all such files together. It counts what every connection holds, so that one budget bounds them all.

What it must not do: read sockets, answer clients or know about routes. A body it cannot take
raises `CannotHold`, and the client side answers `CANNOT_HOLD`; every body it counted is given
back with `free` when its request ends, however it ends.
"""

from __future__ import annotations

import logging
import os
import tempfile

from lbsolo.proxy_request import Request

__all__ = ["CANNOT_HOLD", "HELD_MEMORY_MAX", "CannotHold", "HeldBodies"]

log = logging.getLogger("lbsolo.proxy")

HELD_MEMORY_MAX = 32 * 1024 * 1024  # bodies held in memory by all connections; beyond, they go to files
CANNOT_HOLD = (503, "buffer_unavailable", "the proxy cannot take request bodies now; retry later")


class CannotHold(Exception):
    """A body cannot be held: the budget of held files is spent, or writing its file failed."""


class HeldBodies:
    """Every held request body, in memory or in files, counted against one budget."""

    def __init__(
        self,
        memory: int = 64 * 1024,
        max_body: int = 1 << 30,
        disk: int = 4 << 30,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.memory = memory  # of one body, before it goes to a file
        self.max_body = max_body  # bound of a buffered body, whatever its route allows
        self.disk = disk  # all held bodies' files together
        self.spool_dir = os.fspath(spool_dir) if spool_dir is not None else None  # None: the system's
        self.held = 0  # bytes held in memory, all connections
        self.spooled = 0  # bytes held in files, all connections

    def hold(self, req: Request) -> None:
        """`req` is routed to a buffering route: its body is held from now on, and what came of it
        before is counted now."""
        req.held = True
        if req.body:
            self.held += req.body_size
            if req.body_size > self.memory or self.held > HELD_MEMORY_MAX:
                self._spill(req)

    def add(self, req: Request, data: bytes) -> None:
        """More of a held body, in memory until it is too large (then all of it goes to a file)."""
        if req.body:
            req.body.append(data)  # type: ignore[union-attr]
        else:
            req.body = [data]
        size = len(data)
        req.body_size += size
        self.held += size
        if req.body_size > self.memory or self.held > HELD_MEMORY_MAX:
            self._spill(req)

    def write(self, req: Request, data: bytes) -> None:
        """More of a held body that is in a file already."""
        size = len(data)
        if self.spooled + size > self.disk:
            raise self._cannot_hold()
        try:
            req.spool.write(data)  # type: ignore[union-attr]
        except OSError as exc:
            raise self._cannot_hold() from exc
        req.spooled += size
        self.spooled += size

    def free(self, req: Request) -> None:
        """`req` ends: its body (held or not) is dropped, and what of it was counted is given back."""
        if req.held:
            self.held -= req.body_size
        req.body = ()
        req.body_size = 0
        spool = req.spool
        if spool is not None:
            req.spool = None
            self.spooled -= req.spooled
            req.spooled = 0
            spool.close()

    def _spill(self, req: Request) -> None:
        """Move a held body from memory to an unlinked temp file, where the rest of it goes too."""
        size = req.body_size
        if self.spooled + size > self.disk:
            raise self._cannot_hold()
        try:
            spool = tempfile.TemporaryFile(dir=self.spool_dir)  # noqa: SIM115 - closed with the request
        except OSError as exc:
            raise self._cannot_hold() from exc
        try:
            spool.writelines(req.body)
        except OSError as exc:
            spool.close()
            raise self._cannot_hold() from exc
        except BaseException:
            spool.close()
            raise
        req.spool = spool
        req.spooled = size
        self.spooled += size
        self.held -= size
        req.body = ()
        req.body_size = 0

    def _cannot_hold(self) -> CannotHold:
        if self.spooled < self.disk:  # not the budget spent to the byte: say so
            log.warning("proxy: cannot store a request body in %s", self.spool_dir or tempfile.gettempdir())
        return CannotHold()
