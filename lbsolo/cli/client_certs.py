"""The API calls of the certificate verbs (certs, certs:info, certs:issue, certs:renew), typed as
lbsolo.cli.client's are: they belong there, and move there once that file is free to take them.
They use only the client's public request().
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from lbsolo.cli.client import Client

# A try is a preflight, then an order the CA validates: seconds, at most a few minutes.
ISSUE_TIMEOUT = 300.0


def _path(domain: str, *rest: str) -> str:
    return "/api/certs/" + "/".join(urllib.parse.quote(p, safe="") for p in (domain, *rest))


def certs(c: Client) -> list[dict[str, Any]]:
    return list(c.request("GET", "/api/certs"))


def cert(c: Client, domain: str) -> dict[str, Any]:
    return dict(c.request("GET", _path(domain)))


def issue(c: Client, domain: str) -> dict[str, Any]:
    return dict(c.request("POST", _path(domain, "issue"), timeout=ISSUE_TIMEOUT))


def renew(c: Client, domain: str) -> dict[str, Any]:
    return dict(c.request("POST", _path(domain, "renew"), timeout=ISSUE_TIMEOUT))
