"""Opening a connection to an app: its first target, else the others of its route, with a timeout each.

A `Connector` opens a new upstream connection when no pooled one is free. A target that refuses or
times out is ejected for a while (passive health check, `TargetPool.eject`) and the next one of
the app's current targets is tried, healthy ones first; nothing was sent yet, so any request may
go to another target. The attempts are counted in the pool (`connecting`/`connected`), so that
requests queue for a busy target instead of flooding its accept queue.

What it must not do: write or read HTTP, answer a client, or keep state of its own between
attempts: a connection attempt is one coroutine, cancelled when its client goes away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from lbsolo.proxy_routes import RouteTable, Target
from lbsolo.proxy_targets import Connection, Slot, TargetPool

__all__ = ["Connector", "Dialing"]

log = logging.getLogger("lbsolo.proxy")


class Dialing(Protocol):
    """What a connector reads of the proxy when it connects (`ProxyServer` is one)."""

    connect_timeout: float
    table: RouteTable

    def upstream(self, target: Target) -> asyncio.Protocol:
        """A protocol for one new connection to `target`."""
        ...


class Connector:
    def __init__(self, pool: TargetPool, proxy: Dialing) -> None:
        self._pool = pool
        self._proxy = proxy

    async def connect(self, app: str, first: Target, track: Callable[[Target], Slot]) -> Connection | str:
        """A new connection to `first`, else to another of `app`'s targets in the routes now; when
        none can be opened, why the last attempt failed. `track(target)` counts the request against
        each target tried (for drain)."""
        proxy = self._proxy
        pool = self._pool
        loop = asyncio.get_running_loop()
        reason = "refused"
        tried: list[Target] = []
        target: Target | None = first
        while target is not None:
            tried.append(target)
            slot = track(target)
            pool.connecting(slot)
            counted = True
            try:
                async with asyncio.timeout(proxy.connect_timeout):
                    _, up = await loop.create_connection(lambda t=target: proxy.upstream(t), target.host, target.port)
            except TimeoutError:
                reason = "timed out"
                pool.eject(target)
                log.warning("proxy: connecting to %s:%s for app %s timed out", target.host, target.port, app)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                pool.eject(target)
                log.warning("proxy: cannot connect to %s:%s for app %s: %s", target.host, target.port, app, exc)
            else:
                counted = False
                pool.connected(slot)
                return up  # type: ignore[return-value]
            finally:
                if counted:  # failed or cancelled
                    pool.connected(slot)
            current = proxy.table.routes.get(app)
            target = pool.pick_other(current.targets if current is not None else (), tried)
        return reason
