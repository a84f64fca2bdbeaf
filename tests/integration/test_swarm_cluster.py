"""The cluster verbs on a real two-node Swarm (issue 17): cluster:init, cluster:join-command, nodes,
nodes:drain and nodes:activate, through `lbsolo` (CLI, REST and the Nodes page) against real engines.

Two private engines (private_swarm.py), each in a network namespace of its own on a private
bridge: the manager, where `lbsolo up --backend swarm` runs, and a worker that joins with the
command lbsolo prints. The host's shared engine is never put in swarm mode and is not needed.

Slow (two engines, a swarm): always run in CI; elsewhere only with LBSOLO_TEST_MULTINODE=1.
The times the engines took (init, join, both nodes ready) are printed (pytest -s).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .private_engine import NetnsDaemon
from .private_swarm import Node, private_nodes

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not IN_CI and os.environ.get("LBSOLO_TEST_MULTINODE", "") in ("", "0"),
        reason="multi-node Swarm tests are slow: set LBSOLO_TEST_MULTINODE=1 (they always run in CI)",
    ),
]


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[Node]]:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the Swarm tests need root (network namespaces, private dockerd)")
        pytest.skip("needs root: network namespaces and private dockerd")
    with private_nodes(2) as made:
        yield made


def daemon_on(node: Node, home: Any, backend: str) -> NetnsDaemon:
    return NetnsDaemon(home=home, engine=node.engine, extra_env={"LBSOLO_BACKEND": backend})


@pytest.fixture
def manager_daemon(nodes, tmp_path) -> Iterator[NetnsDaemon]:
    d = daemon_on(nodes[0], tmp_path / "home", "swarm")
    d.start()
    try:
        yield d
    finally:
        d.stop()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], why: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert why in " ".join(result.stderr.split()), result.stderr


def node_table(d: NetnsDaemon) -> list[dict[str, Any]]:
    answer = d.api_get("/api/nodes")
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def swarm_state(node: Node) -> str:
    return node.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()


def wait_for(check, within: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"{what} not within {within}s")
        time.sleep(0.1)
    return time.monotonic() - start


def test_init_join_nodes_drain_and_activate(nodes, manager_daemon):
    manager, worker = nodes
    d = manager_daemon
    log = d.log_path.read_text() if d.log_path else ""
    assert "is not available on the swarm backend yet" in log  # said at start, one line each
    assert "This engine is not in a swarm yet" in log

    # Before init: each verb says what to do first; a loopback address is refused; nothing changes.
    refused(d.cli("cluster:join-command"), "this engine is not in a swarm yet: run `lbsolo cluster:init` first")
    refused(d.cli("nodes"), "run `lbsolo cluster:init` first")
    refused(d.cli("cluster:init", "--advertise-addr", "127.0.0.1"), "other nodes cannot reach this machine there")
    assert swarm_state(manager) == "inactive"

    started = time.monotonic()
    out = ok(d.cli("cluster:init", "--advertise-addr", manager.address))
    init_seconds = time.monotonic() - started
    assert re.search(rf"Initialised a swarm in [0-9.]+s; this engine manages it at {manager.address}", out), out
    assert "nothing changed" in ok(d.cli("cluster:init"))  # idempotent
    assert "nothing changed" in ok(d.cli("cluster:init", "--advertise-addr", manager.address))

    join, step = ok(d.cli("cluster:join-command")).strip().splitlines()  # then the node's firewall step
    assert step == f"lbsolo node:firewall --instance {d.instance} --manager {manager.address} --ports 30000-30999"
    assert re.fullmatch(rf"docker swarm join --token SWMTKN-1-[\w-]+ {re.escape(manager.address)}:2377", join), join
    token = shlex.split(join)[4]
    started = time.monotonic()
    joined = worker.docker(*shlex.split(join)[1:])  # what an operator runs on the new node
    join_seconds = time.monotonic() - started
    assert joined.returncode == 0 and "joined a swarm as a worker" in joined.stdout, joined.stderr

    def two_ready() -> bool:
        return [n["status"] for n in node_table(d)] == ["ready", "ready"]

    ready_seconds = wait_for(two_ready, 60, "both nodes ready")
    rows = {n["name"]: n for n in node_table(d)}
    assert set(rows) == {"lbsolo-n0", "lbsolo-n1"}
    m, w = rows["lbsolo-n0"], rows["lbsolo-n1"]
    assert (m["role"], m["leader"], m["self"], m["address"]) == ("manager", True, True, manager.address)
    assert (w["role"], w["leader"], w["self"], w["address"]) == ("worker", False, False, worker.address)
    assert m["availability"] == w["availability"] == "active"
    assert m["cpus"] > 0 and m["memory"] > 0 and m["replicas"] == 0
    table = ok(d.cli("nodes"))
    assert re.search(r"lbsolo-n0 \*.*manager \(leader\).*ready.*active", table), table
    assert re.search(rf"lbsolo-n1 .*{re.escape(worker.address)}.*worker.*ready.*active", table), table

    # Drain the worker: the engine has it drained; then the manager is the last active node.
    assert "Drained lbsolo-n1" in ok(d.cli("nodes:drain", "lbsolo-n1"))
    assert {n["name"]: n["availability"] for n in node_table(d)} == {"lbsolo-n0": "active", "lbsolo-n1": "drain"}
    engine_view = manager.docker("node", "inspect", "lbsolo-n1", "--format", "{{.Spec.Availability}}")
    assert engine_view.stdout.strip() == "drain"
    refused(d.cli("nodes:drain", "lbsolo-n0"), "draining lbsolo-n0 would leave no ready, active node")
    refused(d.cli("nodes:drain", "nope"), "no node 'nope' in this swarm: `lbsolo nodes` lists them")
    refused(d.cli("nodes:activate", "a/b"), "is not a node name or id")
    assert "Activated lbsolo-n1" in ok(d.cli("nodes:activate", w["id"][:12]))
    assert {n["name"]: n["availability"] for n in node_table(d)} == {"lbsolo-n0": "active", "lbsolo-n1": "active"}

    # The Nodes page shows both, with a Drain button each; the join command only on its form.
    def page() -> str:
        with httpx.Client(base_url=d.api, timeout=10) as ui:
            assert ui.post("/ui/login", data={"token": d.token, "next": "/ui/nodes"}).status_code == 303
            shown = ui.get("/ui/nodes")
            assert shown.status_code == 200
            return shown.text

    html = d.in_netns(page)
    assert 'data-node="lbsolo-n0"' in html and 'data-node="lbsolo-n1"' in html
    assert html.count(">Drain</button>") == 2 and token not in html

    # The token went to the admin's terminal only: not into the daemon's log or the audit.
    assert token not in d.log_path.read_text()
    audit = d.home / "audit" / "audit.log"
    assert audit.exists() and "POST /api/cluster/init" in audit.read_text() and token not in audit.read_text()
    print(f"\nswarm: init {init_seconds:.2f}s (CLI to answer), join {join_seconds:.2f}s, ready {ready_seconds:.2f}s")


def test_a_worker_engine_is_refused_clearly(nodes, tmp_path):
    """On an engine that is a worker of a swarm: the swarm backend does not start, and cluster:init
    (from a daemon on the docker backend) says which swarm it belongs to. Runs after the test above
    joined nodes[1]; joins it here if run alone."""
    manager, worker = nodes
    if swarm_state(worker) != "active":
        if swarm_state(manager) != "active":
            ok(manager.docker("swarm", "init", "--advertise-addr", manager.address))
        token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        ok(worker.docker("swarm", "join", "--token", token, f"{manager.address}:2377"))
    swarm = daemon_on(worker, tmp_path / "swarm-home", "swarm")
    try:
        with pytest.raises(AssertionError, match="daemon exited early") as failed:
            swarm.start()
    finally:
        swarm.stop()
    assert "the swarm backend needs a manager, and this engine is a worker of a swarm managed at" in str(failed.value)
    assert f"{manager.address}:2377" in str(failed.value)

    local = daemon_on(worker, tmp_path / "docker-home", "docker")
    local.start()
    try:
        why = f"this engine is a worker of another swarm, managed at {manager.address}:2377"
        refused(local.cli("cluster:init"), why)
        refused(local.cli("cluster:join-command"), "this engine is a worker of a swarm managed at")
    finally:
        local.stop()
