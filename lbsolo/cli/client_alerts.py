"""The API calls of the alert verbs (alerts, alerts:rules, alerts:set), typed as lbsolo.cli.client's
are: they belong there, and move there once that file is free to take them (it is at its size
bound). They use only the client's public request().
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from lbsolo.cli.client import Client


def alerts(c: Client, limit: int = 20) -> dict[str, Any]:
    return dict(c.request("GET", "/api/alerts", params={"limit": limit}))


def rules(c: Client) -> list[dict[str, Any]]:
    return list(c.request("GET", "/api/alerts/rules"))


def set_rule(c: Client, rule: str, body: dict[str, Any]) -> dict[str, Any]:
    return dict(c.request("PUT", "/api/alerts/rules/" + urllib.parse.quote(rule, safe=""), json=body))


def test(c: Client) -> dict[str, Any]:
    return dict(c.request("POST", "/api/alerts/test"))
