"""Each node admits its app ports from the manager alone (issue 17's Routing): lbsolo's DOCKER-USER rules.

Three namespaces on one private network (private_swarm.private_cluster): the manager, a worker,
both private engines with Docker's own iptables rules on (as on a real node: a host-mode port is
DNAT-ed to its task, through FORWARD and DOCKER-USER), and an engine-less outsider. A replica
(busybox's httpd) runs on the worker, started by lbsolo.engine_swarm_replicas on the first port
of the range; `lbsolo node:firewall` runs in the worker's namespace (`nsenter --net=…`), as an
operator runs it on the node: before it the outsider reaches the app, after it only the manager
(directly and through lbsolo's proxy). The same on the manager for its own replicas. Every rule
goes into the test namespaces only, never the host's.

Slow (two engines, a swarm): always run in CI; elsewhere only with LBSOLO_TEST_MULTINODE=1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from lbsolo.cluster_firewall import PortRange
from lbsolo.errors import EngineError

from .private_engine import Netns, NetnsDaemon
from .private_swarm import Node, Outsider, private_cluster, seed_busybox
from .test_swarm_cluster import ok, pytestmark, wait_for

__all__ = ["pytestmark"]  # the same marks: Docker, and slow (CI or LBSOLO_TEST_MULTINODE=1)

APP = "walled"
NSENTER = shutil.which("nsenter") or "nsenter"  # found here: a test runs it with PATH emptied
PORTS = PortRange(30000, 30999)
COMMAND = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 5000 -h /www"


@pytest.fixture(scope="module")
def cluster(in_ci) -> Iterator[tuple[list[Node], Outsider]]:
    if os.geteuid() != 0:
        if in_ci:
            pytest.fail("the Swarm tests need root (network namespaces, private dockerd)")
        pytest.skip("needs root: network namespaces and private dockerd")
    with private_cluster(2, iptables=True, outsiders=1) as (nodes, (outsider,)):
        seed_busybox(nodes)
        manager, worker = nodes
        ok(manager.docker("swarm", "init", "--advertise-addr", manager.address))
        token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        ok(worker.docker("swarm", "join", "--token", token, f"{manager.address}:2377"))
        wait_for(lambda: manager.docker("node", "ls", "-q").stdout.count("\n") == 2, 60, "the worker joined")
        ok(manager.docker("node", "update", "--availability", "drain", "lbsolo-n0"))  # the replica goes to the worker
        yield nodes, outsider


@pytest.fixture(scope="module")
def replicas(cluster) -> Iterator[Any]:
    from lbsolo.engine_swarm import DockerSwarmBackend

    (manager, _), _ = cluster
    backend = DockerSwarmBackend(f"fw{os.getpid()}", client=docker.DockerClient(base_url=manager.engine.host))
    made = backend.service_replicas(start_timeout=60, stop_timeout=2, ports=PORTS)
    try:
        yield made
    finally:
        for r in made.list_replicas():
            with contextlib.suppress(EngineError):
                made.stop_and_remove(r.id, timeout=0)
        backend.close()


def start(replicas: Any, n: int) -> Any:
    return replicas.run(
        app=APP, release=1, process="web", image="busybox:latest",
        name=f"lbsolo-{replicas.backend.instance}-{APP}-web-v1-{n}", env={"PORT": "5000"}, port=5000, command=COMMAND,
    )  # fmt: skip


@pytest.fixture(scope="module")
def replica(replicas) -> Any:
    return start(replicas, 1)  # on the worker: the manager is drained


def status_from(netns: Netns, host: str, port: int, timeout: float = 2.0) -> str:
    """An HTTP GET from inside the namespace: the status code, or why there is none."""

    def get() -> str:
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.settimeout(timeout)
                s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                return s.recv(64).decode(errors="replace").split(" ")[1]
        except TimeoutError:
            return "timeout"
        except OSError as e:
            return type(e).__name__

    return netns.call(get)


def in_node(node: Node, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command in the node's network namespace only (never the host's firewall)."""
    assert node.netns.path.exists()
    return subprocess.run(
        [NSENTER, f"--net={node.netns.path}", *argv], capture_output=True, text=True, timeout=60, env=env
    )


