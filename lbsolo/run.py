"""Replica lifecycle on the engine: start, wait until ready, stop.

Readiness is checked from the daemon, never from inside the image: an HTTP request through
the port published on 127.0.0.1, carrying the app's own Host header. A bare TCP connect is not
enough, because Docker's userland proxy accepts connections even when nothing listens inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

from lbsolo.engine import Engine
from lbsolo.errors import DeployFailed, EngineError
from lbsolo.models import Release, Replica


def replica_name(app: str, version: int, process: str) -> str:
    return f"lbsolo-{app}-{process}-v{version}-{secrets.token_hex(3)}"


def replica_env(app: str, release: Release, port: int, config: dict[str, str] | None = None) -> dict[str, str]:
    return {**(config or {}), "PORT": str(port), "LBSOLO_APP": app, "LBSOLO_RELEASE": release.label}


async def start_replica(engine: Engine, release: Release, *, process: str, port: int) -> Replica:
    return await asyncio.to_thread(
        engine.run,
        app=release.app,
        release=release.version,
        process=process,
        image=release.image,
        name=replica_name(release.app, release.version, process),
        env=replica_env(release.app, release, port),
        port=port,
    )


async def http_probe(port: int, host_header: str, path: str = "/", timeout: float = 2.0) -> int | None:
    """One HTTP/1.0 GET to 127.0.0.1:port; the status code, or None if nothing answered."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: lbsolo-check\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


async def wait_ready(engine: Engine, replica: Replica, *, host_header: str, timeout: float) -> None:
    """Return once the replica answers HTTP; raise DeployFailed (with its logs) otherwise."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if replica.host_port is not None:
            status = await http_probe(replica.host_port, host_header)
            if status is not None and status < 500:
                return
        current = await asyncio.to_thread(_inspect, engine, replica)
        if current is None or not current.running:
            logs = await asyncio.to_thread(_logs, engine, replica.id)
            raise DeployFailed(f"{replica.name} exited before answering HTTP.\n{logs}".rstrip())
        replica = current
        if time.monotonic() > deadline:
            logs = await asyncio.to_thread(_logs, engine, replica.id)
            raise DeployFailed(
                f"{replica.name} did not answer HTTP on its port within {timeout:.0f}s.\n{logs}".rstrip()
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def stop_replicas(engine: Engine, replicas: list[Replica], timeout: int) -> None:
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
