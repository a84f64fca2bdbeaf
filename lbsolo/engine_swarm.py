"""The swarm backend (LBSOLO_BACKEND=swarm): Docker Swarm, managed from the engine lbsolo talks to.

This first part runs replicas as the docker backend does, on the manager's own engine (every
operation of the Backend protocol is DockerBackend's, inherited), and adds the cluster it
manages (lbsolo.engine_swarm_nodes.SwarmCluster: init, join token, nodes, drain) and a first path
for replicas as Swarm services (lbsolo.engine_swarm_replicas, not wired in yet). What is not
ported yet is listed in lbsolo.cluster_plan.SWARM_NOT_YET and said at start; the plan for apps
as Swarm services is in the README ("The swarm backend").

Imported only when the swarm backend is chosen. It must not be imported by the core, the API
or the CLI: the daemon picks it (lbsolo.daemon_backend).
"""

from __future__ import annotations

from lbsolo.cluster_firewall import PortRange
from lbsolo.engine_docker import DockerBackend
from lbsolo.engine_swarm_nodes import SwarmCluster
from lbsolo.engine_swarm_replicas import SwarmReplicas


class DockerSwarmBackend(DockerBackend):
    """Where one lbsolo instance's containers run when it manages a swarm."""

    name = "swarm"

    def cluster(self) -> SwarmCluster:
        """The swarm this backend's engine manages, over the same connection."""
        return SwarmCluster(self)

    def service_replicas(
        self,
        *,
        start_timeout: float = 60.0,
        stop_timeout: int = 10,
        registry: str | None = None,
        ports: PortRange | None = None,
    ) -> SwarmReplicas:
        """Replicas as one-task Swarm services (the next part's `run`; not used by the daemon yet),
        their images pushed to `registry` and pulled from it by digest, published on `ports`
        (LBSOLO_SWARM_PORTS, which each node's firewall keeps for the manager)."""
        return SwarmReplicas(
            self, start_timeout=start_timeout, stop_timeout=stop_timeout, registry=registry, ports=ports
        )
