"""Preview apps per pull request on the real daemon and engine (issue 16).

The connected repository is a bare git repository on this machine (LBSOLO_GIT_ALLOW_LOCAL, as the
other git tests) holding `refs/pull/N/head` like a forge; webhooks are real signed POSTs to the
daemon's /hooks/APP. A pull request opened from a fork names the fork's URL in its payload: the
preview must still run the connected repository's pull ref. Then a push updates the preview, and
closing it removes containers, images, volumes, the route and the DNS name. Everything carries the
test daemon's labels and goes with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from lbsolo.models import LABEL_APP, LABEL_INSTANCE

from .conftest import EXAMPLES, Daemon, running_daemon
from .test_addon_backups import container, psql


@pytest.fixture(scope="module")
def daemon(docker_client, tmp_path_factory):
    """The suite's daemon with a strict DNS zone: only apps' names answer, so a removed preview's stops."""
    home = tmp_path_factory.mktemp("lbsolo-previews") / "home"
    with running_daemon(docker_client, home, {"LBSOLO_DNS_STRICT": "1"}) as d:
        yield d


def git(cwd: Path, *args: str) -> str:
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(cwd), "PATH": "/usr/bin:/bin"}
    identity = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    out = subprocess.run(["git", *identity, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def greeting(work: Path, text: str) -> None:
    app = work / "app.py"
    source = app.read_text()
    start = source.index('os.environ.get("GREETING", ')
    end = source.index(")", start)
    app.write_text(source[:start] + f'os.environ.get("GREETING", "{text}"' + source[end:])


def pull_request_payload(action: str, number: int, head: str, fork_url: str) -> dict[str, Any]:
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "number": number, "merged": action == "closed",
            "head": {"sha": head, "repo": {"full_name": "mallory/prshop", "fork": True, "clone_url": fork_url}},
            "base": {"repo": {"full_name": "acme/prshop"}},
        },
        "repository": {"full_name": "acme/prshop"},
    }  # fmt: skip


def post_hook(daemon: Daemon, secret: str, payload: dict[str, Any], signature: str | None = None) -> httpx.Response:
    body = json.dumps(payload).encode()
    digest = signature or "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": digest, "Content-Type": "application/json"}
    return httpx.post(f"{daemon.api}/hooks/prshop", content=body, headers=headers, timeout=30)


def wait_for(check, timeout: float = 180.0, what: str = "") -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def answers(daemon: Daemon, app: str, text: str) -> bool:
    try:
        r = daemon.get(app, timeout=3)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.text.startswith(text)


def dns_rcode(daemon: Daemon, name: str) -> tuple[int, list[str]]:
    q = dns.message.make_query(f"{name}.lbsolo.localhost", dns.rdatatype.A)
    answer = dns.query.udp(q, "127.0.0.1", port=daemon.dns_port, timeout=3)
    return answer.rcode(), [rr.address for rrset in answer.answer for rr in rrset]


def previews(daemon: Daemon) -> dict[int, dict[str, Any]]:
    r = daemon.api_get("/api/apps/prshop/previews")
    assert r.status_code == 200, r.text
    return {p["number"]: p for p in r.json()["previews"]}


def engine_things(docker_client, daemon: Daemon, app: str) -> dict[str, int]:
    filters = {"label": [f"{LABEL_INSTANCE}={daemon.instance}", f"{LABEL_APP}={app}"]}
    return {
        "containers": len(docker_client.containers.list(all=True, filters=filters)),
        "images": len(docker_client.api.images(filters=filters, quiet=True)),  # ids only: no inspect races
        "volumes": len(docker_client.volumes.list(filters=filters)),
    }


@pytest.fixture
def repository(tmp_path) -> tuple[Path, Path]:
    """(a work tree of examples/hello, the bare `acme/prshop.git` it pushes to)."""
    work = tmp_path / "work"
    shutil.copytree(EXAMPLES / "hello", work)
    git(work, "init", "-q")
    git(work, "add", ".")
    git(work, "commit", "-qm", "main")
    bare = tmp_path / "acme" / "prshop.git"
    bare.parent.mkdir()
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    return work, bare