def lbsolo_in(node: Node, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return in_node(node, sys.executable, "-m", "lbsolo", *args, env={**os.environ, **(env or {})})


def docker_user(node: Node) -> list[str]:
    listed = in_node(node, "iptables", "-w", "5", "-S", "DOCKER-USER")
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.splitlines()


def test_only_the_manager_reaches_a_workers_app_port_once_the_rules_are_in(cluster, replica, tmp_path):
    (manager, worker), outsider = cluster
    instance = replica.name.split("-")[1]
    assert (replica.host, replica.host_port) == (worker.address, PORTS.first)  # the range's first port, on the worker
    port = replica.host_port

    # Without the rules anyone on the network reaches the app, bypassing the proxy: the test can fail.
    assert status_from(manager.netns, worker.address, port) == "200"
    assert status_from(outsider.netns, worker.address, port) == "200"

    foreign = "-A DOCKER-USER -s 192.0.2.7/32 -j DROP"  # someone else's rule: must survive everything below
    ok(in_node(worker, "iptables", "-w", "5", *foreign.split()))
    before = docker_user(worker)

    args = ("node:firewall", "--instance", instance, "--manager", manager.address, "--ports", str(PORTS))
    started = time.monotonic()
    done = lbsolo_in(worker, *args, env={"LBSOLO_HOME": str(tmp_path)})
    verb_seconds = time.monotonic() - started
    applied = ok(done)
    took = re.search(r"Took ([0-9.]+)s", done.stderr)
    assert took, done.stderr
    assert f"IPv4: 3 rules in place (ports {PORTS} admitted from {manager.address} only)." in applied
    rules = docker_user(worker)
    assert len(rules) == len(before) + 3 and rules[1:4] == [
        f"-A DOCKER-USER -p tcp -m conntrack --ctstate RELATED,ESTABLISHED --ctorigdstport 30000:30999 "
        f"-m comment --comment lbsolo-{instance} -j RETURN",
        f"-A DOCKER-USER -s {manager.address}/32 -p tcp -m conntrack --ctorigdstport 30000:30999 "
        f"-m comment --comment lbsolo-{instance} -j RETURN",
        f"-A DOCKER-USER -p tcp -m conntrack --ctstate DNAT --ctorigdstport 30000:30999 "
        f"-m comment --comment lbsolo-{instance} -j DROP",
    ]

    assert status_from(manager.netns, worker.address, port) == "200"  # where the proxy connects from
    assert status_from(outsider.netns, worker.address, port) == "timeout"  # dropped, not even refused
    proxy = NetnsDaemon(home=tmp_path / "home", engine=manager.engine, extra_env={"LBSOLO_BACKEND": "swarm"})
    proxy.start()
    try:  # and through lbsolo's proxy on the manager, as the apps are reached
        ok(proxy.cli("routes:add", APP, "--to", f"{worker.address}:{port}"))
        answer = proxy.get(APP)
        assert answer.status_code == 200 and answer.text.startswith("hello from "), answer.text
    finally:
        proxy.stop()

    again = ok(lbsolo_in(worker, *args))
    assert "IPv4: already in place: nothing changed" in again
    assert docker_user(worker) == rules  # idempotent: the same rules, the same count

    # A new manager address replaces the rules in one transaction; the old address is out.
    ok(lbsolo_in(worker, *args[:3], "--manager", outsider.address, *args[5:]))
    assert len(docker_user(worker)) == len(rules)
    assert status_from(outsider.netns, worker.address, port) == "200"
    assert status_from(manager.netns, worker.address, port) == "timeout"

    removed = ok(lbsolo_in(worker, "node:firewall", "--instance", instance, "--remove"))
    assert "Removed 3 rule(s)" in removed
    assert docker_user(worker) == before and foreign in before  # exactly lbsolo's rules went
    assert status_from(outsider.netns, worker.address, port) == "200"
    print(
        f"\nnode firewall: rules read and applied in the worker's namespace in {took[1]}s "
        f"(the whole verb, Python's start included: {verb_seconds:.2f}s)"
    )


def test_bad_input_and_a_node_without_iptables_are_told_the_fix(cluster):
    (_, worker), _ = cluster
    before = docker_user(worker)
    for args, says in [
        (("--manager", "manager.example"), "--manager 'manager.example' is not an IP address"),
        (("--manager", "10.0.0.1", "--ports", "31000-30000"), "the first port is above the last; write 30000-31000"),
        (("--manager", "10.0.0.1", "--ports", "80-90"), "ports are 1024 to 65535"),
        ((), "give the manager's address (--manager IP)"),
    ]:
        done = lbsolo_in(worker, "node:firewall", "--instance", "x", *args)
        assert done.returncode == 1 and says in " ".join(done.stderr.split()), done.stderr
    no_iptables = lbsolo_in(
        worker, "node:firewall", "--instance", "x", "--manager", "10.0.0.1", env={"PATH": "/nonexistent"}
    )
    assert no_iptables.returncode == 1
    assert "iptables is not installed on this node: install it (Debian/Ubuntu: `apt-get install iptables`)" in " ".join(
        no_iptables.stderr.split()
    )
    assert docker_user(worker) == before  # nothing changed by any of them


def test_on_the_manager_the_rules_keep_its_own_replicas_for_its_proxy(cluster, replicas, replica):
    (manager, worker), outsider = cluster
    instance = replicas.backend.instance
    ok(manager.docker("node", "update", "--availability", "pause", "lbsolo-n1"))  # no new task; its replica stays
    ok(manager.docker("node", "update", "--availability", "active", "lbsolo-n0"))
    try:
        local = start(replicas, 2)
        assert (local.host, local.host_port) == (manager.address, PORTS.first + 1)  # the next free port of the range
        assert status_from(outsider.netns, manager.address, local.host_port) == "200"
        args = ("node:firewall", "--instance", instance, "--manager", manager.address, "--ports", str(PORTS))
        ok(lbsolo_in(manager, *args))
        # The proxy's connections to its own node's ports are the node's own (OUTPUT, not FORWARD): still served.
        assert status_from(manager.netns, manager.address, local.host_port) == "200"
        assert status_from(outsider.netns, manager.address, local.host_port) == "timeout"
        assert status_from(outsider.netns, worker.address, replica.host_port) == "200"  # no rules on the worker now
    finally:
        ok(lbsolo_in(manager, "node:firewall", "--instance", instance, "--remove"))
        ok(manager.docker("node", "update", "--availability", "active", "lbsolo-n1"))
