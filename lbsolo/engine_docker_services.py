"""Add-on containers on the local Docker engine: the Services part of the engine seam.

One container per add-on, named `lbsolo-<instance>-addon-<name>`, on a named volume of its own,
labelled like everything lbsolo makes (managed, instance) plus `lbsolo.addon` and its kind,
never with a process label (so the replica listing and the reconcile loop's plan never see
it). Docker restarts it if it crashes (restart policy `unless-stopped`). On each network it
joins, it answers to the add-on's name. Shares the DockerBackend's connection and its error
translation; decides nothing about add-ons (core_addons.py does).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import docker.errors

from lbsolo.engine import ServiceRecord
from lbsolo.engine_docker import DockerBackend, _engine_errors
from lbsolo.errors import EngineError
from lbsolo.models import LABEL_INSTANCE, LABEL_MANAGED

log = logging.getLogger("lbsolo.engine")

LABEL_ADDON = "lbsolo.addon"
LABEL_ADDON_KIND = "lbsolo.addon-kind"
LABEL_SCRATCH = "lbsolo.addon-scratch"  # a throw-away container (a backup's verification, a restore's helper)
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


def service_record(attrs: dict[str, Any]) -> ServiceRecord:
    state = attrs.get("State") or {}
    return {
        "id": str(attrs.get("Id", "")),
        "name": str(attrs.get("Name", "")).lstrip("/"),
        "image": str((attrs.get("Config") or {}).get("Image", "")),
        "running": bool(state.get("Running")),
        "state": str(state.get("Status", "")),
        "networks": sorted(((attrs.get("NetworkSettings") or {}).get("Networks") or {}).keys()),
    }


class DockerServices:
    """Services (see lbsolo.engine) over a DockerBackend's connection."""

    def __init__(self, backend: DockerBackend) -> None:
        self._backend = backend
        self.instance = backend.instance

    @property
    def _client(self) -> docker.DockerClient:
        return self._backend.client

    def container_name(self, service: str) -> str:
        return f"lbsolo-{self.instance}-addon-{service}"

    def _labels(self, service: str, kind: str = "") -> dict[str, str]:
        out = {LABEL_MANAGED: "true", LABEL_INSTANCE: self.instance, LABEL_ADDON: service}
        if kind:
            out[LABEL_ADDON_KIND] = kind
        return out

    def ensure_service_volume(self, service: str) -> str:
        name = f"lbsolo-{self.instance}-addon-{service}-data"
        with _engine_errors(f"volume of {service}"):
            try:
                self._client.volumes.get(name)
            except docker.errors.NotFound:
                self._client.volumes.create(name, labels=self._labels(service))
        return name

    def pull_image(self, image: str, on_line: Callable[[str], None]) -> None:
        if self._backend.image_exists(image):
            return
        repository, _, tag = image.rpartition(":")
        on_line(f"pulling {image}")
        with _engine_errors(f"pull {image}"):
            for event in self._client.api.pull(repository, tag=tag, stream=True, decode=True):
                if event.get("error"):
                    raise docker.errors.APIError(str(event["error"]))

    def run_service(
        self,
        *,
        service: str,
        kind: str,
        image: str,
        env: dict[str, str],
        command: list[str] | None,
        volume: tuple[str, str],
        networks: list[str],
    ) -> ServiceRecord:
        name = self.container_name(service)
        api = self._client.api
        first, rest = (networks[0], networks[1:]) if networks else (None, [])
        with _engine_errors(f"start {service}"):
            host_config = api.create_host_config(
                binds={volume[0]: {"bind": volume[1], "mode": "rw"}},
                restart_policy={"Name": "unless-stopped"},
                init=True,
                network_mode=first,
            )
            networking = (
                api.create_networking_config({first: api.create_endpoint_config(aliases=[service])}) if first else None
            )
            created = api.create_container(
                image,
                command=command,
                name=name,
                hostname=service,
                environment=env,
                labels=self._labels(service, kind),
                host_config=host_config,
                networking_config=networking,
            )
            for network in rest:
                api.connect_container_to_network(created["Id"], network, aliases=[service])
            api.start(created["Id"])
            return service_record(api.inspect_container(created["Id"]))

    def find_service(self, service: str) -> ServiceRecord | None:
        with _engine_errors(f"find {service}"):
            try:
                return service_record(self._client.api.inspect_container(self.container_name(service)))
            except docker.errors.NotFound:
                return None

    def start_service(self, service: str) -> ServiceRecord:
        with _engine_errors(f"start {service}"):
            self._client.api.start(self.container_name(service))
            return service_record(self._client.api.inspect_container(self.container_name(service)))

    def remove_service(self, service: str, *, volume: bool) -> None:
        with _engine_errors(f"remove {service}"):
            with contextlib.suppress(docker.errors.NotFound):
                self._client.api.remove_container(self.container_name(service), force=True, v=True)
            if volume:
                with contextlib.suppress(docker.errors.NotFound):
                    self._client.api.remove_volume(f"lbsolo-{self.instance}-addon-{service}-data", force=True)

    def connect_service(self, service: str, network: str) -> None:
        with _engine_errors(f"connect {service} to {network}"):
            try:
                self._client.api.connect_container_to_network(self.container_name(service), network, aliases=[service])
            except docker.errors.APIError as e:
                if "already exists" not in str(e):  # already on it: fine
                    raise

    def exec_service(
        self,
        service: str,
        command: list[str],
        *,
        stdin: Iterable[bytes] | None = None,
        stdout_sink: Callable[[bytes], None],
        timeout: float,
    ) -> tuple[int, str]:
        """Over the engine's hijacked connection: a thread writes stdin (then half-closes), this
        one reads the frames. The engine cannot stop an exec'd process cut off by the timeout."""
        name = self.container_name(service)
        api = self._client.api
        with _engine_errors(f"exec in {service}"):
            created = api.exec_create(name, command, stdin=stdin is not None, stdout=True, stderr=True)
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

    def stop_service(self, service: str, timeout: int = 30) -> None:
        with _engine_errors(f"stop {service}"):
            self._client.api.stop(self.container_name(service), timeout=timeout)

    def run_scratch_service(
        self,
        *,
        service: str,
        kind: str,
        image: str,
        env: dict[str, str],
        command: list[str] | None,
        volume: tuple[str, str] | None = None,
    ) -> ServiceRecord:
        api = self._client.api
        with _engine_errors(f"start {service}"):
            host_config = api.create_host_config(
                binds={volume[0]: {"bind": volume[1], "mode": "rw"}} if volume else None,
                init=True,
                network_mode="none",
            )
            created = api.create_container(
                image,
                command=command,
                name=self.container_name(service),
                hostname=service,
                environment=env,
                labels={**self._labels(service, kind), LABEL_SCRATCH: "true"},
                host_config=host_config,
            )
            api.start(created["Id"])
            return service_record(api.inspect_container(created["Id"]))

    def remove_scratch_services(self) -> int:
        filters = {"label": [f"{LABEL_INSTANCE}={self.instance}", LABEL_SCRATCH]}
        removed = 0
        with _engine_errors("remove scratch containers"):
            for c in self._client.api.containers(all=True, filters=filters):
                with contextlib.suppress(docker.errors.NotFound):
                    self._client.api.remove_container(c["Id"], force=True, v=True)
                    removed += 1
        return removed

    def disconnect_service(self, service: str, network: str) -> None:
        with _engine_errors(f"disconnect {service} from {network}"):
            try:
                self._client.api.disconnect_container_from_network(self.container_name(service), network)
            except docker.errors.APIError as e:
                log.info("%s was not on %s: %s", service, network, e.explanation or e)
