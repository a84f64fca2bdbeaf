"""The API calls of the cluster verbs (cluster:init, cluster:join-command, nodes, nodes:drain,
nodes:activate), typed as lbsolo.cli.client's are. They use only the client's public request().
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from lbsolo.cli.client import Client

# Making a swarm takes the engine about a second; draining a node, less.
CLUSTER_TIMEOUT = 120.0


def _node(node: str, action: str) -> str:
    return f"/api/nodes/{urllib.parse.quote(node, safe='')}/{action}"


def cluster(c: Client) -> dict[str, Any]:
    return dict(c.request("GET", "/api/cluster"))


def init(c: Client, advertise_addr: str | None) -> dict[str, Any]:
    body = {"advertise_addr": advertise_addr}
    return dict(c.request("POST", "/api/cluster/init", json=body, timeout=CLUSTER_TIMEOUT))


def join_command(c: Client) -> dict[str, Any]:
    return dict(c.request("GET", "/api/cluster/join-command"))


def nodes(c: Client) -> list[dict[str, Any]]:
    return list(c.request("GET", "/api/nodes"))


def drain(c: Client, node: str) -> dict[str, Any]:
    return dict(c.request("POST", _node(node, "drain"), timeout=CLUSTER_TIMEOUT))


def activate(c: Client, node: str) -> dict[str, Any]:
    return dict(c.request("POST", _node(node, "activate"), timeout=CLUSTER_TIMEOUT))
