"""Replicas as Swarm services, the swarm backend's first start-replica path (issue 17): one
one-task service per replica, its port published in host mode on the node Swarm put it on, and
lbsolo's proxy on the manager reaching it at (that node's address, that port).

Two private engines (private_swarm.py): the manager, where `lbsolo up --backend swarm` runs,
drained through `lbsolo nodes:drain` so that the replica lands on the worker; the replica is
started through lbsolo.engine_swarm_replicas (not wired into the daemon's rollouts yet) with the
daemon's own instance id, so `lbsolo nodes` counts it on the worker; a static route sends the
app's host to it. busybox's httpd is the app.

Slow (two engines, a swarm): always run in CI; elsewhere only with LBSOLO_TEST_MULTINODE=1.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import docker
import pytest

from lbsolo.errors import EngineError

from .private_engine import NetnsDaemon
from .private_swarm import Node, private_nodes, seed_busybox
from .test_swarm_cluster import node_table, ok, pytestmark, wait_for

__all__ = ["pytestmark"]  # the same marks: Docker, and slow (CI or LBSOLO_TEST_MULTINODE=1)

APP = "hello"
COMMAND = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 5000 -h /www"


@pytest.fixture(scope="module")
def swarm(in_ci) -> Iterator[list[Node]]:
    import os

    if os.geteuid() != 0:
        if in_ci:
            pytest.fail("the Swarm tests need root (network namespaces, private dockerd)")
        pytest.skip("needs root: network namespaces and private dockerd")
    with private_nodes(2) as nodes:
        seed_busybox(nodes)
        manager, worker = nodes
        ok(manager.docker("swarm", "init", "--advertise-addr", manager.address))
        token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        ok(worker.docker("swarm", "join", "--token", token, f"{manager.address}:2377"))
        yield nodes


@pytest.fixture
def daemon(swarm, tmp_path) -> Iterator[NetnsDaemon]:
    d = NetnsDaemon(home=tmp_path / "home", engine=swarm[0].engine, extra_env={"LBSOLO_BACKEND": "swarm"})
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def replicas(swarm, daemon):
    from lbsolo.engine_swarm import DockerSwarmBackend

    backend = DockerSwarmBackend(daemon.instance, client=docker.DockerClient(base_url=swarm[0].engine.host))
    made = backend.service_replicas(start_timeout=60, stop_timeout=2)
    try:
        yield made
    finally:
        for r in made.list_replicas():
            with contextlib.suppress(EngineError):
                made.stop_and_remove(r.id, timeout=0)
        backend.close()


def test_a_replica_on_the_worker_is_served_by_the_managers_proxy(swarm, daemon, replicas):
    worker = swarm[1]
    wait_for(lambda: [n["status"] for n in node_table(daemon)] == ["ready", "ready"], 60, "both nodes ready")
    ok(daemon.cli("nodes:drain", "lbsolo-n0"))  # the worker is active: allowed, and the replica must go there
    try:
        started = time.monotonic()
        replica = replicas.run(
            app=APP, release=1, process="web", image="busybox:latest", name=f"lbsolo-{daemon.instance}-{APP}-web-v1-1",
            env={"PORT": "5000"}, port=5000, command=COMMAND,
        )  # fmt: skip
        start_seconds = time.monotonic() - started
        assert replica.running and (replica.app, replica.release, replica.process) == (APP, 1, "web")
        assert replica.host == worker.address and replica.host_port is not None and replica.host_port > 0
        assert [r.id for r in replicas.list_replicas(APP)] == [replica.id]
        counts = {n["name"]: n["replicas"] for n in node_table(daemon)}
        assert counts == {"lbsolo-n0": 0, "lbsolo-n1": 1}

        ok(daemon.cli("routes:add", APP, "--to", f"{replica.host}:{replica.host_port}"))
        answer = daemon.get(APP)
        assert answer.status_code == 200 and answer.text.startswith("hello from "), answer.text

        replicas.stop_and_remove(replica.id, timeout=2)
        replicas.stop_and_remove(replica.id, timeout=2)  # gone already: fine
        assert replicas.list_replicas(APP) == []
        print(f"\nswarm replica: running on the worker and published in {start_seconds:.2f}s")
    finally:
        ok(daemon.cli("nodes:activate", "lbsolo-n0"))


def test_a_replica_whose_image_no_node_has_fails_clearly_and_leaves_nothing(swarm, daemon, replicas):
    with pytest.raises(EngineError) as failed:
        replicas.start_timeout = 20
        replicas.run(
            app="nope", release=1, process="web", image="lbsolo-test/absent:1", name="lbsolo-x-nope-web-v1-1",
            env={}, port=5000, command="true",
        )  # fmt: skip
    assert failed.value.message.startswith("start lbsolo-x-nope-web-v1-1: its task failed on node lbsolo-n")
    assert "No such image: lbsolo-test/absent:1 (images reach the other nodes through a registry" in str(failed.value)
    assert replicas.list_replicas("nope") == []
