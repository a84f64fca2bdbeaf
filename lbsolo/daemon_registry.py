"""lbsolo's own image registry on the swarm backend: Debian's `docker-registry`, a child of the daemon.

With the swarm backend and no LBSOLO_REGISTRY, release images reach the other nodes through a
registry on the manager: `docker-registry serve` (the Distribution registry, Debian's package)
listening on the manager's advertise address and LBSOLO_REGISTRY_PORT, its storage under
$LBSOLO_HOME/registry/data, served over TLS with a certificate from a CA of its own
($LBSOLO_HOME/registry/ca/ca.pem; each node's engine trusts it through
/etc/docker/certs.d/<address:port>/ca.crt, the step `cluster:join-command` prints). Only clients
with a certificate from that CA may use it: the nodes' engines, through client.cert and
client.key in the same directory ($LBSOLO_HOME/registry/client, printed by the same step). The CA is
not the proxy's local CA: that one may only sign for lbsolo's domain, the registry is reached at
an address.

`RegistryServer.run` is a supervised background task: it starts the registry, waits until it
accepts connections, and if it exits it raises so that the daemon's supervisor starts it again;
cancelled (daemon shutdown, hand-over) it stops the registry. The child also dies with the
daemon (PR_SET_PDEATHSIG), so a `kill -9` leaves no registry holding the port.

Imported only with the swarm backend (by lbsolo.daemon_backend). It must not push or pull
images (lbsolo.engine_swarm_registry does) nor block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.client
import logging
import secrets
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from lbsolo.cluster_plan import own_registry, registry_trust_step

log = logging.getLogger("lbsolo.registry")

BINARY = "/usr/bin/docker-registry"
_PR_SET_PDEATHSIG = 1


def registry_config(address: str, port: int, data: Path, cert: Path, key: Path, secret: str, ca: Path) -> str:
    """The registry's config.yml: storage on disk, TLS with client certificates signed by its CA
    required (only the nodes may push and pull), no access log, deletes allowed (for cleanup)."""
    host = f"[{address}]" if ":" in address else address
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {host}:{port}\n  secret: {secret}\n"
        f"  tls:\n    certificate: {cert}\n    key: {key}\n    clientcas:\n      - {ca}\n"
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
    )


def _death_signal() -> Callable[[], None]:
    """What the child runs between fork and exec: die when the daemon does. prctl is looked up here,
    in the daemon: a lookup (dlopen) in the child could wait forever on a lock another thread held."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class RegistryServer:
    """The registry lbsolo runs on the manager, at `address:port`, kept under `directory`."""

    def __init__(self, directory: Path, address: str, port: int, *, binary: str = BINARY) -> None:
        self.directory = directory
        self.address = address
        self.port = port
        self.binary = binary
        self.ca_path = directory / "ca" / "ca.pem"
        # The nodes' client certificate (one for all: each node's engine holds it in its certs.d).
        self.client_cert = directory / "client" / "client.cert"
        self.client_key = directory / "client" / "client.key"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def reference(self) -> str:
        """What images are tagged with and engines trust: host:port."""
        return own_registry(self.address, self.port)

    def installed(self) -> bool:
        return Path(self.binary).exists()

    def trust_step(self) -> str:
        """What a node runs so that its engine trusts this registry (after copying the CA file there)."""
        return registry_trust_step(self.reference, str(self.ca_path), str(self.client_cert), str(self.client_key))

    def prepare(self) -> Path:
        """The CA, the server's certificate for its address, the config; returns the config's path. Blocking."""
        from lbsolo.proxy_tls_ca import LocalCA  # cryptography: loaded only here

        tls = self.directory / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        ca = LocalCA(self.directory / "ca", name="lbsolo registry CA").load_or_create()
        chain, key = ca.issue(self.address)  # a fresh leaf at each start: its address may have changed
        if not (self.client_cert.exists() and self.client_key.exists()):  # kept: the nodes hold copies
            cert_pem, key_pem = ca.issue("lbsolo-registry-client", client=True)
            self.client_cert.parent.mkdir(mode=0o700, exist_ok=True)
            self.client_key.touch(mode=0o600)
            self.client_key.write_bytes(key_pem)
            self.client_cert.write_bytes(cert_pem)
        (tls / "cert.pem").write_bytes(chain)
        key_path = tls / "key.pem"
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        config = self.directory / "config.yml"
        config.touch(mode=0o600)
        secret = secrets.token_hex(16)  # signs upload state; one registry, so a new one per start is fine
        data = self.directory / "data"
        config.write_text(
            registry_config(self.address, self.port, data, tls / "cert.pem", key_path, secret, self.ca_path)
        )
        return config

    def answers(self) -> bool:
        """Whether the registry answers `GET /v2/` over TLS with a certificate its CA signed. Blocking."""
        if not (self.ca_path.exists() and self.client_cert.exists()):
            return False
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.load_cert_chain(self.client_cert, self.client_key)
        conn = http.client.HTTPSConnection(self.address, self.port, timeout=1.0, context=context)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    async def run(self) -> None:
        """Start the registry and keep it running; raises if it exits (the supervisor restarts it)."""
        if not self.installed():
            raise RuntimeError(
                f"{self.binary} is missing: install Debian's docker-registry (apt-get install docker-registry), "
                "or point LBSOLO_REGISTRY at a registry of your own"
            )
        config = await asyncio.to_thread(self.prepare)
        started = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            self.binary, "serve", str(config),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_death_signal(), start_new_session=True,
        )  # fmt: skip
        output = asyncio.create_task(self._relay_output(self._proc))
        try:
            while self._proc.returncode is None:
                if await asyncio.to_thread(self.answers):
                    log.info("registry serving at %s (%.2fs)", self.reference, time.monotonic() - started)
                    break
                if time.monotonic() - started > 30:
                    log.warning("the registry at %s does not answer after 30s (is the address this machine's?)",
                                self.reference)  # fmt: skip
                    break
                await asyncio.sleep(0.05)
            code = await self._proc.wait()
            raise RuntimeError(f"the registry at {self.reference} exited (status {code}); see the lines above")
        finally:
            await self.stop()
            output.cancel()

    async def _relay_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            log.warning("registry: %s", line.decode(errors="replace").rstrip()[:500])

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the registry (SIGTERM, then SIGKILL after `timeout`)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
