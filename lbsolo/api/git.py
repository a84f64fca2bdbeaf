"""`git push lbsolo main`: a git remote per app over smart HTTP, served by the real `git http-backend`.

Each app gets a bare repository under `$LBSOLO_HOME/git/<app>.git`. Pushes are authenticated
with HTTP Basic (any user name; the admin token or an extra token as password, see auth.py).
The repository's post-receive hook runs `lbsolo git-hook <app>`, which archives the pushed
commit and deploys it through the API, so the build and rollout output appears in the push as
`remote:` lines.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shlex
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from lbsolo.api.auth import Authenticator, basic_password
from lbsolo.api.guard import caller_of
from lbsolo.build_git import run_git
from lbsolo.errors import InvalidInput, NotFound, Unauthorized
from lbsolo.models import validate_app_name
from lbsolo.previews import (
    PullRequest,
    bitbucket_push,
    event_of,
    is_pull_request_event,
    parse_pull_request,
    provider_of,
)
from lbsolo.service import this_command

if TYPE_CHECKING:  # the router is handed the platform
    from lbsolo.core import Platform

HOOK = """#!/bin/sh
# Installed by lbsolo: deploy what was pushed. Output goes back to `git push` as remote: lines.
exec {lbsolo} git-hook {app}
"""


async def ensure_repo(root: Path, app: str) -> Path:
    """The app's bare repository, created on first use with the deploy hook installed."""
    repo = root / f"{app}.git"
    if not (repo / "HEAD").exists():
        root.mkdir(parents=True, exist_ok=True)
        await run_git("init", "--bare", "--quiet", "--initial-branch=main", str(repo))
        await run_git("config", "http.receivepack", "true", cwd=repo)
    hook = repo / "hooks" / "post-receive"
    # The daemon's own way of running lbsolo: the one-file dist/lbsolo has no `python -m lbsolo`.
    text = HOOK.format(lbsolo=shlex.join(this_command()), app=shlex.quote(app))
    if not hook.exists() or hook.read_text() != text:
        hook.write_text(text)
        hook.chmod(0o755)
    return repo


def check_signature(headers: Mapping[str, str], body: bytes, secret: str) -> None:
    """Unauthorized unless the body is signed with the app's hook secret: GitHub's X-Hub-Signature-256,
    Gitea's X-Gitea-Signature, Bitbucket's X-Hub-Signature (sha256=, HMAC) or GitLab's X-Gitlab-Token.

    Nothing of the body is parsed before this passes.
    """
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    github = headers.get("x-hub-signature-256", "")
    gitea = headers.get("x-gitea-signature", "") or headers.get("x-gogs-signature", "")
    gitlab = headers.get("x-gitlab-token", "")
    bitbucket = headers.get("x-hub-signature", "")  # GitHub sends a sha1= one here too: not taken
    ok = (
        (github and hmac.compare_digest(github.removeprefix("sha256="), expected))
        or (gitea and hmac.compare_digest(gitea, expected))
        or (gitlab and hmac.compare_digest(gitlab.encode(), secret.encode()))
        or (bitbucket.startswith("sha256=") and hmac.compare_digest(bitbucket.removeprefix("sha256="), expected))
    )
    if not ok:
        raise Unauthorized("webhook signature missing or wrong (use the secret from `lbsolo hooks:url APP`)")


def push_from_payload(headers: Mapping[str, str], body: bytes, secret: str) -> tuple[str, str, str] | None:
    """(clone URL, branch, commit) of a GitHub, GitLab, Gitea or Bitbucket push event whose signature checks out.

    Raises Unauthorized for a missing or wrong signature; None for events that are not pushes.
    """
    check_signature(headers, body, secret)
    event = event_of(headers)
    if event not in ("push", "push hook", "repo:push"):
        return None
    try:
        payload = json.loads(body)
        repo = payload.get("repository") or {}
        if event == "repo:push":  # Bitbucket: a list of changes, no clone URL
            pushed = bitbucket_push(payload)
            return None if pushed is None else (str(repo.get("full_name") or ""), *pushed)
        project = payload.get("project") or {}
        url = repo.get("clone_url") or project.get("git_http_url") or repo.get("git_http_url")
        ref, commit = str(payload["ref"]), str(payload.get("after") or payload.get("checkout_sha") or "")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InvalidInput(f"not a push payload: {e}") from e
    if not url or not ref.startswith("refs/heads/"):
        return None
    return str(url), ref.removeprefix("refs/heads/"), commit