def open_pull_request(work: Path, bare: Path, number: int, text: str, broken: bool = False) -> str:
    git(work, "checkout", "-q", "-B", f"pr{number}", "main")
    greeting(work, text)
    if broken:
        (work / "Dockerfile").write_text((work / "Dockerfile").read_text() + "RUN exit 3\n")
    git(work, "commit", "-qam", text)
    git(work, "push", "-q", "-f", str(bare), f"pr{number}:refs/pull/{number}/head")
    return git(work, "rev-parse", "HEAD")


def test_a_pull_request_gets_a_preview_updated_on_push_and_removed_on_close(daemon, docker_client, tmp_path, repository):  # noqa: E501
    work, bare = repository
    fork = tmp_path / "mallory"
    shutil.copytree(work, fork)
    greeting(fork, "Forked")  # what a clone of the payload's URL would serve

    assert daemon.cli("apps:create", "prshop").returncode == 0
    out = daemon.cli("config:set", "prshop", "SHOWN=yes", "API_TOKEN=hunter2")
    assert out.returncode == 0, out.stdout + out.stderr
    daemon.cli("volumes:add", "prshop", "data:/data")  # kept for the first deploy (there is none yet)
    assert daemon.api_get("/api/apps/prshop").json()["volumes"] == {"data": "/data"}
    hook = daemon.cli("hooks:url", "prshop", "--repo", str(bare))
    assert hook.returncode == 0, hook.stdout + hook.stderr
    secret = hook.stdout.split("secret:")[1].split()[0]
    out = daemon.cli("previews:settings", "prshop", "--enable", "--max", "2")
    assert out.returncode == 0 and "on, at most 2" in out.stdout, out.stdout + out.stderr

    head = open_pull_request(work, bare, 1, "Preview")
    assert post_hook(daemon, secret, pull_request_payload("opened", 1, head, str(fork)), "sha256=00").status_code == 401
    started = time.monotonic()
    r = post_hook(daemon, secret, pull_request_payload("opened", 1, head, str(fork)))
    assert r.status_code == 202 and r.json()["previewing"] and r.json()["fork"], r.text
    wait_for(lambda: answers(daemon, "prshop-pr-1", "Preview from lbsolo!"), what="the preview answering")
    to_first_200 = time.monotonic() - started
    print(f"\nwebhook -> preview answering: {to_first_200:.2f}s")
    assert previews(daemon)[1]["status"] == "running" and previews(daemon)[1]["head"] == head
    config = daemon.api_get("/api/apps/prshop-pr-1/config").json()
    assert config == {"SHOWN": "yes"}  # API_TOKEN looks secret: left out by default
    assert dns_rcode(daemon, "prshop-pr-1") == (dns.rcode.NOERROR, ["127.0.0.1"])
    listed = daemon.cli("previews", "prshop")
    assert listed.returncode == 0 and "prshop-pr-1" in listed.stdout and "running" in listed.stdout, listed.stdout

    git(work, "checkout", "-q", "pr1")
    greeting(work, "Updated")
    git(work, "commit", "-qam", "second")
    git(work, "push", "-q", str(bare), "pr1:refs/pull/1/head")
    second = git(work, "rev-parse", "HEAD")
    started = time.monotonic()
    r = post_hook(daemon, secret, pull_request_payload("synchronize", 1, second, str(fork)))
    assert r.status_code == 202 and r.json()["step"] == "update", r.text
    wait_for(lambda: answers(daemon, "prshop-pr-1", "Updated from lbsolo!"), what="the update answering")
    print(f"push webhook -> update answering: {time.monotonic() - started:.2f}s")
    running = engine_things(docker_client, daemon, "prshop-pr-1")
    assert running["containers"] >= 1 and running["images"] >= 1 and running["volumes"] == 1, running

    r = post_hook(daemon, secret, pull_request_payload("closed", 1, second, str(fork)))
    assert r.status_code == 202 and r.json()["step"] == "destroy", r.text
    wait_for(lambda: 1 not in previews(daemon), timeout=60, what="the preview removed")
    assert daemon.api_get("/api/apps/prshop-pr-1").status_code == 404
    assert engine_things(docker_client, daemon, "prshop-pr-1") == {"containers": 0, "images": 0, "volumes": 0}
    assert daemon.get("prshop-pr-1").status_code == 404
    assert dns_rcode(daemon, "prshop-pr-1")[0] == dns.rcode.NXDOMAIN
    kinds = [e["kind"] for e in daemon.api_get("/api/events?app=prshop").json() if e["kind"].startswith("preview.")]
    assert kinds == ["preview.created", "preview.updated", "preview.destroyed"], kinds
    # closing again (a redelivery) is no error
    r = post_hook(daemon, secret, pull_request_payload("closed", 1, second, str(fork)))
    assert r.status_code == 202 and "nothing to remove" in r.json()["reason"]


