"""Replicas as Swarm services: the swarm backend's first start-replica path (issue 17).

One service per replica (`replicas: 1`), as the README's "Apps as Swarm services" explains:
lbsolo's own rollout steps stay in charge (start, health-check from the daemon, swap, drain,
stop), Swarm restarts the task and moves it when its node is lost or drained. A web replica
publishes its port in host mode (Swarm cannot publish on one address only), on the lowest port
of LBSOLO_SWARM_PORTS no replica of this instance has (the range each node's firewall keeps for
the manager, lbsolo.cluster_firewall), or on one the engine picks when no range is given; the
replica is reached at (its node's address, that port), read from the running task.
A replica's id is its service's id, which stays the same when Swarm moves its task. Given a
registry, `run` first pushes the image there (lbsolo.engine_swarm_registry) and creates the
service from its digest reference, so a node that never had the image pulls it; a task whose
node could not pull names the node, the registry and the fix.

Over the engine's service and task APIs on a DockerBackend's connection; answers become lbsolo's
Replica records, errors lbsolo's EngineError tree. Not yet wired into the daemon's backend (its
logs, events, exec and stats still need the node engines): used by the tests and the next part.
It must not decide placement beyond what Swarm does, nor log an app's environment.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import docker.errors
import docker.types

from lbsolo.cluster_firewall import PortRange, pick_port
from lbsolo.cluster_plan import pull_problem
from lbsolo.engine import parse_memory
from lbsolo.engine_docker import DockerBackend
from lbsolo.engine_docker import _engine_errors as engine_errors
from lbsolo.engine_swarm_nodes import node_record
from lbsolo.engine_swarm_registry import push_release
from lbsolo.errors import EngineError
from lbsolo.models import LABEL_APP, LABEL_INSTANCE, LABEL_MANAGED, LABEL_PORT, LABEL_PROCESS, LABEL_RELEASE, Replica

# Task states after which the task will not run (Swarm may start another: a new task).
ENDED = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})


def published_port(task: dict[str, Any], target: int) -> int | None:
    """Where a task's `target` port is published on its node (host mode), if it is."""
    for p in (task.get("Status") or {}).get("PortStatus", {}).get("Ports") or []:
        if p.get("TargetPort") == target and p.get("PublishedPort"):
            return int(p["PublishedPort"])
    return None


