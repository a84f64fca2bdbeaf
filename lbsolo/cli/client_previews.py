"""The API calls of the preview verbs (previews, previews:settings, previews:destroy), typed as
lbsolo.cli.client's are: they belong there, and move there once that file is free to take them.
They use only the client's public request().
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from lbsolo.cli.client import Client


def _app(name: str, *rest: str) -> str:
    return "/api/apps/" + "/".join(urllib.parse.quote(p, safe="") for p in (name, "previews", *rest))


def all_previews(c: Client) -> list[dict[str, Any]]:
    return list(c.request("GET", "/api/previews"))


def app_previews(c: Client, name: str) -> dict[str, Any]:
    return dict(c.request("GET", _app(name)))


def set_settings(c: Client, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    return dict(c.request("PATCH", _app(name), json=changes))


def destroy(c: Client, name: str, number: int) -> dict[str, Any]:
    return dict(c.request("DELETE", _app(name, str(number)), timeout=120.0))
