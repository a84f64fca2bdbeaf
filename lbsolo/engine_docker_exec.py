"""Commands run inside a running container through the engine's exec API (add-on backups,
rotations, shells): Docker's hijacked connection, stdin written by a thread, the multiplexed
output frames read back. Blocking, like the rest of the Docker-local backend; lbsolo.engine_docker_services
calls it for its add-on containers. Decides nothing: the caller names the container and command.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable

import docker
import docker.errors

from lbsolo.engine_docker import _engine_errors
from lbsolo.errors import EngineError

STDERR_TAIL = 4096
_PIECE = 256 * 1024


def _read_exact(sock: socket.socket, n: int) -> bytes:
    """n bytes from sock; fewer only at the end of the stream."""
    parts, left = [], n
    while left:
        piece = sock.recv(left)
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def demultiplex(sock: socket.socket, stdout_sink: Callable[[bytes], None], deadline: float) -> bytes:
    """Read Docker's multiplexed exec stream (8-byte frame headers: stream, 0, 0, 0, size
    big-endian) to its end: stdout pieces go to the sink as they arrive (a frame is read in
    pieces of at most 256 KiB, so memory stays bounded), stderr is kept as its last few KiB."""
    tail = b""
    while True:
        head = _read_exact(sock, 8)
        if len(head) < 8:
            return tail
        stream, size = head[0], struct.unpack(">I", head[4:])[0]
        while size:
            if time.monotonic() > deadline:
                raise TimeoutError("no end in time")
            piece = sock.recv(min(size, _PIECE))
            if not piece:
                return tail
            size -= len(piece)
            if stream == 2:
                tail = (tail + piece)[-STDERR_TAIL:]
            else:
                stdout_sink(piece)


def exec_in(
    api: docker.APIClient,
    container: str,
    service: str,
    command: list[str],
    *,
    stdin: Iterable[bytes] | None = None,
    stdout_sink: Callable[[bytes], None],
    timeout: float,
) -> tuple[int, str]:
    """Over the engine's hijacked connection: a thread writes stdin (then half-closes), this
    one reads the frames. The engine cannot stop an exec'd process cut off by the timeout."""
    with _engine_errors(f"exec in {service}"):
        created = api.exec_create(container, command, stdin=stdin is not None, stdout=True, stderr=True)
        raw = api.exec_start(created["Id"], socket=True)
        sock: socket.socket = getattr(raw, "_sock", raw)
        sock.settimeout(timeout)
        failed: list[BaseException] = []

        def feed() -> None:
            try:
                for chunk in stdin or ():
                    if chunk:
                        sock.sendall(chunk)
            except BaseException as e:  # the reader reports it
                failed.append(e)
            finally:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=feed, name=f"exec-stdin-{service}", daemon=True)
        if stdin is not None:
            writer.start()
        try:
            tail = demultiplex(sock, stdout_sink, time.monotonic() + timeout)
        except TimeoutError as e:
            raise EngineError(f"exec in {service}: no end after {timeout:.0f}s") from e
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with contextlib.suppress(OSError):
                raw.close()
        if stdin is not None:
            writer.join(timeout)
        if failed and not isinstance(failed[0], OSError):
            raise failed[0]
        code = api.exec_inspect(created["Id"]).get("ExitCode")
    return (1 if code is None else int(code)), tail.decode("utf-8", "replace")


def exec_session(
    api: docker.APIClient,
    container: str,
    service: str,
    command: list[str],
    *,
    stdin: Iterable[bytes],
    on_output: Callable[[int, bytes], None],
    tty: bool = False,
    size: tuple[int, int] | None = None,
    on_start: Callable[[Callable[[], None]], None] | None = None,
) -> int | None:
    """An interactive exec with no time limit: stdin streamed in as it comes, output handed
    to on_output as it comes (stream 1 or 2; with a TTY everything is 1, raw bytes).

    When stdin ends the process sees end-of-input (with a TTY, which has none, the session
    is hung up). `on_start` receives a hang_up() another thread may call to end it. Returns
    the exit code (None if the process was left running when the session was hung up)."""
    with _engine_errors(f"shell in {service}"):
        created = api.exec_create(container, command, stdin=True, stdout=True, stderr=True, tty=tty)
        raw = api.exec_start(created["Id"], socket=True, tty=tty)
        sock: socket.socket = getattr(raw, "_sock", raw)
        sock.settimeout(None)
        if tty and size:
            with contextlib.suppress(docker.errors.APIError):
                api.exec_resize(created["Id"], height=size[0], width=size[1])

        def hang_up() -> None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        def feed() -> None:
            try:
                for chunk in stdin:
                    if chunk:
                        sock.sendall(chunk)
            except OSError:
                pass  # the session ended first
            finally:
                if tty:
                    hang_up()
                else:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)

        if on_start is not None:
            on_start(hang_up)
        threading.Thread(target=feed, name=f"shell-stdin-{service}", daemon=True).start()
        try:
            _each_frame(sock, on_output, raw_stream=tty)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with contextlib.suppress(OSError):
                raw.close()
        for _ in range(20):  # the engine records the exit a moment after the stream ends
            state = api.exec_inspect(created["Id"])
            if not state.get("Running"):
                code = state.get("ExitCode")
                return None if code is None else int(code)
            time.sleep(0.05)
    return None


def _each_frame(sock: socket.socket, on_output: Callable[[int, bytes], None], *, raw_stream: bool) -> None:
    """Hand each piece of an exec's output to on_output(stream, piece) until the stream ends:
    raw (a TTY's) as stream 1, or Docker's multiplexed frames by their stream byte."""
    try:
        if raw_stream:
            while piece := sock.recv(_PIECE):
                on_output(1, piece)
            return
        while True:
            head = _read_exact(sock, 8)
            if len(head) < 8:
                return
            stream, size = head[0], struct.unpack(">I", head[4:])[0]
            while size:
                piece = sock.recv(min(size, _PIECE))
                if not piece:
                    return
                size -= len(piece)
                on_output(2 if stream == 2 else 1, piece)
    except OSError:
        return  # hung up
