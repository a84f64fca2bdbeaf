"""An add-on container's log on the local Docker engine: the Services part's `service_logs`.

The engine's log endpoint asked with timestamps, read as it arrives (a follow waits on the
engine's stream in the caller's thread; `close()` from another thread shuts its socket, which
ends the wait). Each line comes with the engine's own stamp in nanoseconds, so a reader can
resume a follow right after the last line it saw. It decides nothing about add-ons, and holds
no more than the line being read.
"""

from __future__ import annotations

import calendar
import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

from lbsolo.engine_docker import _engine_errors
from lbsolo.engine_docker_streams import text_lines


def stamped(line: str) -> tuple[int, str]:
    """'2024-05-01T12:34:56.123456789Z text' (the engine's RFC 3339 stamp, UTC, trailing zeros
    of the fraction dropped) -> (nanoseconds since the epoch, 'text'). A line without a stamp
    it can read keeps its whole text, stamped now."""
    stamp, sep, text = line.partition(" ")
    try:
        if not sep or not stamp.endswith("Z") or len(stamp) < 20 or stamp[10] != "T":
            raise ValueError(stamp)
        whole, _, fraction = stamp[:-1].partition(".")
        if (fraction and not fraction.isdigit()) or len(fraction) > 9:
            raise ValueError(stamp)
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        return seconds * 1_000_000_000 + int(fraction.ljust(9, "0") or 0), text.rstrip("\r")
    except ValueError:
        return time.time_ns(), line.rstrip("\r")


class DockerServiceLog:
    """One read of a container's log (see lbsolo.engine.ServiceLog); iterate once."""

    def __init__(self, api: Any, container: str, *, tail: int | None, since: float | None, follow: bool) -> None:
        self._what = f"logs of {container}"
        options: dict[str, Any] = {"tail": "all" if tail is None else max(0, int(tail))}
        if since is not None and since > 0:
            options["since"] = float(since)
        with _engine_errors(self._what):
            self._chunks: Any = api.logs(
                container, stdout=True, stderr=True, stream=True, follow=follow, timestamps=True, **options
            )

    def __iter__(self) -> Iterator[tuple[int, str]]:
        chunks: Iterable[bytes] = self._chunks
        with _engine_errors(self._what):
            for line in text_lines(chunks):
                yield stamped(line)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed, or the engine went away: nothing to stop
            self._chunks.close()
