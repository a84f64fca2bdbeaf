"""The Docker-local backend: lbsolo.engine's Backend over the Docker engine on this machine.

The only module that imports docker (and requests, the SDK's transport). Everything here is
blocking (the Docker SDK is); callers in the event loop go through asyncio.to_thread. No docker
SDK object leaves this module: callers get Replica records, image ids and the typed dicts of
lbsolo.engine, and docker errors come out as lbsolo's EngineError tree. Replicas are reached at
their address on their app's network (the host routes to its bridges): no published port, so no
userland proxy between lbsolo's proxy and the app, and its own pacing of new connections holds.
With `publish` (a host that cannot route to its bridges: rootless Docker), a web port is published
on 127.0.0.1 at a free port instead. It makes no decisions.

This module makes the calls; what the answers mean is read beside it, without docker:
engine_docker_records (container, image, stats and event documents → lbsolo's records) and
engine_docker_streams (log lines and frames, build and push output, logs followed on the loop).
Sections below: images, networks, volumes, replicas, one-off jobs and exec, logs and events.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO, Any

import docker
import docker.errors
import docker.types
import docker.utils
import requests.exceptions

from lbsolo.engine import EngineEvent, ImageRecord, ReplicaStats, free_subnet, parse_memory
from lbsolo.engine_docker_records import (
    LOOPBACK,
    CpuBaselines,
    container_event,
    inspected_replica,
    listed_image,
    listed_replica,
    stats_numbers,
)
from lbsolo.engine_docker_streams import (
    build_output,
    docker_socket,
    follow_socket_logs,
    push_output,
    split_frames,
    text_lines,
)
from lbsolo.errors import BuildFailed, EngineError, EngineUnavailable
from lbsolo.models import (
    LABEL_APP,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_PORT,
    LABEL_PROCESS,
    LABEL_RELEASE,
    ONE_OFF,
    Replica,
)

__all__ = [  # with the readers of the engine's answers that tests use from here
    "LOOPBACK", "DockerBackend", "docker_socket", "inspected_replica", "listed_replica", "split_frames",
    "stats_numbers",
]  # fmt: skip

log = logging.getLogger("lbsolo.engine")

_lines = text_lines  # the name tests/unit/test_backend.py imports


@contextlib.contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.NotFound as e:
        raise EngineError(f"{what}: not found ({e.explanation or e})") from e
    except docker.errors.APIError as e:
        raise EngineError(f"{what}: {e.explanation or e}") from e
    except requests.exceptions.ReadTimeout as e:
        raise EngineError(f"{what}: the engine did not answer in time ({e})") from e
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as e:
        raise EngineUnavailable(f"{what}: the Docker engine is not reachable ({e})") from e


def _until_timeout(stream: Iterator[dict[str, Any]], app: str, timeout: float) -> Iterator[dict[str, Any]]:
    """The build's output stream; a silent step longer than the timeout ends the build."""
    try:
        yield from stream
    except requests.exceptions.ConnectionError as e:
        if "timed out" in str(e).lower() or isinstance(e.__context__, TimeoutError):
            raise BuildFailed(f"build of {app} timed out after {timeout:.0f}s (LBSOLO_BUILD_TIMEOUT)") from e
        raise
    except requests.exceptions.ReadTimeout as e:
        raise BuildFailed(f"build of {app} timed out after {timeout:.0f}s (LBSOLO_BUILD_TIMEOUT)") from e


