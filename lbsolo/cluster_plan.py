"""The Swarm backend's and the cluster verbs' decisions, as pure functions over plain data.

Which backend a setting names and what it cannot do yet; whether a node name or an address a
user typed is acceptable; which node a name means; whether draining a node would leave the
cluster nothing to run on; the node table's rows; the command a new node runs to join; where
release images go (the registry: its address, a release's repository, what a failed push or
pull means and its fix). The I/O
around them is lbsolo.core_cluster (use cases) and lbsolo.engine_swarm_nodes (the engine). This
module must not import docker or any other outside library, nor do I/O.

Draining (`nodes:drain`) is refused when it would leave no node both ready and active, whatever
the drained node's role: Swarm would then stop every replica and have nowhere to put them. The
last active manager may be drained when a worker is active (the manager keeps managing; its
replicas move to the worker).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from lbsolo.errors import Conflict, InvalidInput, NotFound

BACKENDS = ("docker", "swarm")

#: What the swarm backend does not do yet, each said at start as "X is not available on the swarm backend yet".
SWARM_NOT_YET = (
    "spreading an app's replicas over the nodes (replicas run on this manager's engine, as on the docker backend)",
    "exec, stats and builds on other nodes' engines",
    "add-ons and volumes pinned to the node that holds their data",
    "a pool of build hosts",
)

SWARM_PORT = 2377  # where managers listen for nodes joining
NODE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
AVAILABILITIES = ("active", "drain")


def validate_backend(name: str) -> str:
    """The backend a setting (LBSOLO_BACKEND, `up --backend`) names, checked."""
    chosen = (name or "docker").strip().lower()
    if chosen not in BACKENDS:
        raise InvalidInput(f"unknown backend {name!r}: LBSOLO_BACKEND is docker (the default) or swarm")
    return chosen


def not_yet(backend: str) -> list[str]:
    """What the chosen backend cannot do yet, one sentence each (said at start, shown by `lbsolo nodes`)."""
    if backend != "swarm":
        return []
    return [f"{what[0].upper()}{what[1:]} is not available on the swarm backend yet" for what in SWARM_NOT_YET]


def swarm_refusal(backend: str, swarm: Mapping[str, Any]) -> str | None:
    """Why the daemon must not start on this backend with the engine in this swarm state; None: it may.

    The swarm backend schedules through the engine it talks to, so that engine must manage the
    swarm; one not in a swarm yet is fine (`lbsolo cluster:init` makes it a manager)."""
    if backend != "swarm":
        return None
    state = swarm.get("state", "inactive")
    if state == "active" and not swarm.get("manager"):
        managers = ", ".join(swarm.get("managers") or []) or "another node"
        return (
            f"the swarm backend needs a manager, and this engine is a worker of a swarm managed at {managers}: "
            "run lbsolo on a manager, or `docker swarm leave` here and `lbsolo cluster:init`"
        )
    if state in ("locked", "error", "pending"):
        return f"this engine's swarm is {state}: {_fix(state)}"
    return None


def manager_refusal(swarm: Mapping[str, Any]) -> str | None:
    """Why a cluster verb other than init cannot run against this engine; None: it manages a swarm."""
    state = swarm.get("state", "inactive")
    if state == "inactive":
        return "this engine is not in a swarm yet: run `lbsolo cluster:init` first"
    if state == "active" and not swarm.get("manager"):
        managers = ", ".join(swarm.get("managers") or []) or "another node"
        return f"this engine is a worker of a swarm managed at {managers}: run the cluster verbs against a manager"
    if state != "active":
        return f"this engine's swarm is {state}: {_fix(state)}"
    return None


def init_refusal(swarm: Mapping[str, Any], advertise_addr: str | None) -> str | None:
    """Why `cluster:init` cannot make or keep this engine a swarm manager; None: it may (or already is)."""
    state = swarm.get("state", "inactive")
    if state == "inactive":
        return None
    if state == "active" and swarm.get("manager"):
        mine = swarm.get("node_addr", "")
        if advertise_addr and host_of(advertise_addr) != mine:
            return (
                f"this engine already manages a swarm, advertised at {mine}, not {host_of(advertise_addr)}: "
                "lbsolo does not move a swarm's address (`docker swarm leave --force` and init again to start over)"
            )
        return None
    if state == "active":
        managers = ", ".join(swarm.get("managers") or []) or "another node"
        return (
            f"this engine is a worker of another swarm, managed at {managers}: run lbsolo on that swarm's manager, "
            "or leave it first (`docker swarm leave`)"
        )
    return f"this engine's swarm is {state}: {_fix(state)}"


def _fix(state: str) -> str:
    return {
        "locked": "unlock it (`docker swarm unlock`) and start lbsolo again",
        "pending": "it is still joining a swarm; wait, or `docker swarm leave --force`",
    }.get(state, "see `docker info`, or `docker swarm leave --force` and `lbsolo cluster:init`")


def validate_node_ref(ref: str) -> str:
    """A node's name (its host name) or id as typed: letters, digits, '.', '_', '-'."""
    value = ref.strip()
    if not NODE_REF.fullmatch(value):
        raise InvalidInput(f"{ref!r} is not a node name or id: letters, digits, '.', '_' and '-' (see `lbsolo nodes`)")
    return value


