"""The Docker engine's streams read as lbsolo wants them: text lines, log frames, build and push output.

Byte and JSON-chunk streams the engine sends (a container's multiplexed log, a build's or a
push's progress documents) turned into lines and outcomes, plus the one reader that runs on
the event loop: a replica's log followed over the engine's unix socket. It must not import
docker or requests (lbsolo.engine_docker opens the SDK's streams and passes them in), and it
decides nothing about replicas or images: it reads what the engine said.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from lbsolo.errors import BuildFailed, EngineError


def text_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Text lines of a byte stream cut anywhere (the last one may lack its newline)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")
    if buf:
        yield buf.decode("utf-8", "replace")


def split_frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """The payloads of the whole frames at the start of a multiplexed log stream, and what follows.

    Each frame is an 8-byte header (stream, three zero bytes, a big-endian 32-bit length), then
    that many bytes of stdout or stderr.
    """
    payloads, at = [], 0
    while len(buf) - at >= 8:
        (size,) = struct.unpack_from(">I", buf, at + 4)
        if len(buf) - at - 8 < size:
            break
        payloads.append(buf[at + 8 : at + 8 + size])
        at += 8 + size
    return payloads, buf[at:]


def build_output(
    chunks: Iterable[Mapping[str, Any]], *, app: str, timeout: float, on_line: Callable[[str], None]
) -> str | None:
    """Read a build's progress documents to their end: lines to on_line, the image id if it said one.

    BuildFailed when the engine reports an error or the build runs past `timeout` seconds.
    """
    image_id = None
    started = time.monotonic()
    for chunk in chunks:
        if time.monotonic() - started > timeout:
            raise BuildFailed(f"build of {app} timed out after {timeout:.0f}s (LBSOLO_BUILD_TIMEOUT)")
        if "stream" in chunk:
            for line in str(chunk["stream"]).splitlines():
                if line.strip():
                    on_line(line)
        elif "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail") or {}
            message = str(chunk.get("error") or detail.get("message") or "build failed")
            on_line(message.strip())
            raise BuildFailed(f"build of {app} failed: {message.strip()}")
        elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
            image_id = str(chunk["aux"]["ID"])
        elif "status" in chunk:
            on_line(str(chunk["status"]))
    return image_id


def push_output(chunks: Iterable[Mapping[str, Any]], target: str, on_line: Callable[[str], None]) -> None:
    """Read a push's progress documents to their end; EngineError if the engine reports a failure."""
    for chunk in chunks:
        # The engine reports a failed push inside the stream, not as an HTTP error.
        if "error" in chunk or "errorDetail" in chunk:
            message = str(chunk.get("error") or (chunk.get("errorDetail") or {}).get("message") or "failed")
            raise EngineError(f"push {target}: {message.strip()}")
        if "status" in chunk:
            on_line(" ".join(str(chunk[k]) for k in ("id", "status", "progress") if chunk.get(k)))


def docker_socket() -> str | None:
    """The unix socket the engine answers on (DOCKER_HOST, else the default); None for another transport."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return host.removeprefix("unix://") if host.startswith("unix://") else None


async def follow_socket_logs(path: str, replica_id: str, since: float | None = None) -> AsyncIterator[str]:
    """A replica's output lines as they come, read from the engine's HTTP API on the unix socket `path`.

    Ends when the container stops (the engine closes the stream); EngineError if the engine
    cannot be reached or refuses.
    """
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except OSError as e:
        raise EngineError(f"cannot reach the engine at {path}: {e}") from e
    try:
        query = "follow=1&stdout=1&stderr=1" + (f"&since={since:.6f}" if since else "")
        target = f"/containers/{quote(replica_id, safe='')}/logs?{query}"
        writer.write(f"GET {target} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if head.split(b" ", 2)[1:2] != [b"200"]:
            raise EngineError(f"logs of {replica_id[:12]}: {head.splitlines()[0].decode(errors='replace')}")
        buf, text = b"", b""
        while chunk := await reader.read(65536):
            payloads, buf = split_frames(buf + chunk)  # lbsolo's containers have no TTY: framed
            *lines, text = (text + b"".join(payloads)).split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")
        if text:
            yield text.decode("utf-8", "replace")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