def test_a_failed_preview_build_leaves_nothing_running_and_says_why(daemon, docker_client, repository):
    work, bare = repository
    daemon.cli("apps:create", "prshop")  # made by the test before, or now
    hook = daemon.cli("hooks:url", "prshop", "--repo", str(bare))
    secret = hook.stdout.split("secret:")[1].split()[0]
    assert daemon.cli("previews:settings", "prshop", "--enable").returncode == 0
    head = open_pull_request(work, bare, 2, "Broken", broken=True)
    r = post_hook(daemon, secret, pull_request_payload("opened", 2, head, "https://example.com/x.git"))
    assert r.status_code == 202 and r.json()["previewing"], r.text
    wait_for(lambda: previews(daemon).get(2, {}).get("status") == "failed", what="the failure recorded")
    row = previews(daemon)[2]
    assert "nothing of it runs" in row["error"] and "build failed" in row["error"], row
    assert row["app"] == "" and daemon.api_get("/api/apps/prshop-pr-2").status_code == 404
    assert engine_things(docker_client, daemon, "prshop-pr-2") == {"containers": 0, "images": 0, "volumes": 0}
    kinds = [e["kind"] for e in daemon.api_get("/api/events?app=prshop").json() if e["kind"].startswith("preview.")]
    assert kinds[-1] == "preview.failed"
    r = post_hook(daemon, secret, pull_request_payload("closed", 2, head, "https://example.com/x.git"))
    assert r.status_code == 202
    wait_for(lambda: 2 not in previews(daemon), timeout=30, what="the failed record dropped")