def validate_advertise_addr(addr: str | None) -> str | None:
    """The address other nodes reach this manager at: an IP address (optionally :port), not loopback."""
    if addr is None or not addr.strip():
        return None
    value = addr.strip()
    host, port = value, None
    if value.startswith("["):  # [v6]:port
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (rest or None)
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(f"--advertise-addr {addr!r} is not an IP address (other nodes must reach it)") from None
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise InvalidInput(f"--advertise-addr {addr!r}: {port!r} is not a port")
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        raise InvalidInput(
            f"--advertise-addr {addr!r}: other nodes cannot reach this machine there; give an address of its network"
        )
    return value


def host_of(addr: str) -> str:
    """'10.0.0.1:2377' -> '10.0.0.1'; '[fd00::1]:2377' -> 'fd00::1'."""
    if addr.startswith("["):
        return addr[1:].partition("]")[0]
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


def node_address(status_addr: str, manager_addr: str | None) -> str:
    """A node's address as others reach it. Engines report 0.0.0.0 (or loopback) for a manager's
    own status, whose manager address is the real one."""
    if manager_addr and status_addr in ("", "0.0.0.0", "127.0.0.1", "::"):
        return host_of(manager_addr)
    return status_addr


def join_command(token: str, manager_addr: str) -> str:
    """What a new node runs to join as a worker."""
    addr = manager_addr if ":" in manager_addr.rsplit("]", 1)[-1] else f"{manager_addr}:{SWARM_PORT}"
    return f"docker swarm join --token {token} {addr}"


REGISTRY = re.compile(
    r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})(?P<prefix>(/[a-z0-9]+([._-][a-z0-9]+)*)*)"
)
REGISTRY_PORT = 5443  # where lbsolo's own registry listens (LBSOLO_REGISTRY_PORT)


