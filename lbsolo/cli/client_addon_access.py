"""The API calls of the add-on access verbs (expose, unexpose, credentials:rotate, promote,
shell), typed as lbsolo.cli.client's are: they belong there, and move there once that file is
free to take them. They use only the client's public request() and stream(), and its socket.

The shell is the one exchange that goes both ways at once: stdin goes up as the request's
chunked body, from a thread, while the answer's NDJSON lines come down (see
lbsolo.api.addons.ShellExchange for what they say).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from lbsolo.cli.client import Client
from lbsolo.cli.client_wire import Response, connect
from lbsolo.errors import APIError, DaemonUnavailable, LbsoloError


def _path(name: str, *rest: str) -> str:
    return "/api/addons/" + "/".join(urllib.parse.quote(p, safe="") for p in (name, *rest))


def expose(c: Client, name: str, address: str, port: int | None, public: bool) -> dict[str, Any]:
    body = {"address": address, "port": port, "public": public}
    return dict(c.request("POST", _path(name, "expose"), json=body, timeout=None))


def unexpose(c: Client, name: str) -> dict[str, Any]:
    return dict(c.request("POST", _path(name, "unexpose"), timeout=None))


def rotate(c: Client, name: str) -> Iterator[dict[str, Any]]:
    return c.stream("POST", _path(name, "credentials", "rotate"))


def promote(c: Client, name: str, app: str) -> Iterator[dict[str, Any]]:
    return c.stream("POST", _path(name, "promote"), json={"app": app})


def upgrade(c: Client, name: str, version: str, via_dump: bool, new_name: str | None) -> Iterator[dict[str, Any]]:
    return c.stream("POST", _path(name, "upgrade"), json={"version": version, "via_dump": via_dump, "name": new_name})


def shell(c: Client, name: str, *, tty: bool) -> int:
    """One request both ways: stdin goes up chunked from a thread while the answer's lines come down."""
    params: dict[str, Any] = {"tty": "true" if tty else "false"}
    if tty:
        size = os.get_terminal_size()
        params.update(rows=size.lines, cols=size.columns)
    target = _path(name, "shell") + "?" + urllib.parse.urlencode(params)
    parts = urllib.parse.urlsplit(c.url)
    try:
        sock = connect(unix_path=c.socket, host=parts.hostname or "", port=parts.port or 80, timeout=None)
    except OSError as e:
        raise DaemonUnavailable(f"cannot reach the lbsolo daemon at {c.url}: is `lbsolo up` running? ({e})") from e
    lines = [f"POST {target} HTTP/1.1", f"Host: {'localhost' if c.socket else parts.netloc}", "Connection: close",
             "Transfer-Encoding: chunked", "Content-Type: application/octet-stream"]  # fmt: skip
    if c.token:
        lines.append(f"Authorization: Bearer {c.token}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def feed() -> None:
        try:
            while data := os.read(0, 65536):
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the session ended first

    with sock, _raw_terminal(tty):
        threading.Thread(target=feed, name="shell-stdin", daemon=True).start()
        try:
            response = Response(sock)
            if response.status >= 400:
                raise _error(response.status, response.read())
            return _shell_output(response)
        except OSError as e:
            raise DaemonUnavailable(f"the shell's connection broke: {e}") from e


def _shell_output(response: Response) -> int:
    code = 1
    while line := response.readline():
        event = json.loads(line)
        if "out" in event or "err" in event:
            stream = sys.stdout.buffer if "out" in event else sys.stderr.buffer
            stream.write(base64.b64decode(event.get("out") or event.get("err") or ""))
            stream.flush()
        elif "error" in event:
            raise LbsoloError(str(event["error"]))
        elif "exit" in event:
            code = 1 if event["exit"] is None else int(event["exit"])
    return code


def _error(status: int, raw: bytes) -> APIError:
    try:
        e = json.loads(raw)["error"]
        return APIError(str(e["message"]), str(e["code"]), status)
    except (ValueError, KeyError, TypeError):
        return APIError(f"HTTP {status}: {raw[:200].decode(errors='replace')}", "http", status)


@contextlib.contextmanager
def _raw_terminal(tty: bool) -> Iterator[None]:
    """The local terminal passes every key through (the remote one echoes and edits), then is put back."""
    if not tty:
        yield
        return
    import termios
    import tty as ttymod

    saved = termios.tcgetattr(0)
    ttymod.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
