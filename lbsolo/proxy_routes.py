"""The proxy's routing table: which app a request's Host (and path) goes to. Pure decisions, no I/O.

The core builds `Route`s from releases and replicas and hands them to `ProxyServer.set_routes`;
a `RouteTable` is an immutable snapshot, swapped atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import NamedTuple

__all__ = ["Route", "RouteTable", "Target", "normalize_host"]


class Target(NamedTuple):
    """One upstream address (a replica's published port). A tuple: hashing it is cheap (hot path)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Route:
    """Where an app's traffic goes; no targets means the app is not running (503)."""

    app: str
    release: str | None = None
    targets: tuple[Target, ...] = ()
    max_body: int | None = None  # bytes; larger request bodies get 413
    # Custom domains also routed to the app (any case, any port), each optionally with a path
    # prefix that only this app serves on that domain: ("example.com", "shop.example.com/api").
    domains: tuple[str, ...] = ()
    # Plain-HTTP requests are answered with a 308 to https:// instead of being proxied (only when
    # the proxy has an HTTPS listener). A flag read once per request, after the route lookup.
    https_redirect: bool = False
    # The Strict-Transport-Security header line (CRLF-terminated) added to the app's responses sent
    # over HTTPS, made once by the core; b"": none (one truth test per request).
    hsts: bytes = b""
    # Request bodies are read whole (memory, then a temp file) before an upstream connection is
    # taken, so a slow client never holds an app worker. Off for apps that need streaming uploads.
    request_buffering: bool = True
    # The app sleeps (`apps:sleep`): no targets, and a request is held while it wakes (proxy_wake)
    # instead of answered 503.
    asleep: bool = False


def normalize_host(value: str | bytes | None) -> str:
    """A Host header value reduced to the host: lowercase, no port, no trailing dot.

    IPv6 literals keep their brackets (`[::1]:8080` -> `[::1]`); "" when missing.
    """
    if not value:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    host = value.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            host = host[: end + 1]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.endswith("."):
        host = host[:-1]
    return host


def _split_domain(entry: str) -> tuple[str, str]:
    """A `Route.domains` entry as (normalized host, path prefix without a trailing slash, or "")."""
    host, slash, path = entry.strip().partition("/")
    prefix = ("/" + path).rstrip("/") if slash else ""
    return normalize_host(host), prefix


def _under(path: bytes, prefix: bytes) -> bool:
    """Whether a request target's path is `prefix` or below it (`/api` matches `/api`, `/api/x`, `/api?q`)."""
    if not path.startswith(prefix):
        return False
    rest = path[len(prefix) : len(prefix) + 1]
    return rest in (b"", b"/", b"?")


class RouteTable:
    """Immutable snapshot of the routes; pure decisions, no I/O.

    A request is routed by its Host: a custom domain of a route (`Route.domains`, optionally with a
    path prefix: `example.com/api`; the longest matching prefix wins), else `<app>.<domain>`.
    """

    __slots__ = ("_by_host", "_by_name", "_prefixed", "_suffix", "_targets", "by_raw_host", "domain", "routes")

    def __init__(self, domain: str, routes: Mapping[str, Route] | None = None) -> None:
        self.domain: str = normalize_host(domain).strip(".")
        self._suffix = "." + self.domain
        copied: dict[str, Route] = {}
        for name, route in (routes or {}).items():
            if not isinstance(route.targets, tuple) or not isinstance(route.domains, tuple):
                route = replace(route, targets=tuple(route.targets), domains=tuple(route.domains))
            copied[name] = route
        self.routes: Mapping[str, Route] = MappingProxyType(copied)
        self._by_name = {name.lower(): route for name, route in copied.items()}
        self._targets = frozenset(t for r in copied.values() for t in r.targets)
        self._by_host: dict[str, Route] = {}  # custom domain -> route
        prefixed: dict[str, list[tuple[bytes, Route]]] = {}  # custom domain -> [(path prefix, route)]
        for name in sorted(copied):  # the first app (by name) to claim a domain keeps it
            route = copied[name]
            for entry in route.domains:
                host, prefix = _split_domain(entry)
                if not host:
                    continue
                if prefix:
                    prefixed.setdefault(host, []).append((prefix.encode(), route))
                else:
                    self._by_host.setdefault(host, route)
        self._prefixed = {h: sorted(v, key=lambda pr: -len(pr[0])) for h, v in prefixed.items()}
        # raw Host header -> (route by host alone, path-prefix routes of that host), filled as hosts are
        # seen. Public for the per-request lookup (a hit without path prefixes skips `match_raw`): read it only.
        self.by_raw_host: dict[bytes, tuple[Route | None, list[tuple[bytes, Route]] | None]] = {}

    def match_raw(self, raw_host: bytes, target: bytes = b"/") -> Route | None:
        """`match` for a raw Host header value and request target, memoized (the per-request lookup)."""
        try:
            route, prefixes = self.by_raw_host[raw_host]
        except KeyError:
            host = normalize_host(raw_host)
            route, prefixes = self._match_host(host), self._prefixed.get(host)
            if len(self.by_raw_host) < 4096:  # bounded: clients choose the Host header
                self.by_raw_host[raw_host] = (route, prefixes)
        if prefixes is not None:
            for prefix, candidate in prefixes:
                if _under(target, prefix):
                    return candidate
        return route

    def match(self, host: str, path: str = "/") -> Route | None:
        """The route for an already normalized host (and a request path); None when no app is there."""
        prefixes = self._prefixed.get(host)
        if prefixes is not None:
            raw = path.encode("latin-1")
            for prefix, route in prefixes:
                if _under(raw, prefix):
                    return route
        return self._match_host(host)

    def _match_host(self, host: str) -> Route | None:
        route = self._by_host.get(host)
        if route is not None:
            return route
        suffix = self._suffix
        if not host.endswith(suffix):
            return None
        label = host[: -len(suffix)]
        if not label or "." in label:
            return None
        return self._by_name.get(label)

    def apps(self) -> list[str]:
        return sorted(self.routes)

    def targets(self) -> frozenset[Target]:
        """Every target of every route."""
        return self._targets