def pull_request_from_payload(headers: Mapping[str, str], body: bytes) -> PullRequest | str:
    """The pull request of a (signature-checked) pull/merge request event, or why it asks for nothing."""
    provider = provider_of(headers)
    if provider is None:
        return "not an event of GitHub, GitLab, Gitea or Bitbucket"
    try:
        payload = json.loads(body)
    except ValueError as e:
        raise InvalidInput(f"not a pull request payload: {e}") from e
    return parse_pull_request(provider, event_of(headers), payload)


def create_git_router(platform: Platform, token: str, api_url: str, auth: Authenticator) -> APIRouter:
    router = APIRouter(tags=["git"])
    root = platform.settings.home / "git"

    @router.post("/hooks/{app}", tags=["git"], status_code=202)
    async def push_webhook(app: str, request: Request) -> dict[str, object]:
        """Inbound push webhook (GitHub, GitLab, Gitea, Bitbucket): rebuilds and rolls out the pushed
        main/master; pull/merge request events make, update and remove the app's preview apps.

        Authenticated by the app's hook secret (HMAC signature or GitLab token), not the API token.
        It deploys the app's own repository (`lbsolo hooks:url APP --repo URL`) at the pushed
        commit, whatever repository the payload names; 409 when the app has none. Previews are
        built from that repository's pull ref (never a fork's URL) when `previews:settings APP
        --enable` is on; the answer says what the event does, or why it does nothing.
        """
        try:
            validate_app_name(app)
            secret = await platform.hook_secret(app, create=False)
        except (InvalidInput, NotFound) as e:  # say nothing about which apps exist
            raise Unauthorized("no webhook is configured here (see: lbsolo hooks:url APP)") from e
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        check_signature(headers, body, secret)  # before anything of the body is read
        if is_pull_request_event(headers):
            pr = pull_request_from_payload(headers, body)
            if isinstance(pr, str):
                return {"previewing": False, "app": app, "reason": pr}
            return await platform.previews.on_pull_request(app, pr)
        push = push_from_payload(headers, body, secret)
        if push is None:
            return {"deploying": False, "reason": "not a push event"}
        _, branch, commit = push  # the payload's URL is never cloned: the app's stored repository is
        if branch not in ("main", "master"):
            return {"deploying": False, "reason": f"only main or master deploy; pushed {branch}"}
        job = await platform.deploy_pushed(app, commit or branch)
        return {"deploying": True, "app": app, "ref": commit or branch, "job": job.app}

    @router.api_route("/git/{app}.git/{path:path}", methods=["GET", "POST"], include_in_schema=False)
    async def git_http(app: str, path: str, request: Request) -> Response:
        # The guard has checked the password before any body was read; this holds without the guard too.
        if caller_of(request.scope) is None and await auth.basic(request.headers.get("authorization", "")) is None:
            exc = Unauthorized("git needs an API token as the password (see: lbsolo git:remote APP)")
            return Response(exc.message + "\n", status_code=401, headers={"WWW-Authenticate": 'Basic realm="lbsolo"'})
        validate_app_name(app)
        await platform.get_app(app)  # 404 for unknown apps
        await ensure_repo(root, app)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(platform.settings.home),
            "GIT_PROJECT_ROOT": str(root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{app}.git/{path}",
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.url.query,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "REMOTE_USER": "lbsolo",
            "REMOTE_ADDR": request.client.host if request.client else "",
            # what the post-receive hook needs to call the API back
            "LBSOLO_API_URL": api_url,
            # the pusher's own token, so the deploy is theirs (their role, their name in the audit log)
            "LBSOLO_TOKEN": basic_password(request.headers.get("authorization", "")) or token,
            "LBSOLO_VIA": "git",
            "LBSOLO_HOME": str(platform.settings.home),
        }
        if request.headers.get("content-encoding"):
            env["HTTP_CONTENT_ENCODING"] = request.headers["content-encoding"]
        if request.headers.get("git-protocol"):
            env["GIT_PROTOCOL"] = request.headers["git-protocol"]
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None

        async def feed() -> None:
            assert proc.stdin is not None
            try:
                async for chunk in request.stream():
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            finally:
                proc.stdin.close()

        feeder = asyncio.create_task(feed())
        status, headers = 200, {}
        while line := (await proc.stdout.readline()).rstrip(b"\r\n"):
            key, _, value = line.decode("latin-1").partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            else:
                headers[key.strip()] = value.strip()
        media_type = headers.pop("Content-Type", None)

        async def body() -> AsyncIterator[bytes]:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(64 * 1024):
                yield chunk
            await feeder
            await proc.wait()

        return StreamingResponse(body(), status_code=status, headers=headers, media_type=media_type)

    return router