def validate_registry(value: str) -> str:
    """LBSOLO_REGISTRY, checked: `host:port` or `host:port/prefix` (no scheme, no trailing slash)."""
    match = REGISTRY.fullmatch(value.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise InvalidInput(
            f"LBSOLO_REGISTRY {value!r}: give the registry as host:port or host:port/prefix (e.g. 10.0.0.1:5443)"
        )
    return value.strip()


def own_registry(address: str, port: int) -> str:
    """lbsolo's own registry as engines name it: host:port of the manager's address."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def registry_host(registry: str) -> str:
    """'10.0.0.1:5443/team' -> '10.0.0.1:5443': the name engines trust (certs.d/<host:port>/ca.crt)."""
    return registry.split("/", 1)[0]


def release_repository(registry: str, app: str) -> str:
    """Where an app's release images are pushed: <registry>/<app>."""
    return f"{registry}/{app}"


def digest_reference(registry: str, app: str, digest: str) -> str:
    """What services pull: the image by its content, not by a tag that may move."""
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ValueError(f"not an image digest: {digest!r}")
    return f"{release_repository(registry, app)}@{digest}"


def registry_trust_step(registry: str, ca_path: str, client_cert: str, client_key: str) -> str:
    """What a node runs (as root) so that its engine trusts the registry and may use it, given the
    files on this machine: the registry's CA and the nodes' client certificate and key."""
    d = f"/etc/docker/certs.d/{registry_host(registry)}"
    copies = f"cp {ca_path} {d}/ca.crt && cp {client_cert} {d}/client.cert && cp {client_key} {d}/client.key"
    return f"mkdir -p {d} && {copies}"


def registry_trust_command(registry: str, ca_pem: str, client_cert_pem: str, client_key_pem: str) -> str:
    """The same step with the files inline, for a new node: a secret (the client key), like the join token."""
    d = f"/etc/docker/certs.d/{registry_host(registry)}"
    files = [("ca.crt", ca_pem), ("client.cert", client_cert_pem), ("client.key", client_key_pem)]
    if any(not pem.startswith("-----BEGIN ") or "'" in pem or "\nEOF" in pem for _, pem in files):
        raise ValueError("not a PEM file")
    writes = [f"cat > {d}/{name} <<'EOF'\n{pem.strip()}\nEOF" for name, pem in files]
    return "\n".join([f"mkdir -p {d} && touch {d}/client.key && chmod 600 {d}/client.key", *writes])


def _registry_fix(registry: str) -> str:
    host = registry_host(registry)
    return (
        f"make sure the registry runs and {host} is reachable from there (firewall, address), and that its "
        f"engine trusts it: /etc/docker/certs.d/{host}/ holds the registry's CA and the nodes' client certificate "
        "(`lbsolo cluster:join-command` prints the step)"
    )


def push_problem(registry: str, why: str) -> str:
    """The message for a push that failed, naming the registry and the fix."""
    low = why.lower()
    if any(w in low for w in ("x509", "certificate")):
        return (
            f"the manager's engine does not trust the registry {registry}, or holds no client certificate for it: "
            f"{why}; put them in /etc/docker/certs.d/{registry_host(registry)}/ on the manager (the step said at start)"
        )
    return f"the manager's engine cannot push to the registry {registry}: {why}; {_registry_fix(registry)}"


def pull_problem(node: str, registry: str, why: str) -> str:
    """The message for a task whose node could not pull its image from the registry."""
    return f"{node} cannot reach registry {registry}: {why}; on {node}, {_registry_fix(registry)}"


def find_node(nodes: Iterable[Mapping[str, Any]], ref: str) -> Mapping[str, Any]:
    """The node `ref` names: its id, its name (host name), or a unique prefix of its id."""
    ref = validate_node_ref(ref)
    listed = list(nodes)
    for node in listed:
        if node["id"] == ref:
            return node
    named = [n for n in listed if n["name"] == ref]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        ids = ", ".join(sorted(n["id"][:12] for n in named))
        raise Conflict(f"{len(named)} nodes are named {ref!r} ({ids}): give the node's id")
    prefixed = [n for n in listed if n["id"].startswith(ref)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise Conflict(f"{ref!r} begins the ids of {len(prefixed)} nodes: give more of the id, or the name")
    raise NotFound(f"no node {ref!r} in this swarm: `lbsolo nodes` lists them")


def schedulable(node: Mapping[str, Any]) -> bool:
    return node["status"] == "ready" and node["availability"] == "active"


def drain_refusal(nodes: Iterable[Mapping[str, Any]], target: Mapping[str, Any]) -> str | None:
    """Why draining `target` must be refused; None: it may (already drained counts as may)."""
    if target["availability"] == "drain":
        return None
    others = [n for n in nodes if n["id"] != target["id"] and schedulable(n)]
    if others:
        return None
    return (
        f"draining {target['name']} would leave no ready, active node to run replicas on: "
        "join another node (`lbsolo cluster:join-command`) or activate one first"
    )


def node_rows(nodes: Iterable[Mapping[str, Any]], replicas: Mapping[str, int], self_id: str) -> list[dict[str, Any]]:
    """The node table: managers first (the leader first of them), then by name; each with how many
    of this instance's replicas run on it and whether it is the engine lbsolo talks to."""

    def order(n: Mapping[str, Any]) -> tuple[int, int, str, str]:
        return (n["role"] != "manager", not n.get("leader"), n["name"], n["id"])

    rows = []
    for n in sorted(nodes, key=order):
        role = "manager (leader)" if n.get("leader") else n["role"]
        rows.append(
            {
                "id": n["id"],
                "name": n["name"],
                "address": n["address"],
                "role": n["role"],
                "role_label": role,
                "leader": bool(n.get("leader")),
                "status": n["status"],
                "availability": n["availability"],
                "cpus": n["cpus"],
                "memory": n["memory"],
                "engine": n.get("engine", ""),
                "replicas": int(replicas.get(n["id"], 0)),
                "self": n["id"] == self_id,
            }
        )
    return rows


def cpus_label(cpus: float) -> str:
    return f"{cpus:g}"


def memory_label(n: int) -> str:
    """Bytes as a short figure: 1.9 GB, 512 MB."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
