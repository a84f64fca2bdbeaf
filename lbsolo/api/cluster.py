"""The cluster's REST routes: /api/cluster (state, init, join command) and /api/nodes (list, drain, activate).

A thin layer over core_cluster.ClusterOps: parse, call one use case, render. Every change here
is the admin's (lbsolo.api.scopes: any POST not listed for deploy tokens), and so is reading
the join command, which holds the swarm's join token: it is sent to the caller and nowhere
else (the audit records the route, never the answer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from lbsolo.api.audit import note
from lbsolo.core_cluster import ClusterOps
from lbsolo.errors import Conflict

NO_CLUSTER = "this daemon runs without an engine cluster"


class HasCluster(Protocol):
    cluster: ClusterOps | None


class InitIn(BaseModel):
    advertise_addr: str | None = Field(
        None, max_length=64, description="the IP address (optionally :port) the other nodes reach this engine at"
    )


class ClusterOut(BaseModel):
    backend: str = Field(description="docker or swarm (LBSOLO_BACKEND)")
    state: str = Field(description="the engine's swarm state: inactive, pending, active, locked or error")
    manager: bool
    node_id: str
    address: str = Field(description="the address this engine advertises to the other nodes")
    managers: list[str]
    nodes: int
    not_yet: list[str] = Field(description="what the chosen backend does not do yet")


class InitOut(ClusterOut):
    created: bool = Field(description="false: the engine managed a swarm already, nothing changed")
    seconds: float = Field(description="how long the engine took to make the swarm")


class JoinOut(BaseModel):
    command: str = Field(description="what a new node runs to join as a worker; it holds the join token (a secret)")
    address: str
    registry: str | None = Field(None, description="where the swarm backend's release images are pulled from")
    trust: str | None = Field(None, description="what the new node runs (as root) so that its engine trusts it")
    firewall: str = Field("", description="what every node then runs as root: only the manager reaches app ports")


class NodeOut(BaseModel):
    id: str
    name: str
    address: str
    role: str = Field(description="manager or worker")
    role_label: str
    leader: bool
    status: str = Field(description="ready, down, unknown or disconnected")
    availability: str = Field(description="active, pause or drain")
    cpus: float
    memory: int = Field(description="bytes")
    engine: str
    replicas: int = Field(description="this lbsolo's running replicas on the node")
    self: bool = Field(description="the engine this daemon talks to")


def create_cluster_router(platform: HasCluster, require_token: Callable[..., Any]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["cluster"])

    def ops() -> ClusterOps:
        if platform.cluster is None:
            raise Conflict(NO_CLUSTER)
        return platform.cluster

    @router.get("/api/cluster")
    async def cluster() -> ClusterOut:
        """The backend, this engine's swarm state, and what the backend does not do yet."""
        return ClusterOut(**await ops().status())

    @router.post("/api/cluster/init")
    async def init(body: InitIn) -> InitOut:
        """Make this daemon's engine a swarm manager if it is not one yet (idempotent). Refused when the
        engine is a worker of another swarm. Admin only."""
        note(advertise_addr=body.advertise_addr)
        return InitOut(**await ops().init(body.advertise_addr))

    @router.get("/api/cluster/join-command")
    async def join_command() -> JoinOut:
        """`docker swarm join --token … ADDR:2377`, what a new node runs. Holds the join token: admin only."""
        return JoinOut(**await ops().join_command())

    @router.get("/api/nodes")
    async def nodes() -> list[NodeOut]:
        """Every node: name, address, role, status, availability, CPUs, memory, this lbsolo's replicas on it."""
        return [NodeOut(**n) for n in await ops().nodes()]

    @router.post("/api/nodes/{node}/drain")
    async def drain(node: str) -> NodeOut:
        """Take a node out of scheduling (its replicas move to the others). Refused when no other node is
        ready and active. Admin only."""
        note(node=node)
        return NodeOut(**await ops().drain(node))

    @router.post("/api/nodes/{node}/activate")
    async def activate(node: str) -> NodeOut:
        """Let a drained node take replicas again. Admin only."""
        note(node=node)
        return NodeOut(**await ops().activate(node))

    return router
