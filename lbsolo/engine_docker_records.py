"""What the Docker engine's answers mean: its JSON documents turned into lbsolo's records.

Pure functions over the plain dicts the engine's HTTP API returns (a container list entry, a
container inspection, a stats reading, an image list entry, an event): no sockets, no calls. It
must not import docker or requests (lbsolo.engine_docker makes the calls and hands the answers
here), and it decides nothing: a field the engine left out becomes an empty value, not a guess.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from lbsolo.engine import EngineEvent, ImageRecord, ReplicaStats
from lbsolo.models import LABEL_APP, LABEL_PORT, LABEL_PROCESS, LABEL_RELEASE, Replica

# Where the Docker-local backend publishes replicas' ports when it publishes them.
LOOPBACK = "127.0.0.1"


def _reach(
    labels: Mapping[str, str], published: int | None, networks: Mapping[str, Any] | None
) -> tuple[str, int | None]:
    """Where a replica's web port is reached: its port published on the loopback, else its address
    on its network with the port its label names (a replica that is not running has neither)."""
    if published is not None:
        return LOOPBACK, published
    port = labels.get(LABEL_PORT) or ""
    if port.isdigit():
        for _, endpoint in sorted((networks or {}).items()):
            if address := str(endpoint.get("IPAddress") or ""):
                return address, int(port)
    return LOOPBACK, None


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
    host, host_port = _reach(labels, host_port, (item.get("NetworkSettings") or {}).get("Networks"))
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
        host=host,
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
    host, host_port = _reach(labels, host_port, (attrs.get("NetworkSettings") or {}).get("Networks"))
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
        host=host,
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


class CpuBaselines:
    """Each replica's previous CPU counters, so that a one-shot reading measures CPU since then."""

    def __init__(self) -> None:
        self._before: dict[str, Any] = {}

    def numbers(self, replica_id: str, raw: Mapping[str, Any]) -> ReplicaStats:
        if len(self._before) > 4096:  # replicas long gone: forget them all, once in a while
            self._before.clear()
        before = self._before.get(replica_id)
        self._before[replica_id] = raw.get("cpu_stats") or {}
        if before is None:  # a first reading: nothing to measure CPU against yet
            return {**stats_numbers(raw), "cpu_percent": 0.0}
        return stats_numbers({**raw, "precpu_stats": before})


def listed_image(item: Mapping[str, Any]) -> ImageRecord:
    """An image from one entry of the engine's image list (`GET /images/json`)."""
    return {
        "id": str(item.get("Id", "")),
        "app": (item.get("Labels") or {}).get(LABEL_APP, ""),
        "size": int(item.get("Size") or 0),
        "tags": [t for t in item.get("RepoTags") or [] if t != "<none>:<none>"],
        "created": str(item.get("Created", "")),
    }


def container_event(event: Mapping[str, Any]) -> EngineEvent:
    """One container event of the engine's event stream (`GET /events`)."""
    attrs = (event.get("Actor") or {}).get("Attributes") or {}
    return {
        "action": str(event.get("Action", "")),
        "id": str(event.get("id", "")),
        "app": attrs.get(LABEL_APP, ""),
    }