class DockerBackend:
    """Blocking operations on the Docker engine, scoped to one lbsolo instance's labels.

    One exception: `follow_logs_async`, which reads a replica's output on the event loop (no
    thread per followed replica).
    """

    def __init__(
        self,
        instance: str,
        client: docker.DockerClient | None = None,
        *,
        network_pool: str = "10.213.0.0/16",
        network_prefix: int = 25,
        publish: bool = False,
    ) -> None:
        self.instance = instance
        self.publish = publish
        self._client = client
        self.network_pool, self.network_prefix = network_pool, network_prefix
        self._network_lock = threading.Lock()
        self._api_timeout = 120
        self._cpu_before = CpuBaselines()  # each replica's previous CPU counters (one-shot stats)

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            with _engine_errors("connect"):
                self._client = docker.from_env(timeout=self._api_timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def ping(self) -> str:
        with _engine_errors("ping"):
            return str(self.client.version().get("Version", "?"))

    def info(self) -> dict[str, Any]:
        """The engine's own description (root dir, cgroup version, which limits it enforces)."""
        with _engine_errors("info"):
            return dict(self.client.info())

    def base_labels(self, app: str) -> dict[str, str]:
        return {LABEL_MANAGED: "true", LABEL_INSTANCE: self.instance, LABEL_APP: app}

    # ---- images: builds, tags, pushes, retention

    def build(
        self,
        context: IO[bytes],
        *,
        app: str,
        tag: str,
        memory: str,
        timeout: float,
        on_line: Callable[[str], None],
        build_args: dict[str, str] | None = None,
    ) -> str:
        """Build a tar context with its Dockerfile; stream output to on_line; return image id.

        The Dockerfile must already carry lbsolo's labels (see build.label_dockerfile).
        """
        limits = {"memory": parse_memory(memory), "memswap": -1}
        with _engine_errors(f"build of {app}"):
            stream = self.client.api.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                rm=True,
                forcerm=True,
                decode=True,
                container_limits=limits,
                buildargs=build_args or None,
                timeout=int(timeout),
            )
            image_id = build_output(_until_timeout(stream, app, timeout), app=app, timeout=timeout, on_line=on_line)
        if not image_id:
            with _engine_errors(f"inspect image {tag}"):
                image_id = str(self.client.images.get(tag).id)
        return image_id

    def tag_image(self, image: str, repository: str, tag: str) -> None:
        with _engine_errors(f"tag {image}"):
            self.client.api.tag(image, repository, tag)

    def push_image(self, repository: str, tag: str, on_line: Callable[[str], None]) -> None:
        with _engine_errors(f"push {repository}:{tag}"):
            stream = self.client.api.push(repository, tag=tag, stream=True, decode=True)
            push_output(stream, f"{repository}:{tag}", on_line)

    def image_exists(self, image: str) -> bool:
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.DockerException as e:
            raise EngineError(f"inspect image {image}: {e}") from e
        return True

    def app_images(self, app: str | None = None) -> list[ImageRecord]:
        labels = [f"{LABEL_INSTANCE}={self.instance}"] + ([f"{LABEL_APP}={app}"] if app else [])
        with _engine_errors("list images"):
            # The list's own fields are enough: one call, where docker-py's full listing inspects
            # each image (a second or more with a few hundred apps' images).
            images = self.client.api.images(filters={"label": labels})
        return [listed_image(i) for i in images]

    def remove_image(self, image_id: str) -> bool:
        try:
            self.client.images.remove(image_id, force=True, noprune=False)
        except docker.errors.ImageNotFound:
            return True
        except docker.errors.APIError as e:
            log.warning("could not remove image %s: %s", image_id[:19], e.explanation or e)
            return False
        return True

    def prune_build_leftovers(self) -> int:
        """Dangling images from this instance's builds (intermediate layers); returns bytes freed."""
        with _engine_errors("prune images"):
            out = self.client.images.prune(filters={"dangling": True, "label": f"{LABEL_INSTANCE}={self.instance}"})
        return int(out.get("SpaceReclaimed") or 0)

    def remove_app_images(self, app: str) -> list[str]:
        removed = []
        filters = {"label": [f"{LABEL_INSTANCE}={self.instance}", f"{LABEL_APP}={app}"]}
        with _engine_errors(f"list images of {app}"):
            images = self.client.images.list(filters=filters)
        for image in images:
            try:
                self.client.images.remove(image.id, force=True, noprune=False)
                removed.append(str(image.id))
            except docker.errors.APIError as e:
                log.warning("could not remove image %s: %s", image.id, e)
        return removed

    # ---- networks (the one place networks are made and removed)

    def ensure_network(self, name: str) -> None:
        """A user-defined bridge network on a subnet of the pool that no engine network uses.

        Docker's default address pools hold about 30 networks; with one per app they would run
        out, so the subnet is picked here. The lock keeps two apps' first deploys from picking
        the same one.
        """
        with self._network_lock, _engine_errors(f"network {name}"):
            for attempt in range(5):
                listed = self.client.api.networks()
                if any(net.get("Name") == name for net in listed):  # the engine's name filter is a substring match
                    return
                taken = [
                    cfg.get("Subnet", "") for net in listed for cfg in ((net.get("IPAM") or {}).get("Config") or [])
                ]
                try:
                    subnet = free_subnet(self.network_pool, self.network_prefix, taken)
                except (LookupError, ValueError) as e:
                    raise EngineError(f"network {name}: {e}") from None
                try:
                    self.client.api.create_network(
                        name,
                        driver="bridge",
                        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)]),
                        labels={LABEL_MANAGED: "true", LABEL_INSTANCE: self.instance},
                        check_duplicate=True,
                    )
                    return
                except docker.errors.APIError as e:
                    # Another process (a second lbsolo instance) took the subnet or the name
                    # meanwhile: look again.
                    if attempt == 4 or not ("overlap" in str(e) or "already exists" in str(e)):
                        raise

    def remove_network(self, name: str) -> None:
        """Remove this instance's network if nothing is attached to it any more."""
        try:
            for network in self.client.api.networks(names=[name]):
                if network.get("Name") == name and (network.get("Labels") or {}).get(LABEL_INSTANCE) == self.instance:
                    self.client.api.remove_network(network["Id"])
        except docker.errors.APIError as e:
            log.info("network %s kept: %s", name, e.explanation or e)
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as e:
            raise EngineUnavailable(f"remove network {name}: {e}") from e

    # ---- volumes

    def ensure_volume(self, app: str, name: str) -> str:
        """A named volume of app (created once, kept across releases); returns the engine's name."""
        full = f"lbsolo-{self.instance}-{app}-{name}"
        with _engine_errors(f"volume {name}"):
            try:
                self.client.volumes.get(full)
            except docker.errors.NotFound:
                self.client.volumes.create(full, labels=self.base_labels(app))
        return full

    def remove_app_volumes(self, app: str) -> int:
        filters = {"label": [f"{LABEL_INSTANCE}={self.instance}", f"{LABEL_APP}={app}"]}
        removed = 0
        with _engine_errors(f"volumes of {app}"):
            for volume in self.client.volumes.list(filters=filters):
                volume.remove(force=True)
                removed += 1
        return removed

    # ---- replicas

    def run(
        self,
        *,
        app: str,
        release: int,
        process: str,
        image: str,
        name: str,
        env: dict[str, str],
        port: int | None,
        command: str | None = None,
        network: str | None = None,
        memory: str | None = None,
        cpus: float | None = None,
        volumes: dict[str, str] | None = None,
    ) -> Replica:
        """Start a replica; a web port is reached on its network, or published on the loopback only."""
        labels = {**self.base_labels(app), LABEL_RELEASE: str(release), LABEL_PROCESS: process}
        kwargs: dict[str, Any] = {}
        if port is not None:
            labels[LABEL_PORT] = str(port)
            if self.publish:
                kwargs["ports"] = {f"{port}/tcp": (LOOPBACK, None)}
        if command:
            kwargs["entrypoint"] = ["/bin/sh", "-c"]
            kwargs["command"] = [command]
        if memory:
            kwargs["mem_limit"] = parse_memory(memory)
        if cpus:
            kwargs["nano_cpus"] = int(cpus * 1e9)
        if volumes:
            kwargs["volumes"] = {vol: {"bind": path, "mode": "rw"} for vol, path in volumes.items()}
        if network:
            # Other apps reach this one as `<app>` (web) and `<process>.<app>`.
            aliases = [f"{process}.{app}"] + ([app] if process == "web" else [])
            kwargs["network"] = network
            kwargs["networking_config"] = {network: self.client.api.create_endpoint_config(aliases=aliases)}
        with _engine_errors(f"start {name}"):
            container = self.client.containers.create(
                image,
                name=name,
                detach=True,
                environment=env,
                labels=labels,
                hostname=name.removeprefix("lbsolo-")[:63],
                init=True,
                **kwargs,
            )
            container.start()
            container.reload()
        return inspected_replica(container.attrs or {})

    def list_replicas(self, app: str | None = None) -> list[Replica]:
        # Build steps run in containers of the image being built, which carries lbsolo's labels
        # from right after FROM on: only the containers lbsolo started have a process label.
        labels = [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.instance}", LABEL_PROCESS]
        if app is not None:
            labels.append(f"{LABEL_APP}={app}")
        with _engine_errors("list containers"):
            # The list's own fields are enough: one call, where docker-py's full listing inspects
            # each container and fails whole when one of them is removed meanwhile.
            listed = self.client.api.containers(all=True, filters={"label": labels})
        return [listed_replica(item) for item in listed]

    def start(self, replica_id: str) -> Replica:
        with _engine_errors(f"start {replica_id[:12]}"):
            container = self.client.containers.get(replica_id)
            container.start()
            container.reload()
        return inspected_replica(container.attrs or {})

    def stop_and_remove(self, replica_id: str, timeout: int) -> None:
        try:
            container = self.client.containers.get(replica_id)
            if container.status in ("running", "restarting", "paused"):
                container.stop(timeout=timeout)
            container.remove(force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as e:
            if e.status_code in (404, 409):  # gone, or removal already in progress
                return
            raise EngineError(f"stop {replica_id[:12]}: {e.explanation or e}") from e
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as e:
            raise EngineUnavailable(f"stop {replica_id[:12]}: {e}") from e

    def stats(self, replica_id: str) -> ReplicaStats:
        """One reading of the replica's counters; CPU is measured since this replica's previous reading.

        Engines of API 1.41+ answer at once (one-shot); older ones take a second reading a second
        later. With a few hundred replicas sampled every few seconds, that second kept the
        engine busy all the time, and every deploy waited behind it.
        """
        one_shot = docker.utils.version_gte(self.client.api.api_version, "1.41")
        with _engine_errors(f"stats of {replica_id[:12]}"):
            try:
                raw = dict(self.client.api.stats(replica_id, stream=False, **({"one_shot": True} if one_shot else {})))
            except ValueError as e:  # the container went away mid-answer: a cut-off JSON document
                raise EngineError(f"stats of {replica_id[:12]}: incomplete answer ({e})") from e
        return self._cpu_before.numbers(replica_id, raw) if one_shot else stats_numbers(raw)

    # ---- one-off jobs and exec

    def run_once(
        self,
        *,
        app: str,
        image: str,
        command: str,
        env: dict[str, str],
        network: str | None,
        on_output: Callable[[str], None],
        timeout: float,
        volumes: dict[str, str] | None = None,
        name: str | None = None,
    ) -> int:
        mounts = {vol: {"bind": path, "mode": "rw"} for vol, path in (volumes or {}).items()}
        with _engine_errors(f"run in {app}"):
            container = self.client.containers.run(
                image,
                entrypoint=["/bin/sh", "-c"],
                command=[command],
                detach=True,
                environment=env,
                labels={**self.base_labels(app), LABEL_PROCESS: ONE_OFF},
                network=network,
                init=True,
                volumes=mounts or None,
                name=name,
            )
            try:
                for line in text_lines(container.logs(stream=True, follow=True)):
                    on_output(line)
                result = container.wait(timeout=timeout)
                return int(result.get("StatusCode", 1))
            finally:
                with contextlib.suppress(docker.errors.APIError):
                    container.remove(force=True)

    def exec(self, replica_id: str, command: str, *, on_output: Callable[[str], None], timeout: float) -> int:
        """The timeout is checked as lines arrive: a silent command ends at the client's API timeout.

        The engine cannot stop an exec'd process: one cut off keeps running until the replica stops.
        """
        with _engine_errors(f"exec in {replica_id[:12]}"):
            created = self.client.api.exec_create(replica_id, ["/bin/sh", "-c", command], stdout=True, stderr=True)
            started = time.monotonic()
            for line in text_lines(self.client.api.exec_start(created["Id"], stream=True)):
                on_output(line)
                if time.monotonic() - started > timeout:
                    raise EngineError(f"exec in {replica_id[:12]}: no end after {timeout:.0f}s")
            code = self.client.api.exec_inspect(created["Id"]).get("ExitCode")
        return 1 if code is None else int(code)

    # ---- logs and events

    def logs(self, replica_id: str, tail: int = 200) -> str:
        with _engine_errors(f"logs of {replica_id[:12]}"):
            raw = self.client.containers.get(replica_id).logs(tail=tail, timestamps=False)
        return raw.decode("utf-8", "replace")

    def follow_logs(self, replica_id: str, since: float | None = None) -> Iterator[str]:
        with _engine_errors(f"logs of {replica_id[:12]}"):
            container = self.client.containers.get(replica_id)
            stream = container.logs(stream=True, follow=True, since=since or None)
        try:
            yield from text_lines(stream)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return

    async def follow_logs_async(self, replica_id: str, /, since: float | None = None) -> AsyncIterator[str]:
        """A replica's output lines as they come, read over the engine's unix socket on the loop.

        Ends when the container stops (the engine closes the stream). EngineError if the engine
        is not on a unix socket (the caller follows in a thread then) or refuses.
        """
        path = docker_socket()
        if path is None:
            raise EngineError("the engine is not on a unix socket: logs are followed in threads")
        async for line in follow_socket_logs(path, replica_id, since):
            yield line

    def events(self, since: float | None = None) -> Iterator[EngineEvent]:
        filters = {"type": "container", "label": [f"{LABEL_INSTANCE}={self.instance}", LABEL_PROCESS]}
        with _engine_errors("events"):
            stream = self.client.events(decode=True, filters=filters, since=since)
        try:
            for event in stream:
                yield container_event(event)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise EngineUnavailable(f"event stream ended: {e}") from e

    _stats_numbers = staticmethod(stats_numbers)
