"""The engine seam's cluster part: what the core asks of a cluster of engines (a Docker Swarm).

Beside lbsolo.engine's Backend: the swarm's state as this engine sees it, making one, the
token a new node joins with, the nodes and their availability, and where this instance's
replicas run. Over lbsolo's own records (the typed dicts below), never an SDK's objects; every
call blocks (callers in the event loop go through asyncio.to_thread); failures come out as
lbsolo's EngineError tree. Today's implementation is lbsolo.engine_swarm_nodes.SwarmCluster.

This module must not import docker or any backend, and holds no decisions (lbsolo.cluster_plan).
"""

from __future__ import annotations

from typing import Protocol, TypedDict, runtime_checkable


class SwarmStatus(TypedDict):
    """The swarm as the engine lbsolo talks to sees it."""

    state: str  # inactive, pending, active, locked or error (the engine's words)
    manager: bool  # this engine manages the swarm
    node_id: str  # this engine's node ("" outside a swarm)
    node_addr: str  # the address it advertises to the others
    cluster_id: str  # "" unless a manager
    managers: list[str]  # the managers' addresses (host:port)
    nodes: int  # 0 unless a manager


class NodeRecord(TypedDict):
    """One node of the swarm."""

    id: str
    name: str  # its host name
    address: str  # where the others reach it
    role: str  # manager or worker
    leader: bool
    status: str  # ready, down, unknown or disconnected
    availability: str  # active, pause or drain
    cpus: float
    memory: int  # bytes
    engine: str  # the node's Docker version
    labels: dict[str, str]


@runtime_checkable
class Cluster(Protocol):
    def status(self) -> SwarmStatus: ...

    def init(self, advertise_addr: str | None) -> SwarmStatus:
        """Make this engine the manager of a new swarm (advertising the address given, or one the
        engine picks); the caller has checked it is in none."""
        ...

    def join_token(self) -> tuple[str, str]:
        """(the token a worker joins with, this manager's address host:port). A secret: never logged."""
        ...

    def nodes(self) -> list[NodeRecord]: ...

    def set_availability(self, node_id: str, availability: str) -> NodeRecord:
        """Set a node active or drain (its replicas move elsewhere); returns it as it is then."""
        ...

    def replicas_by_node(self) -> dict[str, int]:
        """How many of this instance's replicas run on each node, by node id."""
        ...
