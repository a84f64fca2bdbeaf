"""Which route a request will reach, known before it is routed: for the API guard's audit lines
and token scopes, which must decide (and refuse) before the app reads a body.

FastAPI keeps included routers nested; the index lays every route out flat once, on first use
(when every router has been included), as (methods, path regex, template).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from starlette.routing import compile_path

from lbsolo.api.guard import Scope

Entry = tuple[frozenset[str], re.Pattern[str], str]


class RouteIndex:
    """Called with a request's scope: its route template and path parameters, or None."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.table: list[Entry] = []

    def __call__(self, scope: Scope) -> tuple[str, dict[str, Any]] | None:
        if not self.table:
            self.table.extend(flat_routes(self.app.router.routes))
        method, path = scope.get("method", "GET"), scope.get("path", "")
        for methods, regex, template in self.table:
            found = regex.fullmatch(path)
            if found and (not methods or method in methods):
                return template, found.groupdict()
        return None


def flat_routes(routes: Iterable[Any], prefix: str = "") -> Iterator[Entry]:
    """(methods, path regex, template) of every route, included routers' too (FastAPI keeps them nested)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from flat_routes(included.routes, prefix + str(getattr(context, "prefix", "") or ""))
        elif isinstance(getattr(route, "path", None), str):
            template = prefix + route.path
            regex, _, _ = compile_path(template)
            yield frozenset(getattr(route, "methods", None) or ()), regex, template
