"""The registry that brings release images to every swarm node (issue 17): its pure decisions
(lbsolo.cluster_plan: the address, the digest reference, the failure messages), the push's
progress reader (lbsolo.engine_swarm_registry.push_outcome), and lbsolo's own registry
(lbsolo.daemon_registry) started, answering over TLS from its CA, and stopped: a real
`docker-registry` on loopback, no engine."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
from pathlib import Path

import pytest

from lbsolo import cluster_plan as plan
from lbsolo.daemon_registry import BINARY, RegistryServer, registry_config
from lbsolo.engine_swarm_registry import push_outcome
from lbsolo.errors import InvalidInput

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("value", ["10.0.0.1:5443", "registry.example:443/team", "[fd00::1]:5000", " r.lan:5000/a/b "])
def test_a_registry_is_host_port_and_an_optional_prefix(value):
    assert plan.validate_registry(value) == value.strip()


@pytest.mark.parametrize("value", ["", "10.0.0.1", "https://r:5000", "r:5000/", "r:99999", "r:5000/Team"])
def test_a_malformed_registry_is_refused_with_the_form_to_use(value):
    with pytest.raises(InvalidInput, match="host:port or host:port/prefix"):
        plan.validate_registry(value)


def test_services_pull_a_release_by_digest_from_its_apps_repository():
    assert plan.release_repository("10.0.0.1:5443", "hello") == "10.0.0.1:5443/hello"
    assert plan.digest_reference("r:5000/team", "hello", DIGEST) == f"r:5000/team/hello@{DIGEST}"
    assert plan.registry_host("r:5000/team") == "r:5000"
    with pytest.raises(ValueError):
        plan.digest_reference("r:5000", "hello", "latest")


def test_the_trust_step_puts_the_ca_and_the_client_certificate_where_the_engine_looks_for_that_registry():
    step = plan.registry_trust_step("10.0.0.1:5443", "/h/ca.pem", "/h/client.cert", "/h/client.key")
    d = "/etc/docker/certs.d/10.0.0.1:5443"
    copies = f"cp /h/ca.pem {d}/ca.crt && cp /h/client.cert {d}/client.cert && cp /h/client.key {d}/client.key"
    assert step == f"mkdir -p {d} && {copies}"


def test_failed_pushes_and_pulls_name_the_registry_the_node_and_the_fix():
    refused = plan.push_problem("10.0.0.1:5443", "dial tcp 10.0.0.1:5443: connect: connection refused")
    assert refused.startswith("the manager's engine cannot push to the registry 10.0.0.1:5443: dial tcp")
    assert "make sure the registry runs" in refused and "/etc/docker/certs.d/10.0.0.1:5443/ holds" in refused
    untrusted = plan.push_problem("10.0.0.1:5443", "x509: certificate signed by unknown authority")
    assert untrusted.startswith("the manager's engine does not trust the registry 10.0.0.1:5443, or holds no client")
    pull = plan.pull_problem("node n1", "10.0.0.1:5443", "No such image: 10.0.0.1:5443/hello@sha256:…")
    assert pull.startswith("node n1 cannot reach registry 10.0.0.1:5443: No such image")
    assert "on node n1, make sure the registry runs" in pull and "cluster:join-command" in pull


def test_the_push_outcome_is_its_digest_or_its_last_error():
    ok = [{"status": "Pushed", "id": "abc"}, {"status": "v1: digest: …"}, {"aux": {"Tag": "v1", "Digest": DIGEST}}]
    assert push_outcome(ok) == (DIGEST, None)
    refused = {"errorDetail": {"message": "connection refused"}, "error": "connection refused"}
    failed = [{"status": "Preparing"}, refused]
    assert push_outcome(failed) == (None, "connection refused")
    assert push_outcome([{"status": "Pushed"}]) == (None, "the engine reported no digest")


def test_the_registry_config_serves_tls_on_one_address_with_storage_on_disk(tmp_path):
    ca = tmp_path / "ca.pem"
    text = registry_config("10.0.0.1", 5443, tmp_path / "data", tmp_path / "c.pem", tmp_path / "k.pem", "s3cret", ca)
    assert f"rootdirectory: {tmp_path / 'data'}" in text
    assert "addr: 10.0.0.1:5443" in text and f"certificate: {tmp_path / 'c.pem'}" in text
    assert f"clientcas:\n      - {ca}\n" in text  # only clients with a certificate from its CA
    assert "addr: [fd00::1]:5443" in registry_config("fd00::1", 5443, tmp_path, tmp_path, tmp_path, "s", ca)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_lbsolos_registry_serves_over_tls_from_its_ca_and_stops_when_cancelled(tmp_path: Path):
    if not Path(BINARY).exists() or not shutil.which("docker-registry"):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("docker-registry is missing: scripts/test-env installs it")
        pytest.skip("docker-registry is not installed (scripts/test-env installs it)")

    async def scenario() -> None:
        server = RegistryServer(tmp_path / "registry", "127.0.0.1", _free_port())
        task = asyncio.create_task(server.run())
        for _ in range(200):
            if await asyncio.to_thread(server.answers):
                break
            assert not task.done(), task
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(server.answers)
        assert (tmp_path / "registry" / "data").is_dir() and server.ca_path.exists()
        assert oct((tmp_path / "registry" / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
        # Another CA's clients are refused: trust comes from this registry's CA only.
        context = ssl.create_default_context()
        with socket.create_connection(("127.0.0.1", server.port)) as raw, pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")
        # A client that trusts it but holds no client certificate is refused too (TLS 1.3: at its first read).
        context = ssl.create_default_context(cafile=str(server.ca_path))
        with (
            socket.create_connection(("127.0.0.1", server.port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            pytest.raises((ssl.SSLError, ConnectionResetError)),
        ):
            tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: r\r\n\r\n")
            assert tls.recv(100) == b"", "answered without a client certificate"
        assert oct(server.client_key.stat().st_mode & 0o777) == "0o600"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await asyncio.to_thread(server.answers)

    asyncio.run(scenario())


class FakeSwarm:
    def __init__(self, state: str) -> None:
        self.state = state

    def status(self) -> dict:
        return {"state": self.state, "manager": self.state == "active", "node_id": "n0", "node_addr": "10.9.0.1",
                "cluster_id": "c", "managers": ["10.9.0.1:2377"], "nodes": 1}  # fmt: skip


def test_the_swarm_backend_runs_its_own_registry_on_the_managers_address_unless_one_is_given(tmp_path):
    from lbsolo.config import Settings
    from lbsolo.core_cluster import ClusterOps
    from lbsolo.daemon_backend import backend_notes

    def notes(state: str, backend: str = "swarm", **settings) -> tuple:
        ops = ClusterOps(backend, lambda: FakeSwarm(state))
        return asyncio.run(backend_notes(ops, Settings.load(home=tmp_path, **settings)))

    said, registry = notes("active", registry_port=5999)
    installed = Path(BINARY).exists()
    assert registry.reference == ("10.9.0.1:5999" if installed else None)
    assert list(registry.background) == (["registry"] if installed else [])
    if installed:
        assert said[-1].startswith("Release images go through lbsolo's registry at 10.9.0.1:5999; each node's")
        assert f"cp {tmp_path / 'registry' / 'ca' / 'ca.pem'} /etc/docker/certs.d/10.9.0.1:5999/ca.crt" in said[-1]
        assert "/etc/docker/certs.d/10.9.0.1:5999/client.key" in said[-1]
    said, registry = notes("active", registry="r.lan:5000/team")
    assert (registry.reference, registry.background) == ("r.lan:5000/team", {})
    assert said[-1] == "Release images go through the registry r.lan:5000/team (LBSOLO_REGISTRY)"
    assert notes("inactive")[1].reference is None  # no swarm yet: no address to serve on
    said, registry = notes("active", backend="docker")
    assert said == [] and registry.reference is None and registry.background == {}
    with pytest.raises(InvalidInput, match="LBSOLO_REGISTRY"):
        notes("active", registry="https://r.lan")


def test_the_join_command_on_the_swarm_backend_says_how_a_node_trusts_the_registry(tmp_path):
    import subprocess

    from lbsolo.core_cluster import ClusterOps
    from lbsolo.proxy_tls_ca import LocalCA

    class Manager(FakeSwarm):
        def join_token(self) -> tuple[str, str]:
            return "SWMTKN-1-x", "10.9.0.1:2377"

    ca_path = tmp_path / "registry" / "ca" / "ca.pem"
    ops = ClusterOps("swarm", lambda: Manager("active"), registry_port=5443, registry_dir=tmp_path / "registry")
    join = asyncio.run(ops.join_command())
    assert join["registry"] == "10.9.0.1:5443" and join["trust"].startswith("# its CA is made when it first starts")
    ca = LocalCA(ca_path.parent, name="lbsolo registry CA").load_or_create()
    pem = ca.cert_pem.decode()
    client_cert, client_key = ca.issue("lbsolo-registry-client", client=True)
    (tmp_path / "registry" / "client").mkdir()
    (tmp_path / "registry" / "client" / "client.cert").write_bytes(client_cert)
    (tmp_path / "registry" / "client" / "client.key").write_bytes(client_key)
    join = asyncio.run(ops.join_command())
    assert join["command"] == "docker swarm join --token SWMTKN-1-x 10.9.0.1:2377"
    assert join["trust"].startswith("mkdir -p /etc/docker/certs.d/10.9.0.1:5443 && touch ")
    # What the node runs, run here with another root: the engine's files hold the CA and the client's pair.
    root = tmp_path / "node"
    done = subprocess.run(["sh", "-c", join["trust"].replace("/etc/docker", str(root))], capture_output=True)
    assert done.returncode == 0, done.stderr
    d = root / "certs.d" / "10.9.0.1:5443"
    assert (d / "ca.crt").read_text().strip() == pem.strip()
    assert (d / "client.cert").read_bytes().strip() == client_cert.strip()
    assert (d / "client.key").read_bytes().strip() == client_key.strip()
    assert oct((d / "client.key").stat().st_mode & 0o777) == "0o600"

    theirs = ClusterOps("swarm", lambda: Manager("active"), registry="r.lan:5000/team")
    join = asyncio.run(theirs.join_command())
    assert join["registry"] == "r.lan:5000/team" and "/etc/docker/certs.d/r.lan:5000/ca.crt" in join["trust"]
