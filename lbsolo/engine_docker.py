"""The Docker-local backend: lbsolo.engine's Backend over the Docker engine on this machine.

The only module that imports docker (and requests, the SDK's transport). Everything here is
blocking (the Docker SDK is); callers in the event loop go through asyncio.to_thread. No docker
SDK object leaves this module: callers get Replica records, image ids and the typed dicts of
lbsolo.engine, and docker errors come out as lbsolo's EngineError tree. Replicas are reached on
the loopback: a web port is published on 127.0.0.1 at a free port. It makes no decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import quote

import docker
import docker.errors
import requests.exceptions

from lbsolo.engine import EngineEvent, ImageRecord, ReplicaStats, parse_memory
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

log = logging.getLogger("lbsolo.engine")

# Where this backend publishes replicas' ports, and so where they are reached.
LOOPBACK = "127.0.0.1"


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


def listed_replica(item: Mapping[str, Any]) -> Replica:
    """A replica from one entry of the engine's container list (`GET /containers/json`)."""
    labels = item.get("Labels") or {}
    host_port = next(
        (
            int(p["PublicPort"])
            for p in item.get("Ports") or []
            if p.get("PublicPort") and p.get("IP") in (LOOPBACK, "", None)
        ),
        None,
    )
    names = item.get("Names") or []
    state = str(item.get("State", ""))
    release = labels.get(LABEL_RELEASE)
    return Replica(
        id=str(item["Id"]),
        name=str(names[0]).lstrip("/") if names else str(item["Id"])[:12],
        app=labels.get(LABEL_APP, ""),
        release=int(release) if release and release.isdigit() else None,
        process=labels.get(LABEL_PROCESS, "web"),
        running=state == "running",
        status=state,
        host=LOOPBACK,
        host_port=host_port,
        # The list has no start time: the creation time, in the form StartedAt has, sorts as well.
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(item.get("Created") or 0))),
    )


def inspected_replica(attrs: Mapping[str, Any]) -> Replica:
    """A replica from the engine's inspection of one container (`GET /containers/{id}/json`)."""
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    state = attrs.get("State") or {}
    host_port = next(
        (
            int(b["HostPort"])
            for bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).values()
            for b in bindings or []
            if b.get("HostIp") in (LOOPBACK, "") and b.get("HostPort")
        ),
        None,
    )
    release = labels.get(LABEL_RELEASE)
    status = str(state.get("Status", ""))
    return Replica(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name") or "").lstrip("/") or str(attrs["Id"])[:12],
        app=labels.get(LABEL_APP, ""),
        release=int(release) if release and release.isdigit() else None,
        process=labels.get(LABEL_PROCESS, "web"),
        running=status == "running",
        status=status,
        host=LOOPBACK,
        host_port=host_port,
        started_at=str(state.get("StartedAt", "")),
    )


