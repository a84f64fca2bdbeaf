"""Replica lifecycle on the engine: start, health-check, stop.

Health checks run from the daemon, never inside the image: an HTTP GET through the port
published on 127.0.0.1, carrying the app's own Host header (frameworks reject unknown hosts).
Without an HTTP path the check is "the port accepts a connection and keeps it open": a bare
connect is not enough, because Docker's userland proxy accepts connections even when nothing
listens inside, and then closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field

from lbsolo.build_detect import exec_command
from lbsolo.engine import Engine
from lbsolo.errors import DeployFailed, EngineError
from lbsolo.models import WEB, HealthCheck, Release, Replica


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything needed to start one replica of a release's process type."""

    release: Release
    process: str
    port: int | None  # the PORT web processes listen on inside the container
    network: str | None = None
    memory: str | None = None
    cpus: float | None = None
    volumes: dict[str, str] = field(default_factory=dict)  # engine volume name -> mount path

    def env(self) -> dict[str, str]:
        env = {
            **self.release.config,
            "LBSOLO_APP": self.release.app,
            "LBSOLO_RELEASE": self.release.label,
            "LBSOLO_PROCESS": self.process,
        }
        if self.port is not None:
            env["PORT"] = str(self.port)
        return env


def replica_name(app: str, version: int, process: str) -> str:
    return f"lbsolo-{app}-{process}-v{version}-{secrets.token_hex(3)}"


async def start_replica(engine: Engine, spec: ReplicaSpec) -> Replica:
    release = spec.release
    return await asyncio.to_thread(
        engine.run,
        app=release.app,
        release=release.version,
        process=spec.process,
        image=release.image,
        name=replica_name(release.app, release.version, spec.process),
        env=spec.env(),
        port=spec.port if spec.process == WEB else None,
        command=exec_command(command) if (command := release.command(spec.process)) else None,
        network=spec.network,
        memory=spec.memory,
        cpus=spec.cpus,
        volumes=spec.volumes,
    )


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def http_probe(
    port: int, host_header: str, path: str = "/", timeout: float = 2.0, host: str = "127.0.0.1"
) -> int | None:
    """One HTTP/1.0 GET to host:port; the status code, or None if nothing answered."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        request = f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: lbsolo-health\r\n\r\n"
        writer.write(request.encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return None
    finally:
        await _close(writer)
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


async def tcp_probe(port: int, timeout: float = 2.0, hold: float = 0.2, host: str = "127.0.0.1") -> bool:
    """Connect to host:port and see the connection stay open for `hold` seconds (see the module docstring)."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            data = await asyncio.wait_for(reader.read(1), hold)
        except TimeoutError:
            return True  # still open, nothing said: something listens
        return data != b""  # a server that speaks first is up; EOF means nobody is inside
    except (OSError, TimeoutError):
        return False
    finally:
        await _close(writer)


async def check_once(replica: Replica, check: HealthCheck, host_header: str) -> tuple[bool, bool, str]:
    """One health check: (passed, whether anything answered at all, what was seen)."""
    if replica.host_port is None:
        return False, False, "no published port"
    if check.path is None:
        ok = await tcp_probe(replica.host_port, check.timeout, host=replica.host)
        return ok, ok, "port accepts connections" if ok else "port does not accept connections"
    status = await http_probe(replica.host_port, host_header, check.path, check.timeout, host=replica.host)
    if status is None:
        return False, False, f"no HTTP answer on GET {check.path}"
    return status < 400, True, f"GET {check.path} answered {status}"


STARTUP_POLL = 0.01  # seconds between probes while a replica starts
STARTUP_WINDOW = 5.0  # seconds after start during which it is probed that often


def probe_delay(elapsed: float, check: HealthCheck, answered: bool) -> float:
    """How long to wait before the next probe of a replica that has not passed yet.

    Most apps start listening well within a second, and every gap between probes is added to the
    time a deploy takes before traffic moves, while a probe of a port nobody listens on yet costs
    a fraction of a millisecond over loopback. So: every 10 ms at first, the check's own interval
    for slow starters, and for an app that answers but fails (each probe is work for it).
    """
    fast = not answered and elapsed < STARTUP_WINDOW
    return min(STARTUP_POLL, check.interval) if fast else check.interval


async def wait_ready(engine: Engine, replica: Replica, *, check: HealthCheck, host_header: str, timeout: float) -> None:
    """Return once the replica passes `check.retries` checks in a row; raise DeployFailed otherwise."""
    deadline = time.monotonic() + timeout
    if check.grace:
        await asyncio.sleep(min(check.grace, timeout))
    passed, answered, last = 0, False, "not checked yet"
    started = time.monotonic()
    next_inspect = started + 0.5
    while True:
        if replica.process == WEB:
            ok, answered, last = await check_once(replica, check, host_header)
        else:
            ok, last = replica.running, "running"
        passed = passed + 1 if ok else 0
        if passed >= (check.retries if replica.process == WEB else 1):
            return
        if ok or time.monotonic() >= next_inspect:
            current = await asyncio.to_thread(_inspect, engine, replica)
            if current is None or not current.running:
                logs = await asyncio.to_thread(_logs, engine, replica.id)
                raise DeployFailed(f"{replica.name} exited before passing its health check.\n{logs}".rstrip())
            replica = current
            next_inspect = time.monotonic() + 0.5
        if time.monotonic() > deadline:
            logs = await asyncio.to_thread(_logs, engine, replica.id)
            raise DeployFailed(f"{replica.name} failed its health check for {timeout:.0f}s ({last}).\n{logs}".rstrip())
        await asyncio.sleep(probe_delay(time.monotonic() - started, check, answered) if passed == 0 else check.interval)


async def stop_replicas(engine: Engine, replicas: list[Replica], timeout: int) -> None:
    """SIGTERM, wait up to timeout, SIGKILL, remove: all replicas at once."""
    await asyncio.gather(*(asyncio.to_thread(engine.stop_and_remove, r.id, timeout) for r in replicas))


def _inspect(engine: Engine, replica: Replica) -> Replica | None:
    for r in engine.list_replicas(replica.app):
        if r.id == replica.id:
            return r
    return None


def _logs(engine: Engine, container_id: str) -> str:
    try:
        return engine.logs(container_id, tail=30)
    except EngineError:
        return ""
