"""The daemon's choice of engine backend (LBSOLO_BACKEND, `lbsolo up --backend`) and its checks at start.

Builds the chosen backend (docker: lbsolo.engine_docker; swarm: lbsolo.engine_swarm, imported
only then) and the cluster verbs' use cases over it, whose Swarm code loads on their first use.
At start, a swarm backend whose engine cannot manage a swarm stops the daemon with the fix,
and what the swarm backend does not do yet is said, one line each, instead of half-working;
so is where release images go: LBSOLO_REGISTRY, or lbsolo's own registry on the manager
(lbsolo.daemon_registry, imported only then), run as one of the daemon's supervised tasks.
It must not import the API or the CLI, nor decide anything cluster_plan decides.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from lbsolo.cluster_plan import not_yet, swarm_refusal, validate_backend, validate_registry
from lbsolo.config import Settings
from lbsolo.core_cluster import ClusterOps
from lbsolo.engine_cluster import Cluster
from lbsolo.engine_docker import DockerBackend
from lbsolo.errors import Conflict


def open_backend(settings: Settings, instance: str) -> tuple[DockerBackend, ClusterOps]:
    """The backend the settings name (not connected yet) and the cluster use cases over its engine."""
    backend = validate_backend(settings.backend)
    pool, prefix, publish = settings.network_pool, settings.network_prefix, settings.publish_ports
    if backend == "swarm":
        from lbsolo.cluster_firewall import parse_ports
        from lbsolo.engine_swarm import DockerSwarmBackend

        parse_ports(settings.swarm_ports)  # a bad LBSOLO_SWARM_PORTS stops the start, not a later deploy

        swarm = DockerSwarmBackend(instance, network_pool=pool, network_prefix=prefix, publish=publish)
        registry = {"registry": settings.registry, "registry_port": settings.registry_port}
        return swarm, ClusterOps(
            backend, swarm.cluster, **registry, registry_dir=settings.home / "registry", instance=instance,
            swarm_ports=settings.swarm_ports,
        )
    engine = DockerBackend(instance, network_pool=pool, network_prefix=prefix, publish=publish)

    def connect() -> Cluster:
        # The cluster verbs work on the docker backend too (cluster:init comes before `up --backend swarm`).
        from lbsolo.engine_swarm_nodes import SwarmCluster

        return SwarmCluster(engine)

    return engine, ClusterOps(backend, connect, instance=instance, swarm_ports=settings.swarm_ports)


log = logging.getLogger("lbsolo.daemon")


@dataclass
class Registry:
    """Where the swarm backend's release images go, and the daemon's task that runs lbsolo's own registry."""

    reference: str | None = None  # host:port[/prefix]; None: no registry (docker backend, or no swarm yet)
    background: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)


async def backend_notes(cluster: ClusterOps, settings: Settings) -> tuple[list[str], Registry]:
    """What to say at start about the backend (logged here too) and where release images go;
    raises (the daemon does not start) if the backend cannot work here."""
    if cluster.backend != "swarm":
        return [], Registry()
    if settings.registry:
        validate_registry(settings.registry)
    status = await cluster.status()
    if refusal := swarm_refusal(cluster.backend, status):
        raise Conflict(refusal)
    notes = not_yet(cluster.backend)
    registry = Registry()
    if status["state"] == "inactive":
        notes.insert(0, "This engine is not in a swarm yet: `lbsolo cluster:init [--advertise-addr IP]` makes one")
    elif settings.registry:
        registry = Registry(settings.registry)
        notes.append(f"Release images go through the registry {settings.registry} (LBSOLO_REGISTRY)")
    else:
        from lbsolo.daemon_registry import RegistryServer

        server = RegistryServer(settings.home / "registry", status["address"], settings.registry_port)
        if not server.installed():
            notes.append(
                f"Release images cannot reach other nodes: {server.binary} is missing (apt-get install "
                "docker-registry), or set LBSOLO_REGISTRY to a registry of your own"
            )
            return _said(notes), registry
        registry = Registry(server.reference, {"registry": server.run})
        notes.append(
            f"Release images go through lbsolo's registry at {server.reference}; each node's engine trusts it and "
            "holds its client certificate (`lbsolo cluster:join-command` prints the step); on this machine: "
            f"{server.trust_step()}"
        )
    return _said(notes), registry


def _said(notes: list[str]) -> list[str]:
    for note in notes:
        log.warning("%s", note)
    return notes
