"""Preview apps from pull request webhooks (issue 16): the attacker-input side.

The real API and a real Platform over the fake engine and builder of the secrets test (the builder
records every source it is handed), and real git: the connected repository is a bare repository
with pull refs, as GitHub, Gitea and GitLab keep them; a fork is another repository whose URL the
payloads name. Each test says what fails without the property it proves.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from lbsolo.api.scopes import refusal
from lbsolo.build_git import fetch_ref
from lbsolo.errors import InvalidInput
from tests.security import test_secrets_masked as secrets_test
from tests.security.test_git_clone_safety import git, make_repo
from tests.security.test_secrets_masked import TOKEN, Engine, World
from tests.unit.test_previews import bitbucket, github, gitlab
from tests.unit.test_rollout import _http_server


class PreviewEngine(Engine):
    """The fake engine, counting what an app's destruction removes."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.removed: list[str] = []

    def remove_app_images(self, app: str) -> list[str]:
        self.removed.append(f"images {app}")
        return [f"sha256:{app}"]

    def remove_app_volumes(self, app: str) -> int:
        self.removed.append(f"volumes {app}")
        return 0


def connected_repo(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    """A bare `acme/shop.git` with main and the pull refs of #7 (two commits) and #9, like a forge's."""
    work = tmp_path / "work"
    make_repo(work, "main\n")
    heads = {}
    for number, text in ((7, "pr7 one\n"), (9, "pr9\n")):
        git(work, "checkout", "-q", "-b", f"pr{number}", "main")
        (work / "marker.txt").write_text(text)
        git(work, "commit", "-qam", text)
        heads[number] = git(work, "rev-parse", "HEAD")
    bare = tmp_path / "acme" / "shop.git"
    bare.parent.mkdir()
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    for number in heads:
        git(work, "push", "-q", str(bare), f"pr{number}:refs/pull/{number}/head")
        git(work, "push", "-q", str(bare), f"pr{number}:refs/merge-requests/{number}/head")
    return bare, heads


def push_to_pull_ref(tmp_path: Path, bare: Path, number: int, text: str) -> str:
    work = tmp_path / "work"
    git(work, "checkout", "-q", f"pr{number}")
    (work / "marker.txt").write_text(text)
    git(work, "commit", "-qam", text)
    git(work, "push", "-q", "-f", str(bare), f"pr{number}:refs/pull/{number}/head")
    return git(work, "rev-parse", "HEAD")


def signed(secret: str, payload: Any, event: str = "pull_request", provider: str = "github") -> tuple[bytes, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "github": {"X-GitHub-Event": event, "X-Hub-Signature-256": "sha256=" + digest},
        "gitea": {"X-Gitea-Event": event, "X-GitHub-Event": event, "X-Gitea-Signature": digest},
        "gitlab": {"X-Gitlab-Event": event, "X-Gitlab-Token": secret},
        "bitbucket": {"X-Event-Key": event, "X-Hub-Signature": "sha256=" + digest},
    }[provider]
    return body, {**headers, "Content-Type": "application/json"}


def with_head(payload: dict[str, Any], sha: str) -> dict[str, Any]:
    payload["pull_request"]["head"]["sha"] = sha
    return payload


async def settle(world: World) -> None:
    """Wait until the background work (preview tasks and the deploys they start) is done."""
    for _ in range(200):
        pending = [t for t in world.platform.jobs if not t.done()]
        if not pending:
            return
        await asyncio.wait(pending, timeout=10)
    raise AssertionError("background work never ended")


class Scene:
    def __init__(self, world: World, c: httpx.AsyncClient, secret: str) -> None:
        self.world, self.c, self.secret = world, c, secret

    async def hook(self, payload: Any, event: str = "pull_request", provider: str = "github") -> httpx.Response:
        body, headers = signed(self.secret, payload, event, provider)
        r = await self.c.post("/hooks/shop", content=body, headers=headers)
        await settle(self.world)
        return r

    def apps(self) -> list[str]:
        return [a.name for a in self.world.state.list_apps()]

    def markers(self) -> list[bytes]:
        return [s["marker.txt"] for s in self.world.builder.sources]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.world.platform.bus.recent(200) if e.kind.startswith("preview.")]

    async def previews(self) -> dict[str, Any]:
        r = await self.c.get("/api/apps/shop/previews")
        assert r.status_code == 200, r.text
        return r.json()


