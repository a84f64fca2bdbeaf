"""Several private Docker engines on one private network, for the Swarm backend's tests.

Each node is a private engine (private_engine.PrivateEngine: its own data root, exec root, pid
file and socket) in a network namespace of its own. The nodes are wired to one bridge that lives
in a further namespace (the "switch"), so that nothing of it is in the host's namespace, where
the host's firewall (Docker's FORWARD policy, br_netfilter) could drop its frames. Node i has
the address 10.<net>.0.<i+1>/24 on its `eth0`; swarm traffic (2377, 7946, 4789) goes only
between those addresses. The host's shared engine is never put in swarm mode. private_cluster
may turn the engines' own iptables rules on (in their namespaces only) and add engine-less
"outsider" namespaces on the same network, as clients from outside the cluster.

Needs root. Everything is removed afterwards, on failure too: the engines (leaving their swarm
first), their directories, the namespaces and the links.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .private_engine import Netns, PrivateEngine


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")


class NodeEngine(PrivateEngine):
    """A private engine with a host name of its own (a UTS namespace): Swarm names nodes by it."""

    def __init__(self, root: Path, netns: Netns, hostname: str, iptables: bool = False) -> None:
        super().__init__(root, netns)
        self.hostname = hostname
        self.iptables = iptables

    def argv(self) -> list[str]:
        # A default bridge (in the node's namespace only): a Swarm task with no network of its own
        # is put there, and its host-mode port is published from it (by docker-proxy: no iptables).
        dockerd = [a for a in super().argv() if a != "--bridge=none"]
        if self.iptables:  # as on a real node: DNAT to the task, FORWARD and DOCKER-USER (in the namespace only)
            dockerd = [a for a in dockerd if a != "--iptables=false"] + ["--iptables=true"]
        # unshare execs (no fork): the process stopped and waited for is dockerd itself.
        return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname, *dockerd]


@dataclass
class Node:
    name: str
    address: str  # on the private network
    engine: PrivateEngine

    @property
    def netns(self) -> Netns:
        return self.engine.netns

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this node's engine."""
        return subprocess.run(
            ["docker", "-H", self.engine.host, *args], capture_output=True, text=True, timeout=timeout
        )


class PrivateNetwork:
    """A switch namespace with a bridge, and nodes' namespaces plugged into it by veth pairs."""

    def __init__(self, tag: str, net: int) -> None:
        self.tag = tag
        self.net = net
        self.switch = Netns(f"lbsw-{tag}")
        try:
            _ip("link", "add", "br0", "type", "bridge", netns=self.switch.name)
            _ip("link", "set", "br0", "up", netns=self.switch.name)
        except BaseException:
            self.switch.delete()
            raise

    def plug(self, netns: Netns, index: int) -> str:
        """Give the namespace `eth0` on the switch; returns its address."""
        outside = f"lbv{self.tag[-6:]}{index}"  # ≤ 15 characters: a link name's limit
        _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", netns.name)
        _ip("link", "set", outside, "netns", self.switch.name)
        _ip("link", "set", outside, "master", "br0", netns=self.switch.name)
        _ip("link", "set", outside, "up", netns=self.switch.name)
        address = f"10.{self.net}.0.{index + 1}"
        _ip("addr", "add", f"{address}/24", "dev", "eth0", netns=netns.name)
        _ip("link", "set", "eth0", "up", netns=netns.name)
        return address

    def delete(self) -> None:
        self.switch.delete()  # takes the bridge and the switch's ends of the veth pairs with it


BUSYBOX_CACHE = Path("/var/cache/lbsolo-test-env/busybox-standin.tar")  # scripts/test-env's stand-in rootfs


def seed_busybox(nodes: list[Node]) -> None:
    """busybox:latest on every node: imported from scripts/test-env's cached rootfs (no engine
    needed), else copied from the shared engine."""
    for node in nodes:
        if BUSYBOX_CACHE.exists():
            done = node.docker("import", "--change", 'CMD ["sh"]', str(BUSYBOX_CACHE), "busybox:latest")
            assert done.returncode == 0, done.stderr
        else:
            node.engine.load(["busybox:latest"])


@dataclass
class Outsider:
    """A namespace on the private network with no engine: a client from outside the cluster."""

    name: str
    address: str
    netns: Netns


@contextlib.contextmanager
def private_nodes(count: int, images: list[str] | None = None) -> Iterator[list[Node]]:
    """`count` private engines on one private network, none in a swarm yet; all gone afterwards."""
    with private_cluster(count, images) as (nodes, _):
        yield nodes


@contextlib.contextmanager
def private_cluster(
    count: int, images: list[str] | None = None, *, iptables: bool = False, outsiders: int = 0
) -> Iterator[tuple[list[Node], list[Outsider]]]:
    """private_nodes, with dockerd's iptables rules on if asked, and `outsiders` engine-less
    namespaces on the same network after the nodes; all gone afterwards."""
    tag = f"{os.getpid() % 100000}"
    network = PrivateNetwork(tag, 200 + os.getpid() % 50)
    nodes: list[Node] = []
    others: list[Outsider] = []
    try:
        for i in range(count):
            name = f"n{i}"
            netns = Netns(f"lbsolo-{name}-{tag}")
            root = Path(tempfile.mkdtemp(prefix=f"lb{name}-", dir="/tmp"))  # short: socket paths have 108 bytes
            engine = NodeEngine(root, netns, f"lbsolo-{name}", iptables=iptables)
            nodes.append(Node(name, "", engine))
            nodes[-1].address = network.plug(netns, i)
            engine.start()
            if images:
                engine.load(images)
        for i in range(count, count + outsiders):
            netns = Netns(f"lbsolo-o{i}-{tag}")
            others.append(Outsider(f"o{i}", "", netns))
            others[-1].address = network.plug(netns, i)
        yield nodes, others
    finally:
        for other in others:
            other.netns.delete()
        for node in reversed(nodes):
            if node.engine.answers():
                with contextlib.suppress(Exception):
                    node.docker("swarm", "leave", "--force", timeout=30)
            node.engine.remove()
            node.netns.delete()
        network.delete()


CERTS_D = Path("/etc/docker/certs.d")


@contextlib.contextmanager
def registry_trusted(reference: str, ca_pem: bytes, client: tuple[bytes, bytes] | None = None) -> Iterator[Path]:
    """The private engines trust the registry at `reference` (host:port) as a real node does after
    `cluster:join-command`'s step: its CA in /etc/docker/certs.d/<host:port>/ca.crt (and the client
    certificate it requires, `client`: client.cert and client.key), removed afterwards.

    Engines read that directory (fixed for a root dockerd) at each pull, and the private engines
    share this machine's /etc. The address is on a private network, so the host's own engine,
    which reads the same directory, never contacts it: its configuration is not changed."""
    directory = CERTS_D / reference
    assert not directory.exists(), f"{directory} exists already: not ours to replace"
    directory.mkdir(parents=True)
    try:
        (directory / "ca.crt").write_bytes(ca_pem)
        if client is not None:
            (directory / "client.cert").write_bytes(client[0])
            (directory / "client.key").touch(mode=0o600)
            (directory / "client.key").write_bytes(client[1])
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
