"""The engine seam: what the core asks of "where containers run", as one interface.

`Backend` names the operations a scheduler needs — start a replica, stop it, list them, follow
their logs, run a one-off job, exec in a replica, watch events, keep volumes and a network,
read a replica's resource use, keep images (presence, tag, push) and build them — over lbsolo's
own records (Replica, and the small typed dicts below). Each backend scopes everything to one
lbsolo instance; every call blocks, so callers in the event loop go through asyncio.to_thread.
Failures come out as lbsolo's EngineError tree.

A replica's reachable address is on its record: `Replica.host` and `Replica.host_port`, as the
backend fills them (Docker-local: 127.0.0.1 and the published port; a Swarm backend: a node's
address). Nothing above this seam assumes the loopback.

Today's backend is Docker on this machine (lbsolo.engine_docker.DockerBackend); `Engine` is
its old name, resolved on first use so this module never loads docker. This module must not
import docker, requests or any backend: backends import it, not the other way round.
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol, TypedDict, runtime_checkable

from lbsolo.models import Replica


class ImageRecord(TypedDict):
    """One image this instance built."""

    id: str  # the backend's image id (sha256:…)
    app: str
    size: int  # bytes
    tags: list[str]
    created: str  # ISO 8601, as the backend reports it


class ReplicaStats(TypedDict):
    """One replica's resource use at a moment."""

    cpu_percent: float  # of one CPU
    mem_bytes: float  # without page cache the kernel can drop
    mem_limit: float  # 0: none
    net_rx: float  # bytes since the replica started
    net_tx: float


class EngineEvent(TypedDict):
    """A change of one of this instance's replicas, as the backend reports it."""

    action: str  # start, die, destroy, … (the reconcile loop wakes on die and destroy)
    id: str  # the replica's id
    app: str


def parse_memory(value: str) -> int:
    """'512m' -> bytes. Accepts b, k, m, g suffixes (Docker's convention, kept by every backend)."""
    v = value.strip().lower()
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    if v and v[-1] in units:
        return int(float(v[:-1]) * units[v[-1]])
    return int(v)


# Each concern is its own small protocol, so a fake (or a partial backend under test) can be
# checked against the part it stands in for; Backend is all of them. A replica's id is passed
# by position (`/`): implementations name it as they like.


@runtime_checkable
class Replicas(Protocol):
    """Long-running replicas of an app's release: start, restart, stop, list."""

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
        """Start a replica of image; a web `port` is made reachable at the record's host and host_port.

        `command` runs through /bin/sh -c (None: the image's own); `volumes` maps a name from
        ensure_volume to a mount path; `network` is one from ensure_network (the app's own), where
        the others on it reach this replica as `<process>.<app>` (and a web replica as `<app>`).
        """
        ...

    def start(self, replica_id: str, /) -> Replica:
        """Start a stopped replica again, keeping its id; returns its record."""
        ...

    def stop_and_remove(self, replica_id: str, /, timeout: int) -> None:
        """Stop (asking, then after timeout seconds forcing) and remove; a replica already gone is fine."""
        ...

    def list_replicas(self, app: str | None = None) -> list[Replica]:
        """Every replica this instance started (running or not, one-off jobs too), of one app or all."""
        ...


@runtime_checkable
class Logs(Protocol):
    def logs(self, replica_id: str, /, tail: int = 200) -> str:
        """The last `tail` lines a replica printed (stdout and stderr)."""
        ...

    def follow_logs(self, replica_id: str, /, since: float | None = None) -> Iterator[str]:
        """Lines a replica prints from `since` (epoch seconds; None: from its start), until it stops."""
        ...


@runtime_checkable
class Jobs(Protocol):
    """Commands that run to an end: in a fresh replica of an image, or inside a running one."""

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
        """Run command (/bin/sh -c) in a fresh replica of image, streaming its lines; its exit code.

        The replica is a one-off (Replica.one_off) and is removed when the command ends; `name`
        names its container (so that whoever started it can stop it: a job past its timeout).
        """
        ...

    def exec(self, replica_id: str, /, command: str, *, on_output: Callable[[str], None], timeout: float) -> int:
        """Run command (/bin/sh -c) inside a running replica, streaming its lines; its exit code."""
        ...


@runtime_checkable
class Events(Protocol):
    def events(self, since: float | None = None) -> Iterator[EngineEvent]:
        """Changes of this instance's replicas as they happen; raises EngineUnavailable when the stream ends."""
        ...


