"""The cluster verbs' use cases: cluster:init, cluster:join-command, nodes, nodes:drain, nodes:activate.

Each reads the swarm through the engine seam's cluster part (lbsolo.engine_cluster.Cluster),
asks lbsolo.cluster_plan's pure decisions, and acts. The cluster is connected on first use (a
daemon whose cluster verbs are never called never loads the Swarm code). The join token is a
secret: it goes back to the (admin) caller only, never into a log line, an event or the audit.
This module must not import docker, the API or the CLI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lbsolo import cluster_plan as plan
from lbsolo.engine_cluster import Cluster, SwarmStatus
from lbsolo.errors import Conflict, InvalidInput


class ClusterOps:
    """The cluster of engines this daemon's engine is in, as the API's cluster and node routes see it."""

    def __init__(
        self, backend: str, connect: Callable[[], Cluster], *, registry: str = "", registry_port: int = 0,
        registry_dir: Path | None = None, instance: str = "", swarm_ports: str = "",
    ) -> None:  # fmt: skip
        self.backend = backend
        self.instance = instance
        self.swarm_ports = swarm_ports
        self._connect = connect
        # Where release images go on the swarm backend (lbsolo.daemon_backend): a user's registry
        # (LBSOLO_REGISTRY), or lbsolo's own on the manager's address at registry_port, its CA and the
        # nodes' client certificate in registry_dir (lbsolo.daemon_registry).
        self._registry = registry
        self._registry_port = registry_port
        self._registry_dir = registry_dir
        self._cluster: Cluster | None = None
        self._init_lock = asyncio.Lock()  # two inits at once: one makes the swarm, the other finds it

    def _engine(self) -> Cluster:
        if self._cluster is None:
            self._cluster = self._connect()
        return self._cluster

    async def _status(self) -> SwarmStatus:
        return await asyncio.to_thread(lambda: self._engine().status())

    async def _managed(self) -> SwarmStatus:
        status = await self._status()
        if refusal := plan.manager_refusal(status):
            raise Conflict(refusal)
        return status

    async def status(self) -> dict[str, Any]:
        """The backend, the swarm's state seen from this engine, and what the backend cannot do yet."""
        s = await self._status()
        return {
            "backend": self.backend,
            "state": s["state"],
            "manager": s["manager"],
            "node_id": s["node_id"],
            "address": s["node_addr"],
            "managers": s["managers"],
            "nodes": s["nodes"],
            "not_yet": plan.not_yet(self.backend),
        }

    async def init(self, advertise_addr: str | None) -> dict[str, Any]:
        """Make this engine a swarm manager unless it is one already (then nothing changes)."""
        addr = plan.validate_advertise_addr(advertise_addr)
        async with self._init_lock:
            before = await self._status()
            if refusal := plan.init_refusal(before, addr):
                raise Conflict(refusal)
            created = before["state"] == "inactive"
            started = time.monotonic()
            if created:
                await asyncio.to_thread(lambda: self._engine().init(addr))
            seconds = time.monotonic() - started
        return {**await self.status(), "created": created, "seconds": round(seconds, 3)}

    async def join_command(self) -> dict[str, Any]:
        """What a new node runs to join as a worker (it holds the join token: a secret), and on the
        swarm backend what it runs so that its engine trusts the registry release images come from."""
        await self._managed()
        token, addr = await asyncio.to_thread(lambda: self._engine().join_token())
        out = {"command": plan.join_command(token, addr), "address": addr, "firewall": ""}
        if self.instance and self.swarm_ports:
            from lbsolo import cluster_firewall as firewall  # loaded by the cluster verbs only

            ports = firewall.parse_ports(self.swarm_ports)
            out["firewall"] = firewall.node_step(self.instance, plan.host_of(addr), ports)
        return {**out, **await self._registry_trust(addr)}

    async def _registry_trust(self, manager_addr: str) -> dict[str, str | None]:
        if self.backend != "swarm":
            return {"registry": None, "trust": None}
        if self._registry:
            return {
                "registry": self._registry,
                "trust": f"# its CA in /etc/docker/certs.d/{plan.registry_host(self._registry)}/ca.crt",
            }
        registry = plan.own_registry(plan.host_of(manager_addr), self._registry_port)
        files = await asyncio.to_thread(self._registry_files)
        if files is None:
            return {"registry": registry, "trust": "# its CA is made when it first starts: ask again then"}
        return {"registry": registry, "trust": plan.registry_trust_command(registry, *files)}

    def _registry_files(self) -> tuple[str, str, str] | None:
        """The registry's CA, the nodes' client certificate and its key (PEM), once the registry made them."""
        d = self._registry_dir
        paths = [d / "ca" / "ca.pem", d / "client" / "client.cert", d / "client" / "client.key"] if d else []
        if not paths or not all(p.exists() for p in paths):
            return None
        ca, cert, key = (p.read_text() for p in paths)
        return ca, cert, key

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node: name, address, role, status, availability, CPUs, memory, this instance's replicas."""
        status = await self._managed()

        def read() -> tuple[list[Any], dict[str, int]]:
            cluster = self._engine()
            return list(cluster.nodes()), cluster.replicas_by_node()

        nodes, replicas = await asyncio.to_thread(read)
        return plan.node_rows(nodes, replicas, status["node_id"])

    async def drain(self, ref: str) -> dict[str, Any]:
        """Stop scheduling on a node and move its replicas elsewhere; refused if none would be left to run them."""
        return await self._set(ref, "drain")

    async def activate(self, ref: str) -> dict[str, Any]:
        """Let the node take replicas again."""
        return await self._set(ref, "active")

    async def _set(self, ref: str, availability: str) -> dict[str, Any]:
        if availability not in plan.AVAILABILITIES:
            raise InvalidInput(f"availability is active or drain, not {availability!r}")
        ref = plan.validate_node_ref(ref)
        status = await self._managed()
        nodes = await asyncio.to_thread(lambda: self._engine().nodes())
        target = plan.find_node(nodes, ref)
        if availability == "drain" and (refusal := plan.drain_refusal(nodes, target)):
            raise Conflict(refusal)
        node = await asyncio.to_thread(lambda: self._engine().set_availability(target["id"], availability))
        replicas = await asyncio.to_thread(lambda: self._engine().replicas_by_node())
        (row,) = plan.node_rows([node], replicas, status["node_id"])
        return row
