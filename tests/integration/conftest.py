"""Fixtures for the integration suite: a real Docker engine and a real `lbsolo up` subprocess.

Everything the suite creates carries lbsolo's labels with the test daemon's own instance id,
and is removed afterwards. Outside CI the suite skips when no engine answers; in CI it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import httpx
import pytest

from lbsolo.config import Settings
from lbsolo.daemon import instance_id

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def docker_client(in_ci: bool) -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as e:
        if in_ci:
            pytest.fail(f"CI needs a Docker engine and none answers: {e} (run scripts/test-env)")
        pytest.skip(f"no Docker engine reachable: {e}")
    try:
        client.images.get("python:3.12-slim")
    except docker.errors.ImageNotFound:
        pytest.fail("image python:3.12-slim is missing: run scripts/test-env to seed it")
    yield client
    client.close()


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@dataclass
class Daemon:
    home: Path
    api_port: int = field(default_factory=free_port)
    proxy_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # How lbsolo is run: this Python's package by default, or a built file (tests/integration/test_binary.py).
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "lbsolo"])

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LBSOLO_")}
        env.update(
            LBSOLO_HOME=str(self.home),
            LBSOLO_API_PORT=str(self.api_port),
            LBSOLO_PROXY_PORT=str(self.proxy_port),
            LBSOLO_DNS_PORT=str(self.dns_port),
            LBSOLO_RECONCILE_INTERVAL="1",
            LBSOLO_STOP_TIMEOUT="2",
            LBSOLO_DEPLOY_TIMEOUT="30",
            LBSOLO_WEBHOOK_ALLOW_PRIVATE="1",  # the webhook receivers of the tests are on loopback
            LBSOLO_GIT_ALLOW_LOCAL="1",  # tests deploy --git from local repositories
            COLUMNS="200",
        )
        env.update(self.extra_env)
        return env

    @property
    def instance(self) -> str:
        return instance_id(Settings.load(home=self.home))

    @property
    def token(self) -> str:
        return (self.home / "token").read_text().strip()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, timeout: float = 20.0) -> str:
        self.log_path = self.home.parent / f"daemon-{time.monotonic_ns()}.log"
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*self.command, "up"], env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early:\n{self.log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if (
                    httpx.get(f"{self.api}/healthz", timeout=1).status_code == 200
                    and (self.home / "daemon.json").exists()
                ):
                    return self.log_path.read_text()
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready in {timeout}s:\n{self.log_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def cli_argv(self, *args: str) -> list[str]:
        return [*self.command, *args]

    def cli_background(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.command, *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )

    def get(self, app: str, path: str = "/", **kw) -> httpx.Response:
        return httpx.get(
            f"http://127.0.0.1:{self.proxy_port}{path}",
            headers={"Host": f"{app}.lbsolo.localhost:{self.proxy_port}", **kw.pop("headers", {})},
            timeout=kw.pop("timeout", 10),
            **kw,
        )

    def api_get(self, path: str, token: str | None = "") -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token if token == '' else token}"} if token is not None else {}
        return httpx.get(f"{self.api}{path}", headers=headers, timeout=10)

    def runtime(self) -> dict:
        return json.loads((self.home / "daemon.json").read_text())


def remove_instance(client: docker.DockerClient, instance: str) -> None:
    filters = {"label": [f"lbsolo.instance={instance}"]}
    for c in client.containers.list(all=True, filters=filters):
        with contextlib.suppress(docker.errors.APIError):
            c.remove(force=True)
    for image in client.images.list(filters=filters):
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(image.id, force=True)
    for network in client.networks.list(filters=filters):
        with contextlib.suppress(docker.errors.APIError):
            network.remove()
    for volume in client.volumes.list(filters=filters):
        with contextlib.suppress(docker.errors.APIError):
            volume.remove(force=True)


@contextlib.contextmanager
def running_daemon(docker_client, home: Path, extra_env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """`lbsolo up` with its own home and ports; everything it created is removed afterwards."""
    d = Daemon(home=home, extra_env=dict(extra_env or {}))
    d.start()
    try:
        yield d
    finally:
        d.stop()
        remove_instance(docker_client, d.instance)


@pytest.fixture(scope="module")
def daemon(docker_client, tmp_path_factory) -> Iterator[Daemon]:
    with running_daemon(docker_client, tmp_path_factory.mktemp("lbsolo") / "home") as d:
        yield d


@contextlib.contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """A plain HTTP server on a loopback port, in a thread; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def https_get(daemon: Daemon, port: int, host: str, path: str = "/") -> bytes:
    """GET over HTTPS from the proxy's listener, trusting only the daemon's local CA: the raw answer."""
    context = ssl.create_default_context(cafile=str(daemon.home / "tls" / "ca.pem"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data


@dataclass
class WebhookReceiver:
    url: str
    received: list[tuple[dict[str, str], bytes]]  # headers and body of each POST, in order


@contextlib.contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver on loopback: answers each POST with 204 and records it."""
    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

    with loopback_server(Handler) as port:
        yield WebhookReceiver(f"http://127.0.0.1:{port}/hook", received)


@contextlib.contextmanager
def host_service() -> Iterator[int]:
    """A service on this machine that lbsolo does not run (static routes point at such),
    answering GET with its path and the Host it saw."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            body = f"static service: {self.path} for {self.headers['Host']}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback_server(Handler) as port:
        yield port