@runtime_checkable
class Volumes(Protocol):
    def ensure_volume(self, app: str, name: str) -> str:
        """An app's named volume (made once, kept across releases); returns the name `run` mounts."""
        ...

    def remove_app_volumes(self, app: str) -> int:
        """Remove every volume of app; returns how many."""
        ...


def free_subnet(pool: str, prefix: int, taken: Iterable[str]) -> str:
    """The first subnet of `pool` of size /`prefix` that overlaps none of `taken` (CIDRs).

    The engine's networks all count, lbsolo's or not: an overlap would make addresses ambiguous.
    """
    try:
        whole = ipaddress.ip_network(pool, strict=False)
        if not whole.prefixlen <= prefix <= whole.max_prefixlen - 2:
            raise ValueError(f"a /{prefix} does not fit in a /{whole.prefixlen} with room for addresses")
    except ValueError as e:
        raise ValueError(f"LBSOLO_NETWORK_POOL {pool!r} / LBSOLO_NETWORK_PREFIX {prefix}: {e}") from None
    candidates = whole.subnets(new_prefix=prefix)
    used = []
    for cidr in taken:
        try:
            used.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue  # an engine's odd entry is not ours to judge
    for subnet in candidates:
        if not any(subnet.version == u.version and subnet.overlaps(u) for u in used):
            return str(subnet)
    raise LookupError(f"no free /{prefix} left in {pool}: remove unused apps or widen LBSOLO_NETWORK_POOL")


@runtime_checkable
class Networks(Protocol):
    def ensure_network(self, name: str) -> None:
        """A network where the replicas on it (one app's, and its add-ons) reach each other by name."""
        ...

    def remove_network(self, name: str) -> None:
        """Remove this instance's network if nothing uses it any more (else keep it, quietly)."""
        ...


@runtime_checkable
class Stats(Protocol):
    def stats(self, replica_id: str, /) -> ReplicaStats:
        """One replica's resource use now (may take a second: CPU use needs two readings)."""
        ...


@runtime_checkable
class Images(Protocol):
    """Images by id or name: presence, tags, pushes, and this instance's own for retention."""

    def image_exists(self, image: str) -> bool: ...

    def tag_image(self, image: str, repository: str, tag: str) -> None:
        """Name image `repository:tag` (a release's image is tagged `lbsolo/<app>:v<n>`)."""
        ...

    def push_image(self, repository: str, tag: str, on_line: Callable[[str], None]) -> None:
        """Push `repository:tag` to its registry (where other nodes pull it), streaming progress."""
        ...

    def app_images(self, app: str | None = None) -> list[ImageRecord]:
        """Images this instance built, of one app or all."""
        ...

    def remove_image(self, image_id: str) -> bool:
        """Remove an image (gone already counts); False if the backend keeps it (e.g. in use)."""
        ...

    def remove_app_images(self, app: str) -> list[str]:
        """Remove every image this instance built for app; returns their ids."""
        ...

    def prune_build_leftovers(self) -> int:
        """Remove what this instance's builds left behind (intermediate layers); returns bytes freed."""
        ...


@runtime_checkable
class Builds(Protocol):
    def base_labels(self, app: str) -> dict[str, str]:
        """The labels that mark an app's images and replicas as this instance's (builds bake them in)."""
        ...

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
        """Build a tar context holding its Dockerfile, streaming output to on_line; returns the image id.

        Raises BuildFailed when the build fails or a step is silent longer than timeout seconds.
        """
        ...


class ServiceRecord(TypedDict):
    """An add-on's container as the engine reports it."""

    id: str
    name: str
    image: str
    running: bool
    state: str  # the engine's word: running, restarting, exited, created…
    networks: list[str]


class ServiceLog(Protocol):
    """An add-on's log lines as (when the engine stamped it, in nanoseconds since the epoch; text)."""

    def __iter__(self) -> Iterator[tuple[int, str]]: ...

    def close(self) -> None:
        """Stop reading (from any thread: a follow waiting for the next line ends)."""
        ...


