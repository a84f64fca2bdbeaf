"""The audit log and scoped tokens on a real daemon (issue 16): a deploy token limited to one app
deploys examples/hello to it, is refused destroying it and deploying another app; `lbsolo audit
--app` shows both, with the actors' names; the UI's Audit page renders them."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from .conftest import EXAMPLES, ROOT, Daemon

pytestmark = pytest.mark.docker

SHOP, OTHER = "aud-shop", "aud-other"


def as_token(daemon: Daemon, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        daemon.cli_argv(*args),
        env={**daemon.env, "LBSOLO_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_a_deploy_token_deploys_its_app_is_refused_the_rest_and_the_audit_log_says_so(daemon: Daemon):
    for app in (SHOP, OTHER):
        assert daemon.cli("apps:create", app).returncode == 0
    try:
        made = daemon.cli("tokens:create", "ci", "--role", "deploy", "--app", SHOP)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        assert "deploy on aud-shop" in made.stderr

        deployed = as_token(daemon, token, "deploy", str(EXAMPLES / "hello"), "--app", SHOP)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert daemon.get(SHOP).status_code == 200

        destroyed = as_token(daemon, token, "destroy", SHOP, "--yes")
        assert destroyed.returncode != 0
        assert "needs an admin token" in destroyed.stdout + destroyed.stderr
        other = as_token(daemon, token, "deploy", str(EXAMPLES / "hello"), "--app", OTHER)
        assert other.returncode != 0
        assert "limited to the apps aud-shop, not 'aud-other'" in other.stdout + other.stderr
        assert daemon.get(SHOP).status_code == 200  # still there

        shown = daemon.cli("audit", "--app", SHOP)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout
        assert "POST /api/apps/{name}/deploy" in lines and "DELETE /api/apps/{name}" in lines
        assert "ci" in lines and "admin" in lines and "403" in lines
        refused = daemon.cli("audit", "--app", OTHER, "--actor", "ci")
        # the CLI asks for the app before uploading: that read is what the token is refused, and audited
        assert "/api/apps/{name}" in refused.stdout and "403" in refused.stdout

        with httpx.Client(base_url=daemon.api, timeout=10) as ui:
            assert ui.post("/ui/login", data={"token": daemon.token, "next": "/ui/audit"}).status_code == 303
            page = ui.get("/ui/audit", params={"app": SHOP})
        assert page.status_code == 200
        assert "DELETE /api/apps/{name}" in page.text and "<td>ci</td>" in page.text
    finally:
        for app in (SHOP, OTHER):
            daemon.cli("destroy", app, "--yes", "--images")
        daemon.cli("tokens:revoke", "ci")