def current_task(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The task that stands for the replica now: the newest that should run, else the newest."""
    ordered = sorted(tasks, key=lambda t: t.get("CreatedAt", ""), reverse=True)
    wanted = [t for t in ordered if t.get("DesiredState") == "running"]
    return (wanted or ordered or [None])[0]


def task_problem(task: dict[str, Any]) -> str | None:
    """Why a task will not run (the engine's words), or None while it runs or may still."""
    status = task.get("Status") or {}
    if status.get("State") in ("failed", "rejected"):
        return str(status.get("Err") or status.get("Message") or status.get("State"))
    return None


def service_replica(service: dict[str, Any], task: dict[str, Any] | None, address: str) -> Replica:
    """A replica's record from its service and current task; `address` is the task's node's."""
    labels = (service.get("Spec") or {}).get("Labels") or {}
    state = ((task or {}).get("Status") or {}).get("State", "pending")
    port = labels.get(LABEL_PORT)
    release = labels.get(LABEL_RELEASE)
    return Replica(
        id=service["ID"],
        name=(service.get("Spec") or {}).get("Name", ""),
        app=labels.get(LABEL_APP, ""),
        release=int(release) if release and release.isdigit() else None,
        process=labels.get(LABEL_PROCESS, ""),
        running=state == "running",
        status=state,
        host_port=published_port(task or {}, int(port)) if port and port.isdigit() else None,
        started_at=service.get("CreatedAt", ""),
        host=address,
    )


def _fix(why: str) -> str:
    if "no such image" in why.lower():
        return " (images reach the other nodes through a registry: give the backend one, LBSOLO_REGISTRY)"
    return ""


class SwarmReplicas:
    """Long-running replicas of this instance as one-task Swarm services."""

    def __init__(
        self,
        backend: DockerBackend,
        *,
        start_timeout: float = 60.0,
        stop_timeout: int = 10,
        registry: str | None = None,
        ports: PortRange | None = None,
    ) -> None:
        self.backend = backend
        self.registry = registry  # host:port[/prefix]; None: services use the image as named (this node's)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.ports = ports
        self._publishing = threading.Lock()  # two replicas started at once must not pick the same port

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
        memory: str | None = None,
        cpus: float | None = None,
    ) -> Replica:
        """Create the replica's service and return once its task runs (and its port is published).

        With a registry, `image` (a name or id on the manager's engine) is pushed first and the
        service pulls it by digest; a digest reference into the registry is used as it is."""
        if self.registry and not image.startswith(f"{self.registry}/"):
            image = push_release(self.backend, self.registry, image, app, f"v{release}")
        labels = {**self.backend.base_labels(app), LABEL_RELEASE: str(release), LABEL_PROCESS: process}
        ports: list[dict[str, Any]] | None = None
        if port is not None:
            labels[LABEL_PORT] = str(port)
            ports = [{"Protocol": "tcp", "TargetPort": port, "PublishMode": "host"}]  # no range: the engine picks
        resources = None
        if memory or cpus:
            resources = docker.types.Resources(
                mem_limit=parse_memory(memory) if memory else None, cpu_limit=int(cpus * 1e9) if cpus else None
            )
        with self._publishing, engine_errors(f"start {name}"):
            if ports and self.ports is not None:
                ports[0]["PublishedPort"] = pick_port(self.ports, self._published())
            service = self.backend.client.services.create(
                image,
                command=["/bin/sh", "-c", command] if command else None,
                name=name,
                env=[f"{k}={v}" for k, v in env.items()],
                labels=labels,
                container_labels=labels,
                endpoint_spec=docker.types.EndpointSpec(ports=ports) if ports else None,
                mode=docker.types.ServiceMode("replicated", replicas=1),
                restart_policy=docker.types.RestartPolicy(condition="any", delay=1_000_000_000),
                resources=resources,
                stop_grace_period=self.stop_timeout * 1_000_000_000,
                init=True,
            )
        try:
            return self._wait_running(service.id, name, port, image)
        except BaseException:
            self.stop_and_remove(service.id, timeout=0)
            raise

    def _published(self) -> list[int]:
        """The host ports this instance's services publish on (on any node)."""
        labels = [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.backend.instance}"]
        services = self.backend.client.api.services(filters={"label": labels})
        return [
            int(p["PublishedPort"])
            for s in services
            for p in ((s.get("Spec") or {}).get("EndpointSpec") or {}).get("Ports") or []
            if p.get("PublishedPort")
        ]

    def _wait_running(self, service_id: str, name: str, port: int | None, image: str) -> Replica:
        deadline = time.monotonic() + self.start_timeout
        problem = "no task yet"
        while time.monotonic() < deadline:
            replica, task = self._replica(service_id)
            if task is not None and (why := task_problem(task)):
                node = self._node_name(task)
                if self.registry and image.startswith(f"{self.registry}/") and "no such image" in why.lower():
                    raise EngineError(f"start {name}: {pull_problem(node, self.registry, why)}")
                raise EngineError(f"start {name}: its task failed on {node}: {why}{_fix(why)}")
            if replica.running and (port is None or replica.host_port is not None):
                return replica
            problem = f"its task is {replica.status}"
            time.sleep(0.2)
        raise EngineError(f"start {name}: not running after {self.start_timeout:.0f}s ({problem})")

    def _node_name(self, task: dict[str, Any]) -> str:
        node_id = task.get("NodeID", "")
        if not node_id:
            return "no node (none fits)"
        try:
            with engine_errors("inspect node"):
                return f"node {node_record(self.backend.client.api.inspect_node(node_id))['name']}"
        except EngineError:
            return f"node {node_id[:12]}"

    def _replica(self, service_id: str) -> tuple[Replica, dict[str, Any] | None]:
        api = self.backend.client.api
        with engine_errors(f"inspect {service_id[:12]}"):
            service = api.inspect_service(service_id)
            task = current_task(api.tasks(filters={"service": service_id}))
            address = ""
            if task is not None and task.get("NodeID"):
                address = node_record(api.inspect_node(task["NodeID"]))["address"]
        return service_replica(service, task, address), task

    def list_replicas(self, app: str | None = None) -> list[Replica]:
        labels = [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.backend.instance}", LABEL_PROCESS]
        if app is not None:
            labels.append(f"{LABEL_APP}={app}")
        with engine_errors("list services"):
            services = self.backend.client.api.services(filters={"label": labels})
        out = []
        for service in services:
            try:
                out.append(self._replica(service["ID"])[0])
            except EngineError:
                continue  # removed meanwhile
        return out

    def stop_and_remove(self, replica_id: str, /, timeout: int) -> None:
        """Remove the service: Swarm stops its task (asking, then forcing after its grace period)."""
        try:
            with engine_errors(f"remove {replica_id[:12]}"):
                self.backend.client.api.remove_service(replica_id)
        except EngineError as e:
            if isinstance(e.__cause__, docker.errors.NotFound):
                return
            raise