@runtime_checkable
class Services(Protocol):
    """Long-running containers lbsolo keeps for apps that are not their replicas: add-ons.

    A part of its own beside Backend (Docker-local: engine_docker_services.DockerServices, over
    the same connection), handed to the core separately.
    """

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
        """Create and start `service`'s container (the engine restarts it if it crashes); `volume` is
        (name from ensure_service_volume, mount path); on each network it answers to `service`."""
        ...

    def find_service(self, service: str) -> ServiceRecord | None:
        """The service's container, running or not; None if there is none."""
        ...

    def service_logs(
        self, service: str, tail: int | None = 200, since: float | None = None, follow: bool = False
    ) -> ServiceLog:
        """The container's output (stdout and stderr): its last `tail` lines (None: all) from
        `since` (epoch seconds; None: its start); with `follow`, then each new line as it comes,
        until the container stops or the log is closed. Read as it is iterated, never held whole."""
        ...

    def start_service(self, service: str) -> ServiceRecord: ...

    def remove_service(self, service: str, *, volume: bool) -> None:
        """Stop and remove the container (and its volume if asked); quietly if already gone."""
        ...

    def ensure_service_volume(self, service: str) -> str:
        """The service's data volume (created once, kept until remove_service(volume=True))."""
        ...

    def connect_service(self, service: str, network: str) -> None:
        """Put the service on a network too, reachable there by its name (idempotent)."""
        ...

    def disconnect_service(self, service: str, network: str) -> None:
        """Take the service off a network (quietly, if it is not on it)."""
        ...

    def pull_image(self, image: str, on_line: Callable[[str], None]) -> None:
        """Fetch an image that is not here yet (a no-op when it is)."""
        ...

    def exec_service(
        self,
        service: str,
        command: list[str],
        *,
        stdin: Iterable[bytes] | None = None,
        stdout_sink: Callable[[bytes], None],
        timeout: float,
    ) -> tuple[int, str]:
        """Run argv inside the service's container: stdin streamed in from the iterable (then
        closed), stdout streamed out to the sink in pieces as they come (binary-safe, never held
        whole). Returns the exit code and the last few KiB of stderr."""
        ...

    def stop_service(self, service: str, timeout: int = 30) -> None:
        """Stop the service's container (it stays, with its volume, until started again)."""
        ...

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
        """A throw-away container (no network) of an add-on's image, labelled as lbsolo's and as
        scratch; exec_service and remove_service act on it by `service`."""
        ...

    def remove_scratch_services(self) -> int:
        """Remove every scratch container this instance left (a daemon killed mid-verify)."""
        ...

    def host_port_state(self, address: str, port: int) -> str:
        """Whether a port can be published at address: 'free', 'in use', or 'not here' (the
        address is not one of the machine the services run on)."""
        ...

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
        """Recreate the service's container on the same volume and networks (stopped first: one
        server per data directory), publishing (container port, host address, host port or None
        for any) or nothing; `files` as in seed_service_files. Put back as it was if the new one
        cannot start. Returns the record and {"address", "port"} where it is published ({}: not)."""
        ...

    def published_port(self, service: str, port: int) -> dict[str, Any]:
        """{"address", "port"} where the service's port is published ({}: it is not)."""
        ...

    def recover_replaced_service(self, service: str) -> str | None:
        """Finish or undo a replace_service cut short (a daemon killed); says what it did, None if nothing."""
        ...

    def seed_service_files(self, service: str, image: str, volume: tuple[str, str], files: dict[str, bytes]) -> None:
        """Write {absolute path: bytes} onto the service's volume (mounted at volume[1]) where missing."""
        ...

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
        """An interactive argv in the service's container, no time limit: stdin streamed in,
        output to on_output(stream 1|2, bytes) as it comes (a TTY: all on 1, raw; `size` is its
        rows and columns). on_start gets a hang_up() that ends the session from another thread.
        Returns the exit code (None: the process was left running)."""
        ...


@runtime_checkable
class Backend(Replicas, Logs, Jobs, Events, Volumes, Networks, Stats, Images, Builds, Protocol):
    """Where one lbsolo instance's containers run."""

    instance: str  # names this instance: a backend touches only what carries it

    def ping(self) -> str:
        """The backend's version; raises EngineUnavailable if it cannot be reached."""
        ...

    def close(self) -> None:
        """Let go of connections (the backend reconnects on next use)."""
        ...


def __getattr__(name: str) -> Any:
    # `Engine`, the Docker-local backend under its old name, for the modules that build or
    # annotate with it. Looked up on first use, by name: importing this module loads no
    # backend, and the interface keeps no import of an implementation.
    if name == "Engine":
        return importlib.import_module("lbsolo.engine_docker").DockerBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
