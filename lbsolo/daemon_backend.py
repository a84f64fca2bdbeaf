"""The daemon's choice of engine backend (LBSOLO_BACKEND, `lbsolo up --backend`) and its checks at start.

Builds the chosen backend (docker: lbsolo.engine_docker; swarm: lbsolo.engine_swarm, imported
only then) and the cluster verbs' use cases over it, whose Swarm code loads on their first use.
At start, a swarm backend whose engine cannot manage a swarm stops the daemon with the fix,
and what the swarm backend does not do yet is said, one line each, instead of half-working.
It must not import the API or the CLI, nor decide anything cluster_plan decides.
"""

from __future__ import annotations

from lbsolo.cluster_plan import not_yet, swarm_refusal, validate_backend
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
        return swarm, ClusterOps(backend, swarm.cluster, instance=instance, swarm_ports=settings.swarm_ports)
    engine = DockerBackend(instance, network_pool=pool, network_prefix=prefix, publish=publish)

    def connect() -> Cluster:
        # The cluster verbs work on the docker backend too (cluster:init comes before `up --backend swarm`).
        from lbsolo.engine_swarm_nodes import SwarmCluster

        return SwarmCluster(engine)

    return engine, ClusterOps(backend, connect, instance=instance, swarm_ports=settings.swarm_ports)


async def backend_notes(cluster: ClusterOps) -> list[str]:
    """What to say at start about the backend; raises (the daemon does not start) if it cannot work here."""
    if cluster.backend != "swarm":
        return []
    status = await cluster.status()
    if refusal := swarm_refusal(cluster.backend, status):
        raise Conflict(refusal)
    notes = not_yet(cluster.backend)
    if status["state"] == "inactive":
        notes.insert(0, "This engine is not in a swarm yet: `lbsolo cluster:init [--advertise-addr IP]` makes one")
    return notes