def scene(tmp_path: Path, run, body, *, repo: bool = True, enable: bool = True, **settings: Any) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    bare, heads = connected_repo(tmp_path)
    theirs = tmp_path / "mallory" / "shop"
    make_repo(theirs, "fork's own code\n")

    async def main() -> None:
        server, port = await _http_server()
        world = World(tmp_path, port, git_allow_local=True, **settings)
        try:
            async with world.client() as c:
                assert (await c.post("/api/apps", json={"name": "shop"})).status_code == 201
                r = await c.patch("/api/apps/shop/config", json={"set": {"GREETING": "hi"}})
                assert r.status_code == 200, r.text
                r = await c.patch("/api/apps/shop/config", json={"set": {"STRIPE": "sk_live"}, "secret": True})
                assert r.status_code == 200, r.text
                secret = (await c.get("/api/apps/shop/hook")).json()["secret"]
                if repo:
                    assert (await c.put("/api/apps/shop/hook", json={"repo": str(bare)})).status_code == 200
                if enable:
                    r = await c.patch("/api/apps/shop/previews", json={"enabled": True})
                    assert r.status_code == 200 and r.json()["settings"]["enabled"], r.text
                await body(Scene(world, c, secret), bare, heads, theirs)
        finally:
            await settle(world)
            server.close()
            await server.wait_closed()
            world.platform.collector.prune()
            world.state.close()

    run(main)


def test_a_fork_pull_request_is_built_from_the_connected_repositorys_pull_ref_updated_and_removed(tmp_path, run):
    """Without fetch_ref on the connected repository the preview would be the fork's code (or none)."""

    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        payload = github("opened", 7, fork=True)
        payload["pull_request"]["head"]["repo"]["clone_url"] = str(theirs)  # what a fork's payload names
        r = await s.hook(with_head(payload, heads[7]))
        assert r.status_code == 202 and r.json()["previewing"] and r.json()["fork"], r.text
        assert r.json()["ref"] == "refs/pull/7/head"
        assert s.markers() == [b"pr7 one\n"]  # ours, never b"fork's own code\n"
        assert "shop-pr-7" in s.apps()
        preview = s.world.state.get_app("shop-pr-7")
        assert preview.config == {"GREETING": "hi"} and preview.repo == "" and preview.hook_secret == ""
        (row,) = (await s.previews())["previews"]
        assert (row["status"], row["app"], row["head"], row["fork"]) == ("running", "shop-pr-7", heads[7], True)
        assert row["url"] == "http://shop-pr-7.lbsolo.localhost:8080"
        assert "STRIPE" in row["error"]  # the note says which keys were left out (never their values)

        second = push_to_pull_ref(s.world.settings.home.parent, bare, 7, "pr7 two\n")
        r = await s.hook(with_head(github("synchronize", 7, fork=True), second))
        assert r.status_code == 202 and r.json()["step"] == "update", r.text
        assert s.markers()[-1] == b"pr7 two\n"
        assert (await s.previews())["previews"][0]["head"] == second
        r = await s.hook(with_head(github("synchronize", 7, fork=True), second))  # redelivered: nothing new
        assert not r.json()["previewing"] and "already runs" in r.json()["reason"]

        r = await s.hook(github("closed", 7, merged=True))
        assert r.status_code == 202 and r.json()["step"] == "destroy", r.text
        assert "shop-pr-7" not in s.apps()
        assert {"images shop-pr-7", "volumes shop-pr-7"} <= set(s.world.engine.removed)
        assert (await s.previews())["previews"] == []
        assert "shop-pr-7" not in s.world.platform.ctx.routes
        assert s.kinds() == ["preview.created", "preview.updated", "preview.destroyed"]
        assert len(s.markers()) == 2

    scene(tmp_path, run, body)


def test_a_wrong_signature_is_refused_before_the_body_is_parsed(tmp_path, run):
    """With parsing before check_signature, the unreadable body would answer 422, not 401."""

    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        events = (("github", "pull_request"), ("gitea", "pull_request"), ("bitbucket", "pullrequest:created"),
                  ("gitlab", "Merge Request Hook"))  # fmt: skip
        for provider, event in events:
            _, headers = signed("not-the-secret", b"{", event, provider)
            r = await s.c.post("/hooks/shop", content=b"{not json", headers=headers)
            assert r.status_code == 401, (provider, r.text)
        _, headers = signed(s.secret, b"{}", "pullrequest:created", "bitbucket")
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(s.secret.encode(), b"{}", hashlib.sha1).hexdigest()
        assert (await s.c.post("/hooks/shop", content=b"{}", headers=headers)).status_code == 401  # sha256 only
        unsigned = {"X-GitHub-Event": "pull_request"}
        r = await s.c.post("/hooks/shop", content=json.dumps(github("opened")), headers=unsigned)
        assert r.status_code == 401
        assert s.apps() == ["shop"] and s.markers() == [] and s.kinds() == []

    scene(tmp_path, run, body)


