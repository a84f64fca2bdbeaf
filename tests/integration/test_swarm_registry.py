"""Images reach every node through a registry (issue 17): `lbsolo up --backend swarm` runs Debian's
docker-registry on the manager's advertise address over TLS from its own CA; a release's image
built on the manager alone is pushed there (lbsolo.engine_swarm_registry.push_release) and a
replica service placed on the worker pulls it by digest, runs it, and is served by the
manager's proxy. No `docker save | load`.

Bad input: a registry that is down refuses the push with its name and the fix, and nothing is
left (no service, no tag); a node that cannot reach the registry (here: it died with the
daemon, killed) fails the replica's start with the node's name, the registry and the fix, leaving no
service.

Two private engines (private_swarm.py); they trust the registry as a real node does after
`cluster:join-command`'s step (its CA in /etc/docker/certs.d/<address:port>/ca.crt).
Slow (two engines, a swarm): always run in CI; elsewhere only with LBSOLO_TEST_MULTINODE=1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from lbsolo.daemon_registry import RegistryServer
from lbsolo.errors import EngineError

from .private_engine import NetnsDaemon
from .private_swarm import Node, registry_trusted
from .test_swarm_cluster import node_table, ok, pytestmark, wait_for
from .test_swarm_replicas import swarm

__all__ = ["pytestmark", "swarm"]  # the same marks and the same two-node swarm

APP = "hello"
PORT = 5443
COMMAND = "exec httpd -f -p 5000 -h /www"


def build_on(node: Node, tag: str, text: str, tmp: Path) -> None:
    """A small image built on `node`'s engine only: busybox plus a page of its own (a layer no other node has)."""
    context = tmp / tag.replace("/", "_").replace(":", "_")
    context.mkdir()
    (context / "index.html").write_text(text)
    (context / "Dockerfile").write_text("FROM busybox:latest\nCOPY index.html /www/index.html\n")
    done = subprocess.run(
        ["docker", "-H", node.engine.host, "build", "-q", "-t", tag, str(context)],
        env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture
def daemon(swarm, tmp_path) -> Iterator[NetnsDaemon]:
    env = {"LBSOLO_BACKEND": "swarm", "LBSOLO_REGISTRY_PORT": str(PORT)}
    d = NetnsDaemon(home=tmp_path / "home", engine=swarm[0].engine, extra_env=env)
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def registry(swarm, daemon) -> Iterator[RegistryServer]:
    """The daemon's registry once it answers, trusted by the nodes' engines."""
    manager = swarm[0]
    server = RegistryServer(daemon.home / "registry", manager.address, PORT)  # only to probe it
    wait_for(lambda: daemon.in_netns(server.answers), 30, f"the daemon's registry answering at {server.reference}")
    client = (server.client_cert.read_bytes(), server.client_key.read_bytes())
    with registry_trusted(server.reference, server.ca_path.read_bytes(), client):
        yield server


@pytest.fixture
def backend(swarm, daemon):
    from lbsolo.engine_swarm import DockerSwarmBackend

    made = DockerSwarmBackend(daemon.instance, client=docker.DockerClient(base_url=swarm[0].engine.host))
    try:
        yield made
    finally:
        replicas = made.service_replicas()
        for r in replicas.list_replicas():
            with contextlib.suppress(EngineError):
                replicas.stop_and_remove(r.id, timeout=0)
        made.close()


@contextlib.contextmanager
def manager_drained(manager: Node) -> Iterator[None]:
    """Tasks go to the worker (through the engine: the daemon may be stopped meanwhile)."""
    ok(manager.docker("node", "update", "--availability", "drain", "lbsolo-n0"))
    try:
        yield
    finally:
        ok(manager.docker("node", "update", "--availability", "active", "lbsolo-n0"))


def test_an_image_built_on_the_manager_alone_runs_on_the_worker_pulled_by_digest(
    swarm, daemon, registry, backend, tmp_path
):
    from lbsolo.engine_swarm_registry import push_release

    manager, worker = swarm
    wait_for(lambda: [n["status"] for n in node_table(daemon)] == ["ready", "ready"], 60, "both nodes ready")
    build_on(manager, "lbsolo-test/regapp:1", "pulled from the registry\n", tmp_path)
    assert worker.docker("image", "inspect", "lbsolo-test/regapp:1").returncode != 0  # only the manager has it

    started = time.monotonic()
    ref = push_release(backend, registry.reference, "lbsolo-test/regapp:1", APP, "v1")
    push_seconds = time.monotonic() - started
    assert ref.startswith(f"{registry.reference}/{APP}@sha256:"), ref
    tags = manager.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert not [t for t in tags if t.startswith(registry.reference)], tags  # the push's tag is gone again

    with manager_drained(manager):
        replicas = backend.service_replicas(start_timeout=90, stop_timeout=2, registry=registry.reference)
        started = time.monotonic()
        replica = replicas.run(
            app=APP, release=1, process="web", image=ref, name=f"lbsolo-{daemon.instance}-{APP}-web-v1-1",
            env={"PORT": "5000"}, port=5000, command=COMMAND,
        )  # fmt: skip
        pull_seconds = time.monotonic() - started
    assert replica.running and replica.host == worker.address and replica.host_port
    assert ok(worker.docker("image", "inspect", "--format", "{{.Id}}", ref)).strip()  # pulled, by its digest

    # What a real node is told to run so that its engine trusts the registry (the harness placed the same file).
    join = ok(daemon.cli("cluster:join-command"))
    assert f"cat > /etc/docker/certs.d/{registry.reference}/ca.crt <<'EOF'" in join
    assert registry.ca_path.read_text().strip() in join and registry.client_key.read_text().strip() in join

    ok(daemon.cli("routes:add", APP, "--to", f"{replica.host}:{replica.host_port}"))
    answer = daemon.get(APP)
    assert answer.status_code == 200 and answer.text == "pulled from the registry\n", answer.text
    replicas.stop_and_remove(replica.id, timeout=2)
    print(f"\nregistry: push {push_seconds:.2f}s; pull on the worker and start {pull_seconds:.2f}s")


def test_a_registry_that_is_down_refuses_the_push_clearly_and_leaves_nothing(swarm, daemon, backend, tmp_path):
    manager = swarm[0]
    build_on(manager, "lbsolo-test/regapp:2", "never pushed\n", tmp_path)
    down = f"{manager.address}:5999"  # nothing listens there
    replicas = backend.service_replicas(start_timeout=30, stop_timeout=2, registry=down)
    with pytest.raises(EngineError) as failed:
        replicas.run(
            app=APP, release=2, process="web", image="lbsolo-test/regapp:2", name="lbsolo-x-hello-web-v2-1",
            env={}, port=5000, command=COMMAND,
        )  # fmt: skip
    message = failed.value.message
    assert message.startswith(f"the manager's engine cannot push to the registry {down}: "), message
    assert "make sure the registry runs" in message and f"/etc/docker/certs.d/{down}/ holds" in message
    assert replicas.list_replicas(APP) == []
    tags = manager.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert not [t for t in tags if t.startswith(down)], tags


def test_a_node_that_cannot_reach_the_registry_is_named_with_the_fix(swarm, daemon, registry, backend, tmp_path):
    from lbsolo.engine_swarm_registry import push_release

    manager = swarm[0]
    build_on(manager, "lbsolo-test/regapp:3", "unreachable\n", tmp_path)
    ref = push_release(backend, registry.reference, "lbsolo-test/regapp:3", APP, "v3")
    daemon.stop(signal.SIGKILL)  # the registry dies with the daemon, even killed: nothing holds its port
    wait_for(lambda: not daemon.in_netns(registry.answers), 10, "the registry gone with the daemon")
    replicas = backend.service_replicas(start_timeout=60, stop_timeout=2, registry=registry.reference)
    with manager_drained(manager), pytest.raises(EngineError) as failed:
        replicas.run(
            app=APP, release=3, process="web", image=ref, name="lbsolo-x-hello-web-v3-1",
            env={}, port=5000, command=COMMAND,
        )  # fmt: skip
    message = failed.value.message
    expected = f"start lbsolo-x-hello-web-v3-1: node lbsolo-n1 cannot reach registry {registry.reference}: "
    assert message.startswith(expected), message
    assert "on node lbsolo-n1, make sure the registry runs" in message and "cluster:join-command" in message
    assert replicas.list_replicas(APP) == []
