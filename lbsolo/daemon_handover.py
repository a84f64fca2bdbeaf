"""A daemon restart that loses no request: the listening sockets go from the old process to the new.

`lbsolo restart` (or `systemctl reload`, or SIGUSR2) asks the running daemon to hand over. The old
process stops everything that writes the state (the reconcile loop, the other background tasks;
a deploy under way is waited for; the API refuses changes meanwhile), then starts its successor
(the same command line: after an upgrade, the new code) with its listening sockets — proxy
HTTP/HTTPS, DNS UDP/TCP, API TCP and unix — passed as inherited file descriptors, named in
LBSOLO_LISTEN_FDS. The successor serves on them as they are (no bind: connections waiting in
the accept queue and datagrams in the UDP queue are not lost, which SO_REUSEPORT would drop),
opens and migrates the state, adopts the containers, and says "ready" on a pipe. Only then does
the old process close its copies, answer what it had accepted, and exit; until then both accept.
If the successor does not become ready, the old one takes up its tasks again and goes on.

Under systemd (Type=notify, NotifyAccess=all) the successor tells it its pid (MAINPID) before
the old one exits, so the service stays up across the change of main process.

This module owns the file descriptors and the handshake; the daemon decides what to stop and when.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

from lbsolo.service import this_command

log = logging.getLogger("lbsolo.daemon")

LISTEN_FDS = "LBSOLO_LISTEN_FDS"  # name=fd,name=fd: the sockets a successor inherits
READY_FD = "LBSOLO_READY_FD"  # the pipe on which a successor says it is ready


@dataclass
class Listeners:
    """The daemon's listening sockets, each bound here or inherited from the process before."""

    proxy: socket.socket
    dns_udp: socket.socket
    dns_tcp: socket.socket
    api: socket.socket
    proxy_tls: socket.socket | None = None
    api_unix: socket.socket | None = None
    inherited: bool = False

    def sockets(self) -> dict[str, socket.socket]:
        return {
            f.name: s for f in fields(self) if isinstance(s := getattr(self, f.name), socket.socket)
        }

    def close(self) -> None:
        for sock in self.sockets().values():
            sock.close()


def inherited(environ: dict[str, str] | None = None) -> dict[str, socket.socket]:
    """The sockets the process before passed (empty when it is a first start). Each is checked to
    be a listening (or datagram) socket, so a stray descriptor number fails here, not later."""
    spec = (environ if environ is not None else os.environ).get(LISTEN_FDS, "")
    out: dict[str, socket.socket] = {}
    for item in filter(None, spec.split(",")):
        name, _, number = item.partition("=")
        try:
            sock = socket.socket(fileno=int(number))
        except (ValueError, OSError) as e:
            raise RuntimeError(f"{LISTEN_FDS}: {item!r} is not an inherited socket: {e}") from e
        sock.setblocking(False)
        out[name] = sock
    return out


def bind_tcp(host: str, port: int, backlog: int = 4096) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def bind_dns(host: str, port: int, attempts: int = 5) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP on the same port (with port 0: the first port free for both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for attempt in range(attempts):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((host, port))
        chosen = udp.getsockname()[1]
        try:
            tcp = bind_tcp(host, chosen, backlog=128)
        except OSError:
            udp.close()
            if port != 0 or attempt == attempts - 1:
                raise
            continue
        udp.setblocking(False)
        return udp, tcp
    raise OSError("no port free for DNS over both UDP and TCP")


def signal_ready(environ: dict[str, str] | None = None) -> None:
    """A successor tells the process before it is serving; any start tells systemd (MAINPID too,
    since the main process changes on a handover)."""
    env = environ if environ is not None else os.environ
    if number := env.get(READY_FD):
        with contextlib.suppress(OSError):
            os.write(int(number), f"ready {os.getpid()}\n".encode())
            os.close(int(number))
    notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving")


def notify(message: str) -> None:
    """sd_notify: one datagram to $NOTIFY_SOCKET when systemd started us (nothing otherwise)."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), address)


def successor_command() -> list[str]:
    """The command line that started this daemon (`up` and its flags): after an upgrade it runs
    the new code (the one-file binary or the package at the same path)."""
    return [*this_command(), *sys.argv[1:]]


@dataclass
class Successor:
    process: subprocess.Popen[bytes]
    ready_read: int

    def wait_ready(self, timeout: float) -> int | None:
        """Blocking: the successor's pid once it says it is ready; None if it exits or is too slow."""
        deadline = time.monotonic() + timeout
        said = b""
        try:
            while time.monotonic() < deadline:
                readable, _, _ = select.select([self.ready_read], [], [], 0.2)
                if readable:
                    piece = os.read(self.ready_read, 64)
                    if not piece:
                        return None  # closed without a word: it exited
                    said += piece
                    if said.endswith(b"\n") and said.startswith(b"ready "):
                        return int(said.split()[1])
                if self.process.poll() is not None:
                    return None
            return None
        finally:
            os.close(self.ready_read)

    def stop(self) -> None:
        """A successor that never became ready is ended (it holds copies of our sockets)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_successor(listeners: Listeners, home: Path, command: list[str] | None = None) -> Successor:
    """Start the next daemon with our listening sockets and a pipe to say it is ready on."""
    socks = listeners.sockets()
    ready_read, ready_write = os.pipe()
    env = {
        **os.environ,
        LISTEN_FDS: ",".join(f"{name}={sock.fileno()}" for name, sock in socks.items()),
        READY_FD: str(ready_write),
        "LBSOLO_HOME": str(home),
    }
    try:
        process = subprocess.Popen(
            command or successor_command(),
            env=env,
            pass_fds=[*(s.fileno() for s in socks.values()), ready_write],
            stdin=subprocess.DEVNULL,
            start_new_session=False,
        )
    finally:
        os.close(ready_write)
    log.info("handing over to a new daemon (pid %d)", process.pid)
    return Successor(process, ready_read)