def test_absurd_numbers_unknown_repositories_and_closing_nothing_change_nothing(tmp_path, run):
    """Without validate_number an absurd number reaches the name and the fetch; without
    same_repository another repository's event makes a preview of ours."""

    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        for number in (0, -3, 10**12, "7; rm -rf /", True):
            payload = github("opened")
            payload["number"] = number
            payload["pull_request"].pop("number")
            r = await s.hook(payload)
            assert r.status_code == 422 and "absurd pull request number" in r.text, r.text
        other = github("opened", 7)
        other["pull_request"]["base"]["repo"]["full_name"] = "someone/else"
        r = await s.hook(other)
        assert r.status_code == 202 and not r.json()["previewing"], r.text
        assert "not shop's connected repository" in r.json()["reason"]
        r = await s.hook(github("closed", 42))
        assert r.status_code == 202 and "no preview of pull request #42" in r.json()["reason"]
        r = await s.hook(github("labeled", 7))
        assert r.status_code == 202 and "asks for nothing" in r.json()["reason"]
        r = await s.hook(b"[1, 2]")
        assert r.status_code == 422
        assert s.apps() == ["shop"] and s.markers() == [] and s.kinds() == []
        assert (await s.previews())["previews"] == []

    scene(tmp_path, run, body)


def test_an_app_without_a_connected_repository_or_with_previews_off_makes_none(tmp_path, run):
    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        r = await s.hook(github("opened", 7))
        assert r.status_code == 202 and "previews are off for shop" in r.json()["reason"], r.text
        assert s.apps() == ["shop"] and s.markers() == []

    scene(tmp_path, run, body, enable=False)

    async def no_repo(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        r = await s.hook(github("opened", 7))
        assert r.status_code == 409 and "hooks:url shop --repo" in r.text, r.text
        assert s.apps() == ["shop"] and s.markers() == []

    scene(tmp_path / "second", run, no_repo, repo=False)


def test_the_cap_refuses_with_a_recorded_reason_and_a_later_push_retries(tmp_path, run):
    """Without the cap in decide() the second pull request gets a preview too."""

    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        assert (await s.c.patch("/api/apps/shop/previews", json={"max": 1})).status_code == 200
        assert (await s.c.patch("/api/apps/shop/previews", json={"max": 0})).status_code == 422
        assert (await s.hook(github("opened", 7))).json()["previewing"]
        r = await s.hook(github("opened", 9))
        assert r.status_code == 202 and r.json()["refused"] and "cap" in r.json()["reason"], r.text
        assert "shop-pr-9" not in s.apps() and s.markers() == [b"pr7 one\n"]
        rows = {p["number"]: p for p in (await s.previews())["previews"]}
        assert rows[9]["status"] == "refused" and "#9 gets none" in rows[9]["error"] and rows[9]["app"] == ""
        assert s.kinds() == ["preview.created", "preview.refused"]
        await s.hook(github("closed", 7))
        r = await s.hook(github("synchronize", 9))  # a slot is free: the next push makes it
        assert r.json()["step"] == "create" and "shop-pr-9" in s.apps() and s.markers()[-1] == b"pr9\n"

    scene(tmp_path, run, body)


def test_the_platform_wide_cap(tmp_path, run):
    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        assert (await s.hook(github("opened", 7))).json()["previewing"]
        r = await s.hook(github("opened", 9))
        assert r.json()["refused"] and "LBSOLO_MAX_PREVIEWS" in r.json()["reason"]

    scene(tmp_path, run, body, max_previews=1)


def test_a_failed_preview_build_leaves_nothing_and_says_why(tmp_path, run):
    """Without the clean-up in _create the half-made app stays (and counts against the cap)."""

    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        r = await s.hook(github("opened", 8))  # the connected repository has no refs/pull/8/head
        assert r.status_code == 202 and r.json()["previewing"]
        assert s.apps() == ["shop"] and s.markers() == []
        (row,) = (await s.previews())["previews"]
        assert row["status"] == "failed" and "cannot fetch" in row["error"] and "refs/pull/8/head" in row["error"]
        assert row["app"] == "" and "images shop-pr-8" in s.world.engine.removed
        assert s.kinds() == ["preview.failed"]
        r = await s.hook(github("closed", 8))  # its record goes with the pull request
        assert r.json()["step"] == "destroy" and (await s.previews())["previews"] == []
        assert s.kinds() == ["preview.failed"]  # nothing was there to be destroyed

    scene(tmp_path, run, body)


def test_a_taken_name_is_never_used(tmp_path, run):
    """Without trying the next candidate the existing app would be deployed over (or the preview fail)."""

    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        assert (await s.c.post("/api/apps", json={"name": "shop-pr-7"})).status_code == 201
        await s.hook(github("opened", 7))
        (row,) = (await s.previews())["previews"]
        assert row["status"] == "running" and row["app"].startswith("shop-") and row["app"] != "shop-pr-7"
        assert s.world.state.get_app("shop-pr-7").release is None  # the owner's app is untouched
        await s.hook(github("closed", 7))
        assert "shop-pr-7" in s.apps() and row["app"] not in s.apps()

    scene(tmp_path, run, body)


def test_gitlab_gitea_and_bitbucket_events_and_bitbucket_pushes(tmp_path, run):
    """Without Bitbucket's X-Hub-Signature and repo:push its pushes were refused 401 or ignored."""

    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        r = await s.hook(gitlab("open", 7), "Merge Request Hook", "gitlab")
        assert r.json()["ref"] == "refs/merge-requests/7/head" and s.markers() == [b"pr7 one\n"]
        r = await s.hook(gitlab("close", 7), "Merge Request Hook", "gitlab")
        assert r.json()["step"] == "destroy" and "shop-pr-7" not in s.apps()

        r = await s.hook(with_head(github("opened", 9), heads[9]), "pull_request", "gitea")
        assert r.json()["ref"] == "refs/pull/9/head" and s.markers()[-1] == b"pr9\n"
        await s.hook(github("closed", 9), "pull_request", "gitea")

        payload = bitbucket(9, fork=True)
        payload["pullrequest"]["source"]["commit"]["hash"] = heads[9][:12]
        r = await s.hook(payload, "pullrequest:created", "bitbucket")
        assert r.json()["ref"] == heads[9][:12] and s.markers()[-1] == b"pr9\n", r.text
        await s.hook(payload, "pullrequest:rejected", "bitbucket")
        assert s.apps() == ["shop"]

        main = git(s.world.settings.home.parent / "work", "rev-parse", "main")
        push = {"push": {"changes": [{"new": {"type": "branch", "name": "main", "target": {"hash": main}}}]},
                "repository": {"full_name": "acme/shop"}}  # fmt: skip
        r = await s.hook(push, "repo:push", "bitbucket")
        assert r.status_code == 202 and r.json()["deploying"], r.text
        assert s.markers()[-1] == b"main\n"
        feature = {"push": {"changes": [{"new": {"type": "branch", "name": "feature", "target": {"hash": main}}}]}}
        r = await s.hook(feature, "repo:push", "bitbucket")
        assert not r.json()["deploying"] and "only main or master" in r.json()["reason"]

    scene(tmp_path, run, body)


def test_destroying_the_parent_removes_its_previews(tmp_path, run):
    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        await s.hook(github("opened", 7))
        assert "shop-pr-7" in s.apps()
        assert (await s.c.delete("/api/apps/shop")).status_code == 200
        assert s.apps() == [] and s.world.state.get_setting("previews:shop") == {"settings": {}, "prs": {}}

    scene(tmp_path, run, body)


def test_settings_are_admin_and_validated(tmp_path, run):
    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        for bad in ({"max": 51}, {"max": "x"}, {"enabled": "maybe"}):
            assert (await s.c.patch("/api/apps/shop/previews", json=bad)).status_code == 422
        r = await s.c.patch("/api/apps/nope/previews", json={"enabled": True})
        assert r.status_code == 404
        assert (await s.c.delete("/api/apps/shop/previews/7")).status_code == 404
        assert (await s.c.get("/api/previews")).json() == []

    scene(tmp_path, run, body)


@pytest.fixture(autouse=True)
def _counting_engine(monkeypatch):
    """World builds its engine from this name: the fake that counts what destruction removes."""
    monkeypatch.setattr(secrets_test, "Engine", PreviewEngine)


def test_the_app_page_lists_its_previews_with_links(tmp_path, run):
    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        await s.hook(github("opened", 7, fork=True))
        assert (await s.hook(github("opened", 8))).json()["previewing"]  # fails: no such pull ref
        login = await s.c.post("/ui/login", data={"token": TOKEN, "next": "/ui/apps/shop"}, follow_redirects=True)
        assert login.status_code == 200, login.text
        page = login.text
        assert 'id="previews"' in page and "get previews" in page
        assert '<a href="http://shop-pr-7.lbsolo.localhost:8080">shop-pr-7</a>' in page
        assert 'data-preview="8"' in page and "cannot fetch" in page and "(fork)" in page
        assert "sk_live" not in page
        preview = (await s.c.get("/ui/apps/shop-pr-7")).text
        assert 'id="preview-of"' in preview and '<a href="/ui/apps/shop">shop</a>' in preview and "#7" in preview
        assert (await s.c.get("/api/apps/shop-pr-7/previews")).json()["preview_of"] == {"parent": "shop", "number": 7}
        assert (await s.previews())["preview_of"] is None

    scene(tmp_path, run, body)


@pytest.mark.parametrize(
    ("role", "method", "template", "allowed"),
    [
        ("read", "GET", "/api/previews", True),
        ("read", "GET", "/api/apps/{name}/previews", True),
        ("read", "PATCH", "/api/apps/{name}/previews", False),
        ("deploy", "PATCH", "/api/apps/{name}/previews", False),  # it decides whose code runs with which secrets
        ("deploy", "DELETE", "/api/apps/{name}/previews/{number}", False),
        ("admin", "PATCH", "/api/apps/{name}/previews", True),
    ],
)
def test_preview_settings_are_the_admins(role, method, template, allowed):
    """If the preview routes were added to DEPLOY_CHANGES, a CI token could turn on secrets for forks."""
    assert (refusal(role, (), method, template, {"name": "shop", "number": 7}) is None) is allowed


def test_a_body_over_the_hook_cap_is_refused_before_it_is_read(tmp_path, run):
    """Without the guard's cap on /hooks/ the body would be read whole, then checked."""

    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        payload = github("opened", 7)
        payload["padding"] = "x" * 4096
        r = await s.hook(payload)
        assert r.status_code == 413 and "LBSOLO_MAX_HOOK_BYTES" in r.text, r.text
        assert s.apps() == ["shop"] and s.markers() == [] and (await s.previews())["previews"] == []

    scene(tmp_path, run, body, max_hook_bytes=2048)


def test_a_first_build_cut_short_by_a_restart_is_failed_and_its_app_removed(tmp_path, run):
    """Without Previews.recover the record stays "building" for ever, holding a slot of the cap."""

    async def body(s: Scene, bare: Path, heads: dict[int, str], theirs: Path) -> None:
        await s.hook(github("opened", 7))
        doc = s.world.state.get_setting("previews:shop")
        doc["prs"]["7"]["status"] = "building"  # as a daemon killed during the build leaves it
        s.world.state.save_setting("previews:shop", doc)
        await s.world.platform.recover()
        (row,) = (await s.previews())["previews"]
        assert row["status"] == "failed" and "restarted" in row["error"] and row["app"] == ""
        assert "shop-pr-7" not in s.apps()
        assert (await s.hook(github("synchronize", 7))).json()["step"] == "create"  # the next push retries
        assert "shop-pr-7" in s.apps()

    scene(tmp_path, run, body)


def test_fetch_ref_is_held_to_the_clone_policy(tmp_path, run):
    """fetch_ref takes the same URL policy and ref checks as clone: without them a local path, an
    option-like ref or a short name would reach git."""
    bare, heads = connected_repo(tmp_path)
    pwned = tmp_path / "pwned"

    async def main() -> None:
        with pytest.raises(InvalidInput, match="LBSOLO_GIT_ALLOW_LOCAL"):
            await fetch_ref(str(bare), "refs/pull/7/head", tmp_path / "a", home=tmp_path / "h")
        for ref in (f"--upload-pack=touch {pwned}", "refs/pull/7/head\n", "refs/../x"):
            with pytest.raises(InvalidInput, match="invalid git ref"):
                await fetch_ref(str(bare), ref, tmp_path / "b", home=tmp_path / "h", allow_local=True)
        with pytest.raises(InvalidInput, match="a full ref"):
            await fetch_ref(str(bare), "main", tmp_path / "c", home=tmp_path / "h", allow_local=True)
        with pytest.raises(InvalidInput, match="cannot fetch"):
            await fetch_ref(str(bare), "refs/pull/8/head", tmp_path / "d", home=tmp_path / "h", allow_local=True)
        got = await fetch_ref(str(bare), "refs/pull/7/head", tmp_path / "e", home=tmp_path / "h", allow_local=True)
        assert got == heads[7] and (tmp_path / "e" / "marker.txt").read_text() == "pr7 one\n"
        assert not pwned.exists()

    run(main)
