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
import errno
import io
import logging
import socket
import tarfile
from collections.abc import Callable, Iterable
from typing import Any

import docker.errors

from lbsolo.engine import ServiceRecord
from lbsolo.engine_docker import DockerBackend, _engine_errors
from lbsolo.engine_docker_exec import exec_in, exec_session
from lbsolo.engine_docker_service_logs import DockerServiceLog
from lbsolo.errors import EngineError
from lbsolo.models import LABEL_INSTANCE, LABEL_MANAGED

log = logging.getLogger("lbsolo.engine")

LABEL_ADDON = "lbsolo.addon"
LABEL_ADDON_KIND = "lbsolo.addon-kind"
LABEL_SCRATCH = "lbsolo.addon-scratch"  # a throw-away container (a backup's verification, a restore's helper)


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

    def service_logs(
        self, service: str, tail: int | None = 200, since: float | None = None, follow: bool = False
    ) -> DockerServiceLog:
        return DockerServiceLog(self._client.api, self.container_name(service), tail=tail, since=since, follow=follow)

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
        """The command's exit code and the tail of its stderr; stdout goes to the sink as it comes."""
        return exec_in(
            self._client.api, self.container_name(service), service, command,
            stdin=stdin, stdout_sink=stdout_sink, timeout=timeout,
        )  # fmt: skip

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

    # ---- a port on this machine, files seeded on a volume, an interactive exec (addons:expose,
    # Redis's ACL file, addons:shell)

    def host_port_state(self, address: str, port: int) -> str:
        """'free', 'in use' or 'not here' (not an address of this machine). Docker-local
        publishes ports on this machine, so a bind here answers for Docker's. SO_REUSEADDR as
        Docker's own listener sets it: only a listening socket counts as using the port."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return "in use"
                if e.errno == errno.EADDRNOTAVAIL:
                    return "not here"
                raise EngineError(f"cannot check {address}:{port}: {e}") from e
        return "free"

    def replace_service(
        self,
        service: str,
        *,
        kind: str,
        image: str,
        env: dict[str, str],
        command: list[str] | None,
        volume: tuple[str, str],
        publish: tuple[int, str, int | None] | None = None,
        files: dict[str, bytes] | None = None,
        stop_timeout: int = 30,
    ) -> tuple[ServiceRecord, dict[str, Any]]:
        """Recreate the service's container on the same volume and networks, with `publish`
        (container port, host address, host port or None for any) or no published port.

        The old container is stopped before the new one starts (two servers must never share a
        data directory) and set aside under `<name>-replaced`; if the new one cannot start (a
        port taken meanwhile), the old one is put back and started. Returns the new record and
        where the port is published ({} when it is not)."""
        name = self.container_name(service)
        api = self._client.api
        with _engine_errors(f"replace {service}"):
            old = api.inspect_container(name)
            networks = sorted(((old.get("NetworkSettings") or {}).get("Networks") or {}).keys())
            api.stop(old["Id"], timeout=stop_timeout)
            api.rename(old["Id"], f"{name}-replaced")
            new_id = ""
            try:
                new_id = self._create_service(service, kind, image, env, command, volume, networks, publish)
                self._seed_files(new_id, files or {})
                api.start(new_id)
            except BaseException:
                if new_id:
                    with contextlib.suppress(docker.errors.APIError):
                        api.remove_container(new_id, force=True)
                api.rename(old["Id"], name)
                api.start(old["Id"])
                raise
            api.remove_container(old["Id"], force=True)  # the named volume is not the container's to remove
            attrs = api.inspect_container(new_id)
        return service_record(attrs), _published(attrs, publish[0] if publish else None)

    def published_port(self, service: str, port: int) -> dict[str, Any]:
        """Where the service's `port` is published on this machine ({} if it is not)."""
        with _engine_errors(f"find {service}"):
            try:
                return _published(self._client.api.inspect_container(self.container_name(service)), port)
            except docker.errors.NotFound:
                return {}

    def recover_replaced_service(self, service: str) -> str | None:
        """After a daemon killed inside replace_service: keep the new container if it runs, else
        put the one set aside back. Says what it did (None: nothing was left)."""
        name = self.container_name(service)
        api = self._client.api
        with _engine_errors(f"recover {service}"):
            try:
                aside = api.inspect_container(f"{name}-replaced")
            except docker.errors.NotFound:
                return None
            try:
                new = api.inspect_container(name)
            except docker.errors.NotFound:
                new = None
            if new is not None and (new.get("State") or {}).get("Running"):
                api.remove_container(aside["Id"], force=True)
                return "kept its new container"
            if new is not None:
                api.remove_container(new["Id"], force=True)
            api.rename(aside["Id"], name)
            api.start(aside["Id"])
            return "put its previous container back"

    def seed_service_files(self, service: str, image: str, volume: tuple[str, str], files: dict[str, bytes]) -> None:
        """Write files onto the service's volume where they are missing, before its first start:
        through a container of the image that is created, never started, then removed."""
        if not files:
            return
        api = self._client.api
        with _engine_errors(f"seed files of {service}"):
            created = api.create_container(
                image,
                command=["true"],
                name=f"{self.container_name(service)}-seed",
                labels={**self._labels(service), LABEL_SCRATCH: "true"},
                host_config=api.create_host_config(
                    binds={volume[0]: {"bind": volume[1], "mode": "rw"}}, network_mode="none"
                ),
            )
            try:
                self._seed_files(created["Id"], files)
            finally:
                api.remove_container(created["Id"], force=True)

    def exec_service_session(
        self,
        service: str,
        command: list[str],
        *,
        stdin: Iterable[bytes],
        on_output: Callable[[int, bytes], None],
        tty: bool = False,
        size: tuple[int, int] | None = None,
        on_start: Callable[[Callable[[], None]], None] | None = None,
    ) -> int | None:
        """An interactive exec with no time limit (engine_docker_exec.exec_session)."""
        return exec_session(
            self._client.api, self.container_name(service), service, command,
            stdin=stdin, on_output=on_output, tty=tty, size=size, on_start=on_start,
        )  # fmt: skip

    def _create_service(
        self,
        service: str,
        kind: str,
        image: str,
        env: dict[str, str],
        command: list[str] | None,
        volume: tuple[str, str],
        networks: list[str],
        publish: tuple[int, str, int | None] | None,
    ) -> str:
        api = self._client.api
        first, rest = (networks[0], networks[1:]) if networks else (None, [])
        host_config = api.create_host_config(
            binds={volume[0]: {"bind": volume[1], "mode": "rw"}},
            restart_policy={"Name": "unless-stopped"},
            init=True,
            network_mode=first,
            port_bindings={publish[0]: (publish[1], publish[2])} if publish else None,
        )
        networking = (
            api.create_networking_config({first: api.create_endpoint_config(aliases=[service])}) if first else None
        )
        created = api.create_container(
            image,
            command=command,
            name=self.container_name(service),
            hostname=service,
            environment=env,
            labels=self._labels(service, kind),
            host_config=host_config,
            networking_config=networking,
            ports=[publish[0]] if publish else None,
        )
        for network in rest:
            api.connect_container_to_network(created["Id"], network, aliases=[service])
        return str(created["Id"])

    def _seed_files(self, container_id: str, files: dict[str, bytes]) -> None:
        """Put each file into the (created) container where it is missing; mode 0600."""
        api = self._client.api
        for path, data in files.items():
            directory, base = path.rsplit("/", 1)
            try:
                api.get_archive(container_id, path)
                continue  # there already: it is the service's own now
            except docker.errors.NotFound:
                pass
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                info = tarfile.TarInfo(base)
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
            api.put_archive(container_id, directory or "/", buf.getvalue())


def _published(attrs: dict[str, Any], port: int | None) -> dict[str, Any]:
    if port is None:
        return {}
    bindings = (((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp")) or []
    if not bindings:
        bindings = ((attrs.get("HostConfig") or {}).get("PortBindings") or {}).get(f"{port}/tcp") or []
    for b in bindings:
        if str(b.get("HostPort") or "").isdigit():
            return {"address": b.get("HostIp") or "0.0.0.0", "port": int(b["HostPort"])}
    return {}
