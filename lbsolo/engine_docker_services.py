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
from collections.abc import Callable
from typing import Any

import docker.errors

from lbsolo.engine import ServiceRecord
from lbsolo.engine_docker import DockerBackend, _engine_errors
from lbsolo.models import LABEL_INSTANCE, LABEL_MANAGED

log = logging.getLogger("lbsolo.engine")

LABEL_ADDON = "lbsolo.addon"
LABEL_ADDON_KIND = "lbsolo.addon-kind"


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
                self._client.api.remove_container(self.container_name(service), force=True)
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

    def disconnect_service(self, service: str, network: str) -> None:
        with _engine_errors(f"disconnect {service} from {network}"):
            try:
                self._client.api.disconnect_container_from_network(self.container_name(service), network)
            except docker.errors.APIError as e:
                log.info("%s was not on %s: %s", service, network, e.explanation or e)
