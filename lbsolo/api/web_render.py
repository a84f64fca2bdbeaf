"""The web UI's static files and templates: where they are, their versions, the headers every page
carries. Loaded once when the UI's router is built.

It must not know routes, sessions or apps: web.py renders with what this module sets up.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2

from lbsolo.api.web_session import local_time

PACKAGE = Path(__file__).resolve().parent
TEMPLATES = PACKAGE / "templates"
STATIC = PACKAGE / "static"
CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".png": "image/png",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def static_versions() -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in sorted(STATIC.glob("*")):
        if path.is_file() and path.suffix in CONTENT_TYPES:
            body = path.read_bytes()
            files[path.name] = (body, hashlib.sha256(body).hexdigest()[:10])
    return files


def template_env(static: dict[str, tuple[bytes, str]]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = local_time
    env.globals["can"] = lambda path, method="POST": False  # a page of a session says what it may do
    env.globals["static"] = lambda name: f"/ui/static/{name}?v={static[name][1]}"
    return env
