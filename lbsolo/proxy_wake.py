"""Requests for a sleeping app, held while it wakes (`apps:sleep`).

A sleeping app's route has no targets and says it is asleep (`Route.asleep`). A request for it is
not refused: its forwarder hands it to `Wakes.hold`, the first one for the app asks whoever
started the proxy to wake it (the `wake` callback: the core starts a replica and, once it passes
its health check, publishes the app's route with it), and each new routing table lets the held
requests go on (`routes_changed`). A wake that fails (`failed`), a route that is neither asleep nor
served, and a wake that takes longer than `timeout` answer the held requests 503 at once. A
browser's page request (GET, Accept: text/html) still held after `page_after` seconds is answered
a short "starting" page that reloads itself (`Held.wait_page`), so a person sees why it takes a
while; an API client keeps waiting for the app's own answer.

What it must not do: block, start anything itself, or hold a request whose client has gone (its
forwarder checks, when its turn comes). Bounded by the proxy's connection caps: one held request
per client connection (h2: per stream).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from lbsolo.proxy_request import Request
from lbsolo.proxy_routes import RouteTable

__all__ = ["Held", "Wakes", "wants_page"]

RELOAD_AFTER = 2  # seconds a "starting" page waits before it asks again


class Held(Protocol):
    """A forwarder with a request held (proxy_forward.Forwarder)."""

    def resume_held(self, req: Request) -> None:
        """The app has targets now: send the request on, if its client still waits for it."""
        ...

    def fail_held(self, req: Request, message: str) -> None:
        """Answer the request 503 with `message`, if its client still waits for it."""
        ...

    def wait_page(self, req: Request, message: str, retry_after: int) -> None:
        """Answer a browser 503 with a page that reloads itself in `retry_after` seconds."""
        ...


def wants_page(req: Request) -> bool:
    """A browser asking for a page (GET, an Accept that names text/html), from the head it sent."""
    if req.method != b"GET" or req.accept_json:
        return False
    for line in req.head.lower().split(b"\r\n")[1:]:
        if line.startswith(b"accept:"):
            return b"text/html" in line
    return False


class Wakes:
    """Held requests per sleeping app, and the wake-up each app's first one asks for."""

    def __init__(
        self, wake: Callable[[str], None], timeout: float, clock: Callable[[], float], page_after: float = 2.0
    ) -> None:
        self._wake = wake
        self.timeout = timeout
        self.page_after = page_after
        self._clock = clock
        # app -> (holder, request, when it gets 503, when a browser gets the "starting" page)
        self.held: dict[str, list[tuple[Held, Request, float, float]]] = {}

    def hold(self, app: str, holder: Held, req: Request) -> None:
        waiting = self.held.get(app)
        first = waiting is None
        if waiting is None:
            self.held[app] = waiting = []
        now = self._clock()
        page_at = now + self.page_after if wants_page(req) else float("inf")
        waiting.append((holder, req, now + self.timeout, page_at))
        if first:
            self._wake(app)

    def routes_changed(self, table: RouteTable) -> None:
        """A new table: an app with targets again gets its held requests back; one neither asleep
        nor served (stopped, destroyed) has them answered 503."""
        for app in list(self.held):
            route = table.routes.get(app)
            if route is not None and route.targets:
                for holder, req, _, _ in self.held.pop(app):
                    holder.resume_held(req)
            elif route is None or not route.asleep:
                self.failed(app, f"app {app} is not running")

    def failed(self, app: str, message: str) -> None:
        for holder, req, _, _ in self.held.pop(app, ()):
            holder.fail_held(req, message)

    def sweep(self, now: float) -> None:
        """Answer the requests held past their deadline, and browsers held past `page_after`."""
        for app, waiting in list(self.held.items()):
            due = [entry for entry in waiting if entry[2] <= now or entry[3] <= now]
            if not due:
                continue
            waiting[:] = [entry for entry in waiting if entry[2] > now and entry[3] > now]
            if not waiting:
                del self.held[app]  # the wake goes on; the reloaded page is held (or served) anew
            for holder, req, deadline, _ in due:
                if deadline <= now:
                    holder.fail_held(req, f"app {app} did not wake up in time")
                else:
                    holder.wait_page(req, f"{app} is starting: this page reloads by itself.", RELOAD_AFTER)