def test_with_addons_a_preview_gets_its_own_postgres_loaded_from_the_parents_latest_backup(
    daemon, docker_client, repository
):
    work, bare = repository
    assert daemon.cli("apps:create", "pgshop").returncode == 0
    out = daemon.cli("addons:create", "postgres", "--app", "pgshop", "--name", "pgshop-pg", "--version", "15")
    assert out.returncode == 0, out.stdout + out.stderr
    parent_db = container(docker_client, daemon, "pgshop-pg")
    psql(parent_db, "create table items (n int); insert into items select generate_series(1, 500)")
    out = daemon.cli("addons:backup", "pgshop-pg")
    assert out.returncode == 0, out.stdout + out.stderr
    psql(parent_db, "insert into items values (1000)")  # after the backup: not in the preview's copy
    hook = daemon.cli("hooks:url", "pgshop", "--repo", str(bare))
    secret = hook.stdout.split("secret:")[1].split()[0]
    assert daemon.cli("previews:settings", "pgshop", "--enable", "--with-addons").returncode == 0

    head = open_pull_request(work, bare, 3, "Databased")
    body = json.dumps(pull_request_payload("opened", 3, head, "https://example.com/x.git")).encode()
    digest = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": digest}
    started = time.monotonic()
    r = httpx.post(f"{daemon.api}/hooks/pgshop", content=body, headers=headers, timeout=30)
    assert r.status_code == 202 and r.json()["previewing"], r.text
    wait_for(lambda: answers(daemon, "pgshop-pr-3", "Databased from lbsolo!"), timeout=300, what="the preview")
    print(f"\nwebhook -> preview with its own Postgres answering: {time.monotonic() - started:.2f}s")
    (row,) = daemon.api_get("/api/apps/pgshop/previews").json()["previews"]
    assert "pgshop-pr-3-postgres: pgshop-pg's backup" in row["error"], row
    twin = daemon.api_get("/api/addons/pgshop-pr-3-postgres").json()
    assert twin["attachments"] == {"pgshop-pr-3": "DATABASE_URL"}, twin
    assert daemon.api_get("/api/addons/pgshop-pg").json()["attachments"] == {"pgshop": "DATABASE_URL"}
    preview_db = container(docker_client, daemon, "pgshop-pr-3-postgres")
    assert psql(preview_db, "select count(*) from items") == "500"
    psql(preview_db, "delete from items")  # the preview's writes stay in the preview's database
    assert psql(parent_db, "select count(*) from items") == "501"
    assert set(daemon.api_get("/api/apps/pgshop-pr-3/config").json()) == {"DATABASE_URL"}

    r = httpx.post(
        f"{daemon.api}/hooks/pgshop",
        content=(closed := json.dumps(pull_request_payload("closed", 3, head, "x")).encode()),
        headers={"X-GitHub-Event": "pull_request",
                 "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), closed, hashlib.sha256).hexdigest()},
        timeout=30,
    )  # fmt: skip
    assert r.status_code == 202, r.text
    wait_for(lambda: daemon.api_get("/api/apps/pgshop/previews").json()["previews"] == [], timeout=90, what="removal")
    assert daemon.api_get("/api/addons/pgshop-pr-3-postgres").status_code == 404
    addon_filters = {"label": [f"{LABEL_INSTANCE}={daemon.instance}", "lbsolo.addon=pgshop-pr-3-postgres"]}
    assert docker_client.containers.list(all=True, filters=addon_filters) == []
    assert docker_client.volumes.list(filters=addon_filters) == []
    assert engine_things(docker_client, daemon, "pgshop-pr-3") == {"containers": 0, "images": 0, "volumes": 0}
    assert psql(parent_db, "select count(*) from items") == "501"  # the parent's data untouched


def bitbucket_hook(daemon: Daemon, app: str, secret: str, event: str, payload: dict[str, Any]) -> httpx.Response:
    body = json.dumps(payload).encode()
    digest = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Event-Key": event, "X-Hub-Signature": digest, "Content-Type": "application/json"}
    return httpx.post(f"{daemon.api}/hooks/{app}", content=body, headers=headers, timeout=30)


def test_bitbucket_pushes_deploy_and_pull_requests_get_previews_from_their_commit(daemon, docker_client, repository):
    work, bare = repository
    assert daemon.cli("apps:create", "bbshop").returncode == 0
    hook = daemon.cli("hooks:url", "bbshop", "--repo", str(bare))
    secret = hook.stdout.split("secret:")[1].split()[0]
    assert daemon.cli("previews:settings", "bbshop", "--enable").returncode == 0

    git(work, "checkout", "-q", "main")
    greeting(work, "Bucket")
    git(work, "commit", "-qam", "main for bitbucket")
    git(work, "push", "-q", str(bare), "main")
    main = git(work, "rev-parse", "HEAD")
    push = {"push": {"changes": [{"new": {"type": "branch", "name": "main", "target": {"hash": main}}}]},
            "repository": {"full_name": "acme/prshop"}}  # fmt: skip
    r = bitbucket_hook(daemon, "bbshop", secret, "repo:push", push)
    assert r.status_code == 202 and r.json()["deploying"], r.text
    wait_for(lambda: answers(daemon, "bbshop", "Bucket from lbsolo!"), what="the pushed main deployed")

    # Bitbucket keeps no pull refs: the source commit is fetched from the connected repository
    git(work, "checkout", "-q", "-b", "feature-4")
    greeting(work, "Featured")
    git(work, "commit", "-qam", "feature")
    git(work, "push", "-q", str(bare), "feature-4")
    head = git(work, "rev-parse", "HEAD")
    pr = {
        "pullrequest": {
            "id": 4,
            "source": {"commit": {"hash": head[:12]}, "repository": {"full_name": "mallory/prshop"}},
            "destination": {"repository": {"full_name": "acme/prshop"}},
        },
        "repository": {"full_name": "acme/prshop"},
    }
    r = bitbucket_hook(daemon, "bbshop", secret, "pullrequest:created", pr)
    assert r.status_code == 202 and r.json()["previewing"] and r.json()["fork"], r.text
    wait_for(lambda: answers(daemon, "bbshop-pr-4", "Featured from lbsolo!"), what="the Bitbucket preview")
    assert answers(daemon, "bbshop", "Bucket from lbsolo!")  # the parent serves on
    r = bitbucket_hook(daemon, "bbshop", secret, "pullrequest:fulfilled", pr)
    assert r.status_code == 202 and r.json()["step"] == "destroy", r.text
    # the record goes once the removal is over (the app's own record goes first, its images after)
    wait_for(lambda: daemon.api_get("/api/apps/bbshop/previews").json()["previews"] == [], timeout=60, what="removal")
    assert daemon.api_get("/api/apps/bbshop-pr-4").status_code == 404
    assert engine_things(docker_client, daemon, "bbshop-pr-4") == {"containers": 0, "images": 0, "volumes": 0}
