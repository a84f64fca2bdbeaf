"""The Swarm backend's pure decisions (lbsolo.cluster_plan) and the engine answers' readers
(lbsolo.engine_swarm_nodes.node_record, swarm_status): no engine, no sockets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lbsolo import cluster_plan as plan
from lbsolo.config import Settings
from lbsolo.errors import Conflict, InvalidInput, NotFound


def node(id_: str, name: str, *, role: str = "worker", status: str = "ready", availability: str = "active",
         leader: bool = False) -> dict:  # fmt: skip
    return {
        "id": id_, "name": name, "address": "10.0.0.9", "role": role, "leader": leader, "status": status,
        "availability": availability, "cpus": 2.0, "memory": 2 * 1024**3, "engine": "20.10", "labels": {},
    }  # fmt: skip


# ---- the backend


def test_the_backend_is_docker_unless_swarm_is_named(monkeypatch):
    assert plan.validate_backend("") == "docker"
    assert plan.validate_backend("Swarm ") == "swarm"
    with pytest.raises(InvalidInput, match="docker \\(the default\\) or swarm"):
        plan.validate_backend("kubernetes")
    monkeypatch.delenv("LBSOLO_BACKEND", raising=False)
    assert Settings.load().backend == "docker"
    monkeypatch.setenv("LBSOLO_BACKEND", "swarm")
    assert Settings.load().backend == "swarm"
    assert Settings.load(backend="docker").backend == "docker"  # `up --backend` over the environment


def test_up_refuses_an_unknown_backend_before_it_binds_or_connects(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "LBSOLO_HOME": str(tmp_path / "home"), "DOCKER_HOST": "unix:///nonexistent"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # this tree's lbsolo, wherever pytest runs
    done = subprocess.run(
        [sys.executable, "-m", "lbsolo", "up", "--backend", "kubernetes"], env=env, capture_output=True, text=True,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert "unknown backend 'kubernetes': LBSOLO_BACKEND is docker (the default) or swarm" in done.stderr


def test_up_on_swarm_refuses_a_bad_port_range_before_it_connects(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "LBSOLO_HOME": str(tmp_path / "home"), "DOCKER_HOST": "unix:///nonexistent"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["LBSOLO_SWARM_PORTS"] = "31000-30000"
    done = subprocess.run(
        [sys.executable, "-m", "lbsolo", "up", "--backend", "swarm"], env=env, capture_output=True, text=True,
        cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "LBSOLO_SWARM_PORTS '31000-30000': the first port is above the last; write 30000-31000" in done.stderr


def test_what_the_swarm_backend_cannot_do_yet_is_said_one_line_each():
    assert plan.not_yet("docker") == []
    lines = plan.not_yet("swarm")
    assert len(lines) == len(plan.SWARM_NOT_YET) >= 3
    assert all(line.endswith("is not available on the swarm backend yet") for line in lines)
    assert lines[0].startswith("Spreading an app's replicas over the nodes")


@pytest.mark.parametrize(
    ("swarm", "refused"),
    [
        ({"state": "inactive"}, None),  # cluster:init comes after `up`
        ({"state": "active", "manager": True}, None),
        ({"state": "active", "manager": False, "managers": ["10.0.0.1:2377"]}, "worker of a swarm managed at 10.0.0.1"),
        ({"state": "locked"}, "docker swarm unlock"),
        ({"state": "pending"}, "still joining"),
    ],
)
def test_the_swarm_backend_starts_only_on_an_engine_that_can_manage(swarm, refused):
    assert plan.swarm_refusal("docker", swarm) is None  # the docker backend never minds
    got = plan.swarm_refusal("swarm", swarm)
    assert (got is None) if refused is None else (refused in str(got))


def test_the_swarm_code_is_not_loaded_by_the_daemon_the_api_or_the_cli():
    """The idle daemon's memory budget: the swarm backend's engine modules load only when used."""
    code = (
        "import sys, lbsolo.daemon, lbsolo.api.rest, lbsolo.cli.verbs; "
        "print(sorted(m for m in sys.modules if m.startswith('lbsolo.engine_swarm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- input


@pytest.mark.parametrize("ref", ["lbsolo-n1", "rja96eelezqi", "node_2.example"])
def test_node_names_and_ids_are_accepted(ref):
    assert plan.validate_node_ref(f" {ref} ") == ref


@pytest.mark.parametrize("ref", ["", "-x", "a b", "../etc", "n1;rm", "x" * 300])
def test_other_node_names_are_refused(ref):
    with pytest.raises(InvalidInput, match="not a node name or id"):
        plan.validate_node_ref(ref)


@pytest.mark.parametrize(
    ("addr", "ok"),
    [
        ("10.0.0.1", "10.0.0.1"), ("10.0.0.1:2377", "10.0.0.1:2377"), ("fd00::1", "fd00::1"),
        ("[fd00::1]:2377", "[fd00::1]:2377"), (None, None), ("  ", None),
    ],
)  # fmt: skip
def test_advertise_addresses_that_other_nodes_can_reach(addr, ok):
    assert plan.validate_advertise_addr(addr) == ok


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("eth0", "not an IP address"), ("example.com", "not an IP address"), ("10.0.0.1:99999", "not a port"),
        ("127.0.0.1", "cannot reach"), ("0.0.0.0", "cannot reach"), ("::1", "cannot reach"),
        ("10.0.0.1:x", "not a port"),
    ],
)  # fmt: skip
def test_advertise_addresses_others_cannot_use_are_refused(addr, why):
    with pytest.raises(InvalidInput, match=why):
        plan.validate_advertise_addr(addr)


# ---- init and the join command


def test_init_is_idempotent_on_a_manager_and_refused_on_a_worker():
    assert plan.init_refusal({"state": "inactive"}, None) is None
    manager = {"state": "active", "manager": True, "node_addr": "10.0.0.1"}
    assert plan.init_refusal(manager, None) is None
    assert plan.init_refusal(manager, "10.0.0.1:2377") is None
    assert "advertised at 10.0.0.1, not 10.0.0.2" in str(plan.init_refusal(manager, "10.0.0.2"))
    worker = {"state": "active", "manager": False, "managers": ["10.0.0.7:2377"]}
    assert "worker of another swarm, managed at 10.0.0.7:2377" in str(plan.init_refusal(worker, None))
    assert "still joining" in str(plan.init_refusal({"state": "pending"}, None))


def test_the_other_verbs_need_a_manager():
    assert "lbsolo cluster:init" in str(plan.manager_refusal({"state": "inactive"}))
    assert "worker" in str(plan.manager_refusal({"state": "active", "manager": False}))
    assert plan.manager_refusal({"state": "active", "manager": True}) is None


def test_the_join_command():
    assert plan.join_command("SWMTKN-1-abc", "10.0.0.1:2377") == "docker swarm join --token SWMTKN-1-abc 10.0.0.1:2377"
    assert plan.join_command("T", "10.0.0.1") == "docker swarm join --token T 10.0.0.1:2377"
    assert plan.join_command("T", "[fd00::1]:2377").endswith(" [fd00::1]:2377")


def test_a_managers_own_address_comes_from_its_manager_status():
    assert plan.node_address("0.0.0.0", "10.0.0.1:2377") == "10.0.0.1"
    assert plan.node_address("10.0.0.2", None) == "10.0.0.2"
    assert plan.node_address("10.0.0.2", "10.0.0.2:2377") == "10.0.0.2"
    assert plan.host_of("[fd00::1]:2377") == "fd00::1"


# ---- nodes


def test_a_node_is_found_by_id_name_or_unique_id_prefix():
    nodes = [node("abc123", "web-1"), node("abd456", "web-2"), node("zzz999", "twin"), node("zzy888", "twin")]
    assert plan.find_node(nodes, "abc123")["name"] == "web-1"
    assert plan.find_node(nodes, "web-2")["id"] == "abd456"
    assert plan.find_node(nodes, "abc")["id"] == "abc123"
    with pytest.raises(Conflict, match="'ab' begins the ids of 2 nodes: give more of the id, or the name"):
        plan.find_node(nodes, "ab")
    with pytest.raises(NotFound, match="no node 'nope' in this swarm: `lbsolo nodes` lists them"):
        plan.find_node(nodes, "nope")
    with pytest.raises(Conflict, match="2 nodes are named 'twin' \\(zzy888, zzz999\\): give the node's id"):
        plan.find_node(nodes, "twin")


def test_draining_is_refused_only_when_no_other_node_could_run_replicas():
    manager = node("m", "mgr", role="manager", leader=True)
    worker = node("w", "wrk")
    assert plan.drain_refusal([manager, worker], manager) is None  # the worker takes the replicas
    assert plan.drain_refusal([manager, worker], worker) is None
    alone = plan.drain_refusal([manager], manager)
    assert alone is not None and "draining mgr would leave no ready, active node" in alone
    down = node("w", "wrk", status="down")
    assert plan.drain_refusal([manager, down], manager) is not None  # a down worker runs nothing
    drained = node("w", "wrk", availability="drain")
    assert plan.drain_refusal([manager, drained], manager) is not None
    assert plan.drain_refusal([node("m", "mgr", availability="drain")], node("m", "mgr", availability="drain")) is None


def test_node_rows_managers_first_with_this_instances_replicas():
    nodes = [node("w2", "b-worker"), node("m1", "z-mgr", role="manager", leader=True), node("w1", "a-worker")]
    rows = plan.node_rows(nodes, {"m1": 3, "w1": 1, "elsewhere": 9}, self_id="m1")
    assert [(r["name"], r["role_label"], r["replicas"], r["self"]) for r in rows] == [
        ("z-mgr", "manager (leader)", 3, True), ("a-worker", "worker", 1, False), ("b-worker", "worker", 0, False),
    ]  # fmt: skip
    assert plan.memory_label(2 * 1024**3) == "2.0 GB" and plan.memory_label(512 * 1024**2) == "512 MB"
    assert plan.cpus_label(2.0) == "2" and plan.cpus_label(0.5) == "0.5"


# ---- the engine's answers


def test_node_and_swarm_records_from_the_engines_answers():
    from lbsolo.engine_swarm_nodes import node_record, swarm_status

    attrs = {
        "ID": "rja96", "Version": {"Index": 9},
        "Spec": {"Role": "manager", "Availability": "drain", "Labels": {"builder": ""}},
        "Description": {"Hostname": "lbsolo-n0", "Resources": {"NanoCPUs": 2_000_000_000, "MemoryBytes": 4096},
                        "Engine": {"EngineVersion": "20.10.24"}},
        "Status": {"State": "ready", "Addr": "0.0.0.0"},
        "ManagerStatus": {"Leader": True, "Addr": "10.241.0.1:2377"},
    }  # fmt: skip
    assert node_record(attrs) == {
        "id": "rja96", "name": "lbsolo-n0", "address": "10.241.0.1", "role": "manager", "leader": True,
        "status": "ready", "availability": "drain", "cpus": 2.0, "memory": 4096, "engine": "20.10.24",
        "labels": {"builder": ""},
    }  # fmt: skip
    assert node_record({"ID": "x"})["role"] == "worker"
    assert swarm_status({"Swarm": {"LocalNodeState": "inactive", "NodeID": ""}})["state"] == "inactive"
    info = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "rja96", "NodeAddr": "10.241.0.1",
                      "Cluster": {"ID": "c1"}, "RemoteManagers": [{"NodeID": "rja96", "Addr": "10.241.0.1:2377"}],
                      "Nodes": 2}}  # fmt: skip
    assert swarm_status(info) == {
        "state": "active", "manager": True, "node_id": "rja96", "node_addr": "10.241.0.1", "cluster_id": "c1",
        "managers": ["10.241.0.1:2377"], "nodes": 2,
    }  # fmt: skip


def test_a_service_replica_is_read_from_its_service_and_current_task():
    from lbsolo.engine_swarm_replicas import current_task, published_port, service_replica, task_problem

    service = {
        "ID": "svc1", "CreatedAt": "2026-12-07T23:00:00Z",
        "Spec": {"Name": "lbsolo-i-hello-web-v3-1", "Labels": {"lbsolo.app": "hello", "lbsolo.release": "3",
                 "lbsolo.process": "web", "lbsolo.port": "5000"}},
    }  # fmt: skip
    old = {"CreatedAt": "1", "DesiredState": "shutdown", "Status": {"State": "failed", "Err": "exit 1"}}
    new = {
        "CreatedAt": "2", "DesiredState": "running", "NodeID": "w1",
        "Status": {"State": "running", "PortStatus": {"Ports": [{"TargetPort": 5000, "PublishedPort": 30001}]}},
    }  # fmt: skip
    assert current_task([old, new]) is new and current_task([old]) is old and current_task([]) is None
    assert published_port(new, 5000) == 30001 and published_port(new, 80) is None and published_port(old, 5000) is None
    assert task_problem(old) == "exit 1" and task_problem(new) is None
    replica = service_replica(service, new, "10.0.0.2")
    assert (replica.id, replica.app, replica.release, replica.process) == ("svc1", "hello", 3, "web")
    assert replica.running and replica.name == "lbsolo-i-hello-web-v3-1"
    assert replica.address == ("10.0.0.2", 30001)
    waiting = service_replica(service, None, "")
    assert (waiting.running, waiting.status, waiting.address) == (False, "pending", None)
