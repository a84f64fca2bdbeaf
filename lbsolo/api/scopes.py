"""What a token may do: its role (admin, deploy, read) and the apps it is limited to. Pure.

The guard asks `refusal` for every authenticated request (REST and git push), knowing the route
template and its path parameters but not the body: one place, before anything is read.

- `read`: GET only, and not the admin's reads (tokens, audit, webhooks, an app's hook secret, the
  platform's backup).
- `deploy`: what `read` may, and deploy (upload, git URL, git push), config:set/unset, scale,
  rollback, run, cancel builds. Not: destroy apps or add-ons, tokens, webhooks, routes, domains,
  add-ons' credentials or restores, preview settings or removing a preview (they decide whose code
  runs here, with which secrets), anything on the platform as a whole (the cluster and its nodes too).
- `admin`: everything (today's extra tokens, and the admin token of $LBSOLO_HOME/token).
- Apps (`--app`): only routes that name one of these apps (the platform-wide listings, add-ons
  and other apps are refused 403: the token's holder is told what it may do, not left guessing).
- The web UI: a session opened with a token may do on a page what the token may do through the
  API. Each UI route is the REST route it acts as (`UI_AS_API`); one not listed is the admin's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from lbsolo.errors import InvalidInput

ROLES = ("admin", "deploy", "read")
READS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Reads only the admin may make: who may act, who did, where events go, the push webhook's secret,
#: the whole platform's backup (every secret is in it) and where its backups are kept, an add-on's
#: data itself (a backup's dump, a fresh export), an app's Kubernetes export (its Secret), and the
#: swarm's join command (its token lets a machine join the cluster).
ADMIN_READS = frozenset(
    {"/api/tokens", "/api/audit", "/api/webhooks", "/api/apps/{name}/hook", "/metrics", "/api/backup",
     "/api/backup/status", "/api/addons/{name}/backups/{backup_id}/download", "/api/addons/{name}/export",
     "/api/apps/{name}/export/k8s", "/api/cluster/join-command"}
)  # fmt: skip
#: The changes a deploy token may make, by route template.
DEPLOY_CHANGES = frozenset(
    {
        ("POST", "/api/apps/{name}/deploy"),
        ("POST", "/api/apps/{name}/deploy/git"),
        ("PATCH", "/api/apps/{name}/config"),
        ("POST", "/api/apps/{name}/scale"),
        ("POST", "/api/apps/{name}/rollback"),
        ("POST", "/api/apps/{name}/run"),
        ("POST", "/api/apps/{name}/builds/cancel"),
        ("POST", "/git/{app}.git/{path:path}"),
    }
)
WHAT = {
    "read": "a read token may only read (GET)",
    "deploy": "a deploy token may deploy, push, set config, scale, roll back, run and read logs",
}


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}: admin, deploy or read")
    return role


def app_of(template: str, params: dict[str, Any]) -> str | None:
    """The app a route acts on, if it names one (add-ons are not apps)."""
    if template.startswith("/api/apps/") or template.startswith("/git/"):
        name = params.get("name") or params.get("app")
        return str(name) if name else None
    return None


def limited_to(apps: Iterable[str]) -> str:
    return f" on {', '.join(sorted(apps))}" if apps else ""


def refusal(role: str, apps: tuple[str, ...], method: str, template: str, params: dict[str, Any]) -> str | None:
    """Why a token of this role and apps may not make this request; None when it may."""
    if role == "admin" and not apps:
        return None
    if apps:
        app = app_of(template, params)
        if app is None and template != "/api/info":
            return f"this token is limited to the apps {', '.join(sorted(apps))}: {template} is not one of their routes"
        if app is not None and app not in apps:
            return f"this token is limited to the apps {', '.join(sorted(apps))}, not {app!r}"
        if role == "admin":
            return None
    if method in READS or (
        template.startswith("/git/") and method == "POST" and str(params.get("path", "")) == "git-upload-pack"
    ):
        if template in ADMIN_READS:
            return f"{template} is for admin tokens; {WHAT.get(role, role)}{limited_to(apps)}"
        return None
    if role == "deploy" and (method, template) in DEPLOY_CHANGES:
        return None
    return f"{method} {template} needs an admin token; {WHAT.get(role, role)}{limited_to(apps)}"


def covers(role: str, apps: tuple[str, ...], new_role: str, new_apps: Iterable[str]) -> bool:
    """Whether a token may hand out a token of `new_role` over `new_apps` (never more than it has)."""
    rank = {"read": 0, "deploy": 1, "admin": 2}
    if rank[new_role] > rank[role]:
        return False
    return not apps or (bool(list(new_apps)) and set(new_apps) <= set(apps))


#: The web UI's routes as the REST routes they act as, so `refusal` decides for a UI session too.
#: The dashboard is every role's landing page (it lists only the token's apps). A UI route that is
#: not here is the admin's alone.
UI_AS_API: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/ui/"): ("GET", "/api/info"),
    ("POST", "/ui/logout"): ("GET", "/api/info"),
    ("GET", "/ui/apps/{name}"): ("GET", "/api/apps/{name}"),
    ("GET", "/ui/apps/{name}/deploy/stream"): ("GET", "/api/apps/{name}"),
    ("GET", "/ui/apps/{name}/logs/stream"): ("GET", "/api/apps/{name}/logs"),
    ("GET", "/ui/addons"): ("GET", "/api/addons"),
    ("GET", "/ui/routes"): ("GET", "/api/routes"),
    ("GET", "/ui/nodes"): ("GET", "/api/nodes"),
    ("GET", "/ui/alerts"): ("GET", "/api/alerts"),
    ("GET", "/ui/webhooks"): ("GET", "/api/webhooks"),
    ("GET", "/ui/audit"): ("GET", "/api/audit"),
    ("GET", "/ui/addons/{name}/backups/{backup_id}/download"): (
        "GET", "/api/addons/{name}/backups/{backup_id}/download"),
    ("POST", "/ui/apps/{name}/config"): ("PATCH", "/api/apps/{name}/config"),
    ("POST", "/ui/apps/{name}/config/unset"): ("PATCH", "/api/apps/{name}/config"),
    ("POST", "/ui/apps/{name}/rollback"): ("POST", "/api/apps/{name}/rollback"),
    ("POST", "/ui/apps/{name}/scale"): ("POST", "/api/apps/{name}/scale"),
}  # fmt: skip
#: The UI routes anyone may reach: the login page reached without a session, and the files it needs.
UI_OPEN = frozenset({"/", "/ui", "/ui/login", "/ui/static/{name}"})


def ui_refusal(role: str, apps: tuple[str, ...], method: str, template: str, params: dict[str, Any]) -> str | None:
    """Why a UI session of a token of this role and apps may not open this page or post this form."""
    if role == "admin" and not apps:
        return None
    if template in UI_OPEN:
        return None
    if (method, template) == ("GET", "/ui/") or (method, template) == ("POST", "/ui/logout"):
        return None  # every token's landing page (it shows that token's apps) and the way out
    acts_as = UI_AS_API.get((method, template))
    if acts_as is None:
        return f"{method} {template} is for the admin; {WHAT.get(role, 'this token may act only')}{limited_to(apps)}"
    return refusal(role, apps, acts_as[0], acts_as[1], params)


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(template)))


_UI_PATTERNS = [(method, template, _pattern(template)) for method, template in UI_AS_API]


def ui_allowed(role: str, apps: tuple[str, ...], method: str, path: str) -> bool:
    """Whether a UI session of this token may post to (or open) this path: the page hides what it may not."""
    if role == "admin" and not apps:
        return True
    for m, template, pattern in _UI_PATTERNS:
        match = pattern.fullmatch(path)
        if m == method and match:
            return ui_refusal(role, apps, method, template, match.groupdict()) is None
    return False
