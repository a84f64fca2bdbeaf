"""The cluster part of the engine seam over a Docker Swarm (lbsolo.engine_cluster.Cluster).

Reads the swarm's state and its nodes, initialises a swarm, reads the worker join token and sets
a node's availability, through the Docker SDK's swarm and node APIs on the connection of a
DockerBackend (the engine lbsolo talks to, a manager). Engine answers become lbsolo's records
(NodeRecord, SwarmStatus); errors become lbsolo's EngineError tree.

Loaded only when the swarm backend or a cluster verb is used. It decides nothing (which node a
name means, whether a drain is allowed: lbsolo.cluster_plan) and must never log the join token.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import docker.errors

from lbsolo.cluster_plan import node_address
from lbsolo.engine_cluster import NodeRecord, SwarmStatus
from lbsolo.engine_docker import DockerBackend
from lbsolo.engine_docker import _engine_errors as engine_errors
from lbsolo.errors import EngineError, InvalidInput
from lbsolo.models import LABEL_INSTANCE

# The engine's words when it cannot pick an address to advertise by itself.
_NO_ADDRESS = ("could not choose an ip address", "multiple addresses", "must specify a listening address")


def node_record(attrs: dict[str, Any]) -> NodeRecord:
    """A node as the engine describes it (`docker node inspect`), reduced to lbsolo's record."""
    spec = attrs.get("Spec") or {}
    desc = attrs.get("Description") or {}
    status = attrs.get("Status") or {}
    manager = attrs.get("ManagerStatus") or {}
    resources = desc.get("Resources") or {}
    return {
        "id": attrs.get("ID", ""),
        "name": desc.get("Hostname", ""),
        "address": node_address(status.get("Addr", ""), manager.get("Addr")),
        "role": spec.get("Role", "worker"),
        "leader": bool(manager.get("Leader")),
        "status": status.get("State", "unknown"),
        "availability": spec.get("Availability", "active"),
        "cpus": (resources.get("NanoCPUs") or 0) / 1e9,
        "memory": int(resources.get("MemoryBytes") or 0),
        "engine": (desc.get("Engine") or {}).get("EngineVersion", ""),
        "labels": dict(spec.get("Labels") or {}),
    }


def swarm_status(info: dict[str, Any]) -> SwarmStatus:
    """The `Swarm` part of the engine's info, reduced to lbsolo's record."""
    swarm = info.get("Swarm") or {}
    return {
        "state": swarm.get("LocalNodeState") or "inactive",
        "manager": bool(swarm.get("ControlAvailable")),
        "node_id": swarm.get("NodeID") or "",
        "node_addr": swarm.get("NodeAddr") or "",
        "cluster_id": (swarm.get("Cluster") or {}).get("ID", ""),
        "managers": [m.get("Addr", "") for m in swarm.get("RemoteManagers") or []],
        "nodes": int(swarm.get("Nodes") or 0),
    }


class SwarmCluster:
    """The swarm the backend's engine is in, seen from that engine."""

    def __init__(self, backend: DockerBackend) -> None:
        self.backend = backend

    def status(self) -> SwarmStatus:
        with engine_errors("swarm status"):
            return swarm_status(self.backend.client.info())

    def init(self, advertise_addr: str | None) -> SwarmStatus:
        try:
            with engine_errors("swarm init"):
                self.backend.client.swarm.init(advertise_addr=advertise_addr, listen_addr="0.0.0.0:2377")
        except EngineError as e:
            if any(words in e.message.lower() for words in _NO_ADDRESS):
                raise InvalidInput(
                    "the engine cannot choose which of this machine's addresses to advertise: "
                    "give one with --advertise-addr IP (an address the other nodes reach)"
                ) from e
            raise
        return self.status()

    def join_token(self) -> tuple[str, str]:
        client = self.backend.client
        with engine_errors("swarm join token"):
            client.swarm.reload()
            token = str(client.swarm.attrs["JoinTokens"]["Worker"])
            info = swarm_status(client.info())
            me = client.api.inspect_node(info["node_id"])
        addr = (me.get("ManagerStatus") or {}).get("Addr") or (info["managers"] or [""])[0]
        if not addr:
            raise EngineError("the swarm reports no manager address to join at")
        return token, addr

    def nodes(self) -> list[NodeRecord]:
        with engine_errors("list nodes"):
            return [node_record(n) for n in self.backend.client.api.nodes()]

    def set_availability(self, node_id: str, availability: str) -> NodeRecord:
        api = self.backend.client.api
        for attempt in range(3):
            with engine_errors(f"node {availability}"):
                attrs = api.inspect_node(node_id)
                spec = dict(attrs.get("Spec") or {})
                if spec.get("Availability") == availability:
                    return node_record(attrs)
                spec["Availability"] = availability
                try:
                    api.update_node(node_id, attrs["Version"]["Index"], spec)
                except docker.errors.APIError as e:
                    # Another change came between our read and write ("update out of sequence"): read again.
                    if "out of sequence" in str(e).lower() and attempt < 2:
                        continue
                    raise
                return node_record(api.inspect_node(node_id))
        raise EngineError(f"node {availability}: the node kept changing under us; try again")

    def replicas_by_node(self) -> dict[str, int]:
        """This instance's running replicas: its containers on this engine (the docker backend's and,
        today, the swarm backend's), and the running tasks of its services (placed by Swarm)."""
        client = self.backend.client
        counts: Counter[str] = Counter()
        with engine_errors("replicas by node"):
            me = swarm_status(client.info())["node_id"]
            local = [r for r in self.backend.list_replicas() if r.running and not r.one_off]
            if me:
                counts[me] += len(local)
            label = f"{LABEL_INSTANCE}={self.backend.instance}"
            for service in client.api.services(filters={"label": label}):
                tasks = client.api.tasks(filters={"service": service["ID"], "desired-state": "running"})
                for task in tasks:
                    if (task.get("Status") or {}).get("State") == "running" and task.get("NodeID"):
                        counts[task["NodeID"]] += 1
        return dict(counts)
