"""Each app on a network of its own: its replicas reach each other, no other app reaches them.

Add-ons (databases) join only the networks of the apps attached to them, so this is what keeps
one app from reaching another's database. The subnets come from lbsolo's own pool, so more apps
than Docker's default address pools hold (about 30) each get one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import uuid

import docker.errors
import pytest

from lbsolo.engine_docker import DockerBackend

from .conftest import EXAMPLES

pytestmark = pytest.mark.docker


def web_container(docker_client, daemon, app: str):
    listed = docker_client.containers.list(
        filters={"label": [f"lbsolo.instance={daemon.instance}", f"lbsolo.app={app}", "lbsolo.process=web"]}
    )
    assert len(listed) == 1, listed
    return listed[0]


PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 5000), timeout=2).close()
except OSError as e:
    print(type(e).__name__, e)
    sys.exit(1)
"""


def connects(container, host: str) -> bool:
    """Whether a TCP connection from inside the container to host:5000 succeeds within 2 s."""
    code, out = container.exec_run(["python3", "-c", PROBE, host])
    assert code in (0, 1), out  # the probe ran
    return code == 0


def test_apps_reach_themselves_by_name_and_never_each_other(daemon, docker_client):
    for app in ("neta", "netb"):
        assert daemon.cli("apps:create", app).returncode == 0
        out = daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", app)
        assert out.returncode == 0, out.stdout + out.stderr
    a, b = web_container(docker_client, daemon, "neta"), web_container(docker_client, daemon, "netb")
    nets_a, nets_b = set(a.attrs["NetworkSettings"]["Networks"]), set(b.attrs["NetworkSettings"]["Networks"])
    assert nets_a == {f"lbsolo-{daemon.instance}-neta"} and nets_b == {f"lbsolo-{daemon.instance}-netb"}

    assert connects(a, "neta")  # its own name, on its own network
    assert not connects(a, "netb")  # the other app's name does not resolve
    b_address = b.attrs["NetworkSettings"]["Networks"][f"lbsolo-{daemon.instance}-netb"]["IPAddress"]
    assert connects(b, b_address)
    assert not connects(a, b_address)  # nor does its address answer
    assert ipaddress.ip_address(b_address) in ipaddress.ip_network("10.213.0.0/16")

    assert daemon.get("netb").status_code == 200  # the proxy still reaches both
    for app in ("neta", "netb"):
        assert daemon.cli("destroy", app, "--yes").returncode == 0
        with pytest.raises(docker.errors.NotFound):
            docker_client.networks.get(f"lbsolo-{daemon.instance}-{app}")


def test_more_networks_than_dockers_default_pools_hold(docker_client):
    instance = f"t{uuid.uuid4().hex[:10]}"
    backend = DockerBackend(instance, docker_client, network_pool="10.214.0.0/16", network_prefix=26)
    names = [f"lbsolo-{instance}-app{i}" for i in range(40)]
    try:
        for name in names:
            backend.ensure_network(name)
        backend.ensure_network(names[0])  # again: the same network, not a second one
        made = docker_client.networks.list(filters={"label": [f"lbsolo.instance={instance}"]})
        subnets = [n.attrs["IPAM"]["Config"][0]["Subnet"] for n in made]
        assert sorted(n.name for n in made) == sorted(names)
        assert len(set(subnets)) == 40
        assert all(ipaddress.ip_network(s).subnet_of(ipaddress.ip_network("10.214.0.0/16")) for s in subnets)
        backend.remove_network(f"lbsolo-{instance}-app1")  # exactly that one (names share prefixes)
        left = {n.name for n in docker_client.networks.list(filters={"label": [f"lbsolo.instance={instance}"]})}
        assert left == set(names) - {f"lbsolo-{instance}-app1"}
    finally:
        for network in docker_client.networks.list(filters={"label": [f"lbsolo.instance={instance}"]}):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
