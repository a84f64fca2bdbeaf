"""A private Docker engine in a network namespace of its own, for tests that stop and start the engine.

The shared engine serves every other test: stopping it would stop theirs. The private one has
its own data root, exec root (and so its own containerd), pid file, unix socket and bridges,
and runs in a network namespace, where the lbsolo daemon under test runs too: replicas publish
on that namespace's 127.0.0.1, and the daemon's health checks and proxy must see that loopback.
The test reaches the namespace's loopback through `Netns.call`, which runs a function on a
thread that entered the namespace (a process it starts there is in the namespace too). The
daemon's unix socket is a file, so the CLI works from outside as usual.

Needs root. Everything is removed afterwards, on failure too: the engine, its mounts and
directories, the namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors

from .conftest import Daemon

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


class Netns:
    """A network namespace (`ip netns add`) with loopback up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = Path("/run/netns") / name
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self._pool: ThreadPoolExecutor | None = None
        try:
            subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{name}", initializer=self._enter)
            self.call(lambda: None)  # enter now: a failure shows here, not in the first request
        except BaseException:
            self.delete()
            raise

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:  # this thread only: the test process stays outside
                raise OSError(ctypes.get_errno(), f"setns {self.path}")
        finally:
            os.close(fd)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) inside the namespace: its sockets and the processes it starts are there."""
        assert self._pool is not None
        return self._pool.submit(fn, *args, **kwargs).result()

    def delete(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


class PrivateEngine:
    """dockerd with its own directories and socket under `root`, started inside `netns`."""

    def __init__(self, root: Path, netns: Netns) -> None:
        self.root = root
        self.netns = netns
        self.host = f"unix://{root}/docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def argv(self) -> list[str]:
        r = self.root
        return [
            "dockerd",
            f"--data-root={r}/data",
            f"--exec-root={r}/exec",
            f"--pidfile={r}/docker.pid",
            f"--host={self.host}",
            # No default bridge and no iptables rules: lbsolo makes its own network (a bridge
            # inside the namespace), and ports are published by docker-proxy on the namespace's loopback.
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--cgroup-parent=lbsolo-test-engine",
            "--shutdown-timeout=2",
        ]

    def client(self, timeout: int = 60) -> contextlib.closing[docker.DockerClient]:
        """A client of this engine, closed at the end of the with-block."""
        return contextlib.closing(docker.DockerClient(base_url=self.host, timeout=timeout))

    def answers(self) -> bool:
        """Whether the engine answers its API's ping (a bare socket: the SDK leaks one per refused connect)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(str(self.root / "docker.sock"))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return s.recv(64).split(b" ", 2)[1:2] == [b"200"]
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> None:
        """Start dockerd; return once it answers."""
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        log = (self.root / f"dockerd-{self.starts}.log").open("wb")
        self.proc = self.netns.call(subprocess.Popen, self.argv(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the private dockerd did not start:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop dockerd as a service manager would (SIGTERM); it stops its containers first."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the private dockerd did not stop in {timeout}s:\n{self.log()}") from None

    def load(self, images: list[str]) -> None:
        """Copy images from the shared engine (`docker save | docker load`): no registry needed."""
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        assert save.stdout is not None
        loaded = subprocess.run(
            ["docker", "load", "-q"], stdin=save.stdout, env={**os.environ, "DOCKER_HOST": self.host},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        save.stdout.close()
        assert save.wait() == 0 and loaded.returncode == 0, loaded.stderr

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.root.glob("dockerd-*.log")))

    def remove(self) -> None:
        """Stop dockerd if it runs (killing it if it must), unmount what it left mounted, remove its directories."""
        with contextlib.suppress(AssertionError):
            self.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for mount in sorted(_mounts_under(self.root), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix) or p == str(root)]


@contextlib.contextmanager
def private_engine(images: list[str]) -> Iterator[PrivateEngine]:
    """A namespace and a private engine in it, with `images` loaded; all gone afterwards."""
    root = Path(tempfile.mkdtemp(prefix="lbe-", dir="/tmp"))  # short: unix socket paths have 108 bytes
    netns = Netns(f"lbsolo-test-{os.getpid()}")
    engine = PrivateEngine(root, netns)
    try:
        engine.start()
        engine.load(images)
        yield engine
    finally:
        engine.remove()
        netns.delete()


@dataclass
class NetnsDaemon(Daemon):
    """`lbsolo up` inside the private engine's namespace, using that engine.

    Its ports are fixed, below the range docker-proxy picks host ports from: the namespace is
    empty, and a port free outside it could be one docker-proxy takes inside.
    """

    engine: PrivateEngine | None = None
    api_port: int = 7780
    proxy_port: int = 8080
    dns_port: int = 5354
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        assert self.engine is not None
        return {**super().env, "DOCKER_HOST": self.engine.host}

    def start(self, timeout: float = 20.0) -> str:
        assert self.engine is not None
        return self.engine.netns.call(super().start, timeout)

    def get(self, app: str, path: str = "/", **kw: Any) -> Any:
        assert self.engine is not None
        return self.engine.netns.call(super().get, app, path, **kw)

    def api_get(self, path: str, token: str | None = "") -> Any:
        assert self.engine is not None
        return self.engine.netns.call(super().api_get, path, token)

    def in_netns(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        assert self.engine is not None
        return self.engine.netns.call(fn, *args, **kwargs)
