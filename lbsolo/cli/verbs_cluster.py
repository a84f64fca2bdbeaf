"""Cluster verbs: `cluster:init`, `cluster:join-command`, `nodes`, `nodes:drain`, `nodes:activate`, `node:firewall`.

A cluster is a Docker Swarm the daemon's engine manages; `lbsolo up --backend swarm` schedules
on it (LBSOLO_BACKEND). The verbs work on the docker backend too: initialise, join nodes, then
start lbsolo with the swarm backend.
"""

from __future__ import annotations

from typing import Annotated

import typer

from lbsolo.cli import client_cluster as api
from lbsolo.cli.common import Table, _client, app, clean_errors, console, err, escape

NodeArg = Annotated[str, typer.Argument(help="Node name (its host name) or id (see: lbsolo nodes).")]


def _memory(n: int) -> str:
    from lbsolo.cluster_plan import memory_label

    return memory_label(n)


def _node(ref: str) -> str:
    """The node as typed, checked here: a '/' would not even reach the daemon's route."""
    from lbsolo.cluster_plan import validate_node_ref

    return validate_node_ref(ref)


@app.command("cluster:init")
@clean_errors
def cluster_init(
    advertise_addr: Annotated[
        str | None, typer.Option(help="The IP address the other nodes reach this engine at (needed if it has several).")
    ] = None,
) -> None:
    """Initialise a Swarm on the daemon's engine, if it is in none yet (running it again changes nothing)."""
    with _client() as c:
        done = api.init(c, advertise_addr)
    if not done["created"]:
        console.print(f"This engine manages a swarm already, at {done['address']}: nothing changed.")
        return
    console.print(f"Initialised a swarm in {done['seconds']:.2f}s; this engine manages it at {done['address']}.")
    console.print("Add a node: run what `lbsolo cluster:join-command` prints on it.", style="dim")


@app.command("cluster:join-command")
@clean_errors
def cluster_join_command() -> None:
    """Print the command a new node runs to join the swarm as a worker (it holds the join token: keep it secret)."""
    with _client() as c:
        join = api.join_command(c)
    err.print("Run this on the new node (the token lets any machine join: keep it secret):", style="dim")
    console.print(join["command"], markup=False, highlight=False, soft_wrap=True)
    trust = join.get("trust") or ""
    if trust.startswith("#"):  # what to do, not a command: stdout stays a script the node can run
        err.print(f"The node's engine must trust the registry {join['registry']}: {trust[1:].strip()}", style="dim")
    elif trust:
        err.print(f"Then this, so that its engine trusts the registry {join['registry']}:", style="dim")
        console.print(trust, markup=False, highlight=False, soft_wrap=True)
    if join.get("firewall"):
        err.print(
            "Then, as root, on every node (this one too), so that only this manager reaches the apps' ports "
            "(`--print` shows the iptables lines instead):",
            style="dim",
        )
        console.print(join["firewall"], markup=False, highlight=False, soft_wrap=True)


@app.command("nodes")
@clean_errors
def nodes_list() -> None:
    """List the swarm's nodes: name, address, role, status, availability, CPUs, memory, replicas of this lbsolo."""
    with _client() as c:
        nodes = api.nodes(c)
    table = Table("node", "id", "address", "role", "status", "availability", "cpus", "memory", "replicas")
    for n in nodes:
        status = n["status"] if n["status"] == "ready" else f"[red]{n['status']}[/]"
        availability = n["availability"] if n["availability"] == "active" else f"[yellow]{n['availability']}[/]"
        table.add_row(
            escape(n["name"]) + (" *" if n["self"] else ""), n["id"][:12], n["address"], n["role_label"], status,
            availability, f"{n['cpus']:g}", _memory(n["memory"]), str(n["replicas"]),
        )  # fmt: skip
    console.print(table)


@app.command("nodes:drain")
@clean_errors
def nodes_drain(node: NodeArg) -> None:
    """Stop scheduling on a node and move its replicas to the others (refused if no other node is ready and active)."""
    ref = _node(node)
    with _client() as c:
        n = api.drain(c, ref)
    console.print(f"Drained {escape(n['name'])} ({n['id'][:12]}): its replicas move to the other nodes.")


@app.command("nodes:activate")
@clean_errors
def nodes_activate(node: NodeArg) -> None:
    """Let a drained node take replicas again."""
    ref = _node(node)
    with _client() as c:
        n = api.activate(c, ref)
    console.print(f"Activated {escape(n['name'])} ({n['id'][:12]}).")


@app.command("node:firewall")
@clean_errors
def node_firewall(
    instance: Annotated[
        str, typer.Option(help="The lbsolo instance whose rules these are (cluster:join-command prints it).")
    ],
    manager: Annotated[
        list[str] | None, typer.Option(help="An address the manager's proxy connects from (repeat for several).")
    ] = None,
    ports: Annotated[str, typer.Option(help="The range replicas publish on (the manager's LBSOLO_SWARM_PORTS).")] = (
        "30000-30999"
    ),
    remove: Annotated[bool, typer.Option("--remove", help="Delete this instance's rules instead.")] = False,
    print_only: Annotated[bool, typer.Option("--print", help="Print the iptables lines; change nothing.")] = False,
) -> None:
    """On this node, as root: let only the manager reach the apps' published ports (Docker's DOCKER-USER chain).

    Runs here, without the daemon. Running it again changes nothing; it touches no rule but this instance's."""
    from lbsolo import cluster_firewall as fw
    from lbsolo.engine_swarm_firewall import NodeFirewall

    fw.tag(instance)
    if remove:
        done = NodeFirewall().remove(instance)
        removed = sum(c.removed for c in done.families.values())
        console.print(
            f"Removed {removed} rule(s) of lbsolo-{escape(instance)} from DOCKER-USER in {done.seconds:.2f}s."
        )
        return
    managers = fw.parse_managers(manager or [])
    port_range = fw.parse_ports(ports, "--ports")
    if print_only:
        for line in fw.commands(instance, managers, port_range):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    done = NodeFirewall().apply(instance, managers, port_range)
    who = ", ".join(str(m) for m in managers)
    for family, change in sorted(done.families.items()):
        what = "already in place: nothing changed" if change.unchanged else f"{change.added} rules in place"
        console.print(f"IPv{family}: {what} (ports {port_range} admitted from {who} only).")
    for family, why in sorted(done.skipped.items()):
        err.print(f"IPv{family}: skipped, {why}.", style="dim")
    err.print(f"Took {done.seconds:.2f}s.", style="dim")
