"""Requests for a sleeping app, held while it wakes (`apps:sleep`).

A sleeping app's route has no targets and says it is asleep (`Route.asleep`). A request for it is
not refused: its forwarder hands it to `Wakes.hold`, the first one for the app asks whoever
started the proxy to wake it (the `wake` callback: the core starts a replica and, once it passes
its health check, publishes the app's route with it), and each new routing table lets the held
requests go on (`routes_changed`). A wake that fails (`failed`), a route that is neither asleep nor
served, and a wake that takes longer than `timeout` answer the held requests 503 at once.

What it must not do: block, start anything itself, or hold a request whose client has gone (its
forwarder checks, when its turn comes). Bounded by the proxy's connection caps: one held request
per client connection (h2: per stream).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from lbsolo.proxy_request import Request
from lbsolo.proxy_routes import RouteTable

__all__ = ["Held", "Wakes"]


class Held(Protocol):
    """A forwarder with a request held (proxy_forward.Forwarder)."""

    def resume_held(self, req: Request) -> None:
        """The app has targets now: send the request on, if its client still waits for it."""
        ...

    def fail_held(self, req: Request, message: str) -> None:
        """Answer the request 503 with `message`, if its client still waits for it."""
        ...


class Wakes:
    """Held requests per sleeping app, and the wake-up each app's first one asks for."""

    def __init__(self, wake: Callable[[str], None], timeout: float, clock: Callable[[], float]) -> None:
        self._wake = wake
        self.timeout = timeout
        self._clock = clock
        self.held: dict[str, list[tuple[Held, Request, float]]] = {}

    def hold(self, app: str, holder: Held, req: Request) -> None:
        waiting = self.held.get(app)
        first = waiting is None
        if waiting is None:
            self.held[app] = waiting = []
        waiting.append((holder, req, self._clock() + self.timeout))
        if first:
            self._wake(app)

    def routes_changed(self, table: RouteTable) -> None:
        """A new table: an app with targets again gets its held requests back; one neither asleep
        nor served (stopped, destroyed) has them answered 503."""
        for app in list(self.held):
            route = table.routes.get(app)
            if route is not None and route.targets:
                for holder, req, _ in self.held.pop(app):
                    holder.resume_held(req)
            elif route is None or not route.asleep:
                self.failed(app, f"app {app} is not running")

    def failed(self, app: str, message: str) -> None:
        for holder, req, _ in self.held.pop(app, ()):
            holder.fail_held(req, message)

    def sweep(self, now: float) -> None:
        """Answer the requests held past their deadline."""
        for app, waiting in list(self.held.items()):
            late = [entry for entry in waiting if entry[2] <= now]
            if not late:
                continue
            waiting[:] = [entry for entry in waiting if entry[2] > now]
            if not waiting:
                del self.held[app]
            for holder, req, _ in late:
                holder.fail_held(req, f"app {app} did not wake up in time")