def stats_numbers(raw: Mapping[str, Any]) -> ReplicaStats:
    """Plain numbers from a `docker stats` document (cgroup v1 or v2), the way the docker CLI counts."""
    cpu = raw.get("cpu_stats") or {}
    pre = raw.get("precpu_stats") or {}
    cpu_delta = ((cpu.get("cpu_usage") or {}).get("total_usage") or 0) - (
        (pre.get("cpu_usage") or {}).get("total_usage") or 0
    )
    system_delta = (cpu.get("system_cpu_usage") or 0) - (pre.get("system_cpu_usage") or 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    cpu_percent = cpu_delta / system_delta * online * 100.0 if cpu_delta > 0 and system_delta > 0 else 0.0
    memory = raw.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    # Page cache the kernel can drop is not the app's memory: v1 reports it as total_inactive_file.
    cache = detail.get("inactive_file", detail.get("total_inactive_file", 0)) or 0
    usage = memory.get("usage") or 0
    mem_bytes = usage - cache if cache < usage else usage
    rx = tx = 0
    for net in (raw.get("networks") or {}).values():
        rx += net.get("rx_bytes") or 0
        tx += net.get("tx_bytes") or 0
    return {
        "cpu_percent": round(float(cpu_percent), 3),
        "mem_bytes": float(mem_bytes),
        "mem_limit": float(memory.get("limit") or 0),
        "net_rx": float(rx),
        "net_tx": float(tx),
    }


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Text lines of a byte stream cut anywhere (the last one may lack its newline)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")
    if buf:
        yield buf.decode("utf-8", "replace")


def docker_socket() -> str | None:
    """The unix socket the engine answers on (DOCKER_HOST, else the default); None for another transport."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return host.removeprefix("unix://") if host.startswith("unix://") else None


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


class DockerBackend:
    """Blocking operations on the Docker engine, scoped to one lbsolo instance's labels.

    One exception: `follow_logs_async`, which reads a replica's output on the event loop (no
    thread per followed replica).
    """

    def __init__(self, instance: str, client: docker.DockerClient | None = None) -> None:
        self.instance = instance
        self._client = client
        self._api_timeout = 120

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

    def base_labels(self, app: str) -> dict[str, str]:
        return {LABEL_MANAGED: "true", LABEL_INSTANCE: self.instance, LABEL_APP: app}

    # images
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
        image_id = None
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
            started = time.monotonic()
            for chunk in _until_timeout(stream, app, timeout):
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
        if not image_id:
            with _engine_errors(f"inspect image {tag}"):
                image_id = str(self.client.images.get(tag).id)
        return image_id

    def tag_image(self, image: str, repository: str, tag: str) -> None:
        with _engine_errors(f"tag {image}"):
            self.client.api.tag(image, repository, tag)

    def push_image(self, repository: str, tag: str, on_line: Callable[[str], None]) -> None:
        with _engine_errors(f"push {repository}:{tag}"):
            for chunk in self.client.api.push(repository, tag=tag, stream=True, decode=True):
                # The engine reports a failed push inside the stream, not as an HTTP error.
                if "error" in chunk or "errorDetail" in chunk:
                    message = str(chunk.get("error") or (chunk.get("errorDetail") or {}).get("message") or "failed")
                    raise EngineError(f"push {repository}:{tag}: {message.strip()}")
                if "status" in chunk:
                    on_line(" ".join(str(chunk[k]) for k in ("id", "status", "progress") if chunk.get(k)))

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
        return [
            {
                "id": str(i.get("Id", "")),
                "app": (i.get("Labels") or {}).get(LABEL_APP, ""),
                "size": int(i.get("Size") or 0),
                "tags": [t for t in i.get("RepoTags") or [] if t != "<none>:<none>"],
                "created": str(i.get("Created", "")),
            }
            for i in images
        ]

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

    # containers
    def ensure_network(self, name: str) -> None:
        """A user-defined bridge network where apps reach each other by name."""
        with _engine_errors(f"network {name}"):
            if self.client.networks.list(names=[name]):
                return
            self.client.networks.create(
                name, driver="bridge", labels={LABEL_MANAGED: "true", LABEL_INSTANCE: self.instance}
            )

    def remove_network(self, name: str) -> None:
        """Remove this instance's network if nothing is attached to it any more."""
        try:
            for network in self.client.networks.list(names=[name]):
                if (network.attrs.get("Labels") or {}).get(LABEL_INSTANCE) == self.instance:
                    network.remove()
        except docker.errors.APIError as e:
            log.info("network %s kept: %s", name, e.explanation or e)
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as e:
            raise EngineUnavailable(f"remove network {name}: {e}") from e

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
        """Start a replica; a web port is published on the loopback only, at a free host port."""
        labels = {**self.base_labels(app), LABEL_RELEASE: str(release), LABEL_PROCESS: process}
        kwargs: dict[str, Any] = {}
        if port is not None:
            labels[LABEL_PORT] = str(port)
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
            )
            try:
                for line in _lines(container.logs(stream=True, follow=True)):
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
            for line in _lines(self.client.api.exec_start(created["Id"], stream=True)):
                on_output(line)
                if time.monotonic() - started > timeout:
                    raise EngineError(f"exec in {replica_id[:12]}: no end after {timeout:.0f}s")
            code = self.client.api.exec_inspect(created["Id"]).get("ExitCode")
        return 1 if code is None else int(code)

    def follow_logs(self, replica_id: str, since: float | None = None) -> Iterator[str]:
        with _engine_errors(f"logs of {replica_id[:12]}"):
            container = self.client.containers.get(replica_id)
            stream = container.logs(stream=True, follow=True, since=since or None)
        try:
            yield from _lines(stream)
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

    def events(self, since: float | None = None) -> Iterator[EngineEvent]:
        filters = {"type": "container", "label": [f"{LABEL_INSTANCE}={self.instance}", LABEL_PROCESS]}
        with _engine_errors("events"):
            stream = self.client.events(decode=True, filters=filters, since=since)
        try:
            for event in stream:
                attrs = (event.get("Actor") or {}).get("Attributes") or {}
                yield {
                    "action": str(event.get("Action", "")),
                    "id": str(event.get("id", "")),
                    "app": attrs.get(LABEL_APP, ""),
                }
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise EngineUnavailable(f"event stream ended: {e}") from e

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

    def logs(self, replica_id: str, tail: int = 200) -> str:
        with _engine_errors(f"logs of {replica_id[:12]}"):
            raw = self.client.containers.get(replica_id).logs(tail=tail, timestamps=False)
        return raw.decode("utf-8", "replace")

    def stats(self, replica_id: str) -> ReplicaStats:
        """Blocks about a second: the engine takes two readings."""
        with _engine_errors(f"stats of {replica_id[:12]}"):
            try:
                raw = self.client.api.stats(replica_id, stream=False)
            except ValueError as e:  # the container went away mid-answer: a cut-off JSON document
                raise EngineError(f"stats of {replica_id[:12]}: incomplete answer ({e})") from e
        return stats_numbers(raw or {})

    _stats_numbers = staticmethod(stats_numbers)
