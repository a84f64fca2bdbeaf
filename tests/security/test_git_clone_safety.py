"""Clones stay within what the owner chose (issue 11, item 4).

A push webhook's payload named the repository to clone, and `deploy/git` cloned any URL or local
path the daemon could read. Now: the clone policy (https, ssh and git; local paths only behind
LBSOLO_GIT_ALLOW_LOCAL) is a pure decision, git itself is held to it and runs without the daemon
user's config, refs cannot be options, credentials in URLs are redacted everywhere, and a webhook
deploys only the app's stored repository. Real git on local repositories; no Docker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
from pathlib import Path

import pytest

from lbsolo.build_git import clone, clone_policy, git_env, git_options, redact, run_git, validate_ref
from lbsolo.errors import EngineError, InvalidInput
from tests.security.test_secrets_masked import TOKEN, World
from tests.unit.test_rollout import _http_server


def git(cwd: Path, *args: str) -> str:
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(cwd), "PATH": "/usr/bin:/bin"}
    identity = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    out = subprocess.run(["git", *identity, *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_repo(path: Path, text: str) -> str:
    """A repository with one commit of `marker.txt` (and a Dockerfile); returns the commit."""
    path.mkdir(parents=True)
    git(path, "init", "-q")
    (path / "Dockerfile").write_text("FROM scratch\n")
    (path / "marker.txt").write_text(text)
    git(path, "add", ".")
    git(path, "commit", "-qm", "one")
    return git(path, "rev-parse", "HEAD")


# ---- the clone policy: a pure decision --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://github.com/o/r.git", "https"),
        ("HTTPS://github.com/o/r", "https"),
        ("https://user:token@git.example.com/o/r.git", "https"),
        ("ssh://git@github.com/o/r.git", "ssh"),
        ("git+ssh://git@github.com/o/r.git", "ssh"),
        ("git@github.com:o/r.git", "ssh"),
        ("github.com:o/r.git", "ssh"),
        ("git://git.example.com/r.git", "git"),
    ],
)
def test_remote_transports_are_allowed(url, kind):
    assert clone_policy(url, allow_local=False) == kind


@pytest.mark.parametrize(
    "url",
    [
        "http://git.example.com/r.git",  # plain http: not by default
        "ext::sh -c touch% /tmp/pwned",
        "fd::17",
        "foo::https://example.com/r",
        "ftp://example.com/r.git",
        "-uhttps://example.com/r",
        "--upload-pack=touch /tmp/pwned",
        "ssh://-oProxyCommand=touch%20/tmp/pwned/r",
        "ssh://user@-oProxyCommand=x/r",
        "https://example.com/r\n",
        " https://example.com/r",
        "https:///r",
        "",
    ],
)
def test_other_transports_and_option_like_urls_are_refused(url):
    with pytest.raises(InvalidInput):
        clone_policy(url, allow_local=True)


@pytest.mark.parametrize("url", ["/srv/repo", "relative/repo", "file:///srv/repo", "FILE:///srv/repo", "./r", "r"])
def test_local_repositories_only_when_the_admin_allows_them(url):
    with pytest.raises(InvalidInput, match="LBSOLO_GIT_ALLOW_LOCAL"):
        clone_policy(url, allow_local=False)
    assert clone_policy(url, allow_local=True) == "file"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://user:hunter2@host/r.git", "https://***@host/r.git"),
        ("https://hunter2@host/r.git", "https://***@host/r.git"),
        ("https://u:p@ss@host/r.git", "https://***@host/r.git"),
        ("fatal: unable to access 'https://u:hunter2@host:8443/r/': timed out", "'https://***@host:8443/r/'"),
        ("ssh://git@host/r.git", "ssh://***@host/r.git"),
        ("https://host/r.git", "https://host/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),  # no password in scp-like URLs
    ],
)
def test_credentials_in_urls_are_redacted(text, shown):
    assert shown in redact(text)
    assert "hunter2" not in redact(text)


@pytest.mark.parametrize("ref", ["main", "v1.2.3", "feature/x", "abc1234", "release-2024_01"])
def test_plain_refs_pass(ref):
    assert validate_ref(ref) == ref


@pytest.mark.parametrize(
    "ref", ["-x", "--upload-pack=touch /tmp/pwned", "a..b", "a b", "a\nb", "x/", "x.lock", "@{1}", "a~1", "a:b", ""]
)
def test_option_like_or_odd_refs_are_refused(ref):
    with pytest.raises(InvalidInput, match="invalid git ref"):
        validate_ref(ref)


# ---- real git ---------------------------------------------------------------------------------


def test_a_local_clone_needs_the_setting_and_then_works(tmp_path, run):
    commit = make_repo(tmp_path / "src", "local\n")

    async def main() -> None:
        with pytest.raises(InvalidInput, match="LBSOLO_GIT_ALLOW_LOCAL"):
            await clone(str(tmp_path / "src"), None, tmp_path / "a", home=tmp_path / "h1")
        assert not (tmp_path / "a").exists()
        got = await clone(str(tmp_path / "src"), "main", tmp_path / "b", home=tmp_path / "h2", allow_local=True)
        assert got == commit and (tmp_path / "b" / "marker.txt").read_text() == "local\n"
        got = await clone(f"file://{tmp_path / 'src'}", commit, tmp_path / "c", home=tmp_path / "h3", allow_local=True)
        assert got == commit

    run(main)


def test_git_itself_refuses_transports_outside_the_policy(tmp_path, run):
    """Defence in depth: even handed a file:// URL directly, git with lbsolo's options refuses it."""
    make_repo(tmp_path / "src", "x\n")

    async def main() -> None:
        env = git_env(tmp_path / "home")
        with pytest.raises(EngineError, match="not allowed"):
            await run_git(
                *git_options(False), "clone", "-q", "--", f"file://{tmp_path / 'src'}", "dst", cwd=tmp_path, env=env
            )
        with pytest.raises(EngineError, match="not allowed"):
            await run_git(*git_options(True), "clone", "-q", "--", "ext::sh -c true", "dst2", cwd=tmp_path, env=env)
        await run_git(
            *git_options(True), "clone", "-q", "--", f"file://{tmp_path / 'src'}", "dst3", cwd=tmp_path, env=env
        )

    run(main)


def test_git_runs_without_the_daemon_users_config(tmp_path, monkeypatch, run):
    """A global config (here: a url rewrite to a local repository) and GIT_* variables are not used."""
    make_repo(tmp_path / "src", "rewritten\n")
    user_home = tmp_path / "user"
    user_home.mkdir()
    (user_home / ".gitconfig").write_text(f'[url "{tmp_path / "src"}"]\n\tinsteadOf = https://127.0.0.1:1/\n')
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'protocol.allow'='always'")
    env = git_env(tmp_path / "home")
    assert env["HOME"] == str(tmp_path / "home") and env["GIT_CONFIG_GLOBAL"] == "/dev/null"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_TERMINAL_PROMPT"] == "0"
    assert "GIT_DIR" not in env and "GIT_CONFIG_PARAMETERS" not in env

    async def main() -> None:
        with pytest.raises(InvalidInput, match="cannot fetch"):  # no rewrite: port 1 refuses
            await clone("https://127.0.0.1:1/r.git", None, tmp_path / "dst", home=tmp_path / "home", allow_local=True)
        assert not (tmp_path / "dst" / "marker.txt").exists()

    run(main)


def test_clone_errors_never_show_credentials(tmp_path, run):
    async def main() -> None:
        with pytest.raises(InvalidInput) as caught:
            await clone("https://deploy:hunter2@127.0.0.1:1/r.git", "main", tmp_path / "d", home=tmp_path / "h")
        assert "hunter2" not in caught.value.message and "https://***@127.0.0.1:1/r.git" in caught.value.message
        with pytest.raises(InvalidInput) as caught:
            await clone("ftp://deploy:hunter2@example.com/r.git", None, tmp_path / "d", home=tmp_path / "h")
        assert "hunter2" not in caught.value.message

    run(main)


def test_a_ref_cannot_be_an_option(tmp_path, run):
    make_repo(tmp_path / "src", "x\n")
    pwned = tmp_path / "pwned"

    async def main() -> None:
        for ref in (f"--upload-pack=touch {pwned}", "-b"):
            with pytest.raises(InvalidInput, match="invalid git ref"):
                await clone(str(tmp_path / "src"), ref, tmp_path / "d", home=tmp_path / "h", allow_local=True)
        assert not pwned.exists()

    run(main)


# ---- the API and the push webhook -------------------------------------------------------------


def signed_push(secret: str, clone_url: str, commit: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"ref": "refs/heads/main", "after": commit, "repository": {"clone_url": clone_url}}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": signature, "Content-Type": "application/json"}


def test_a_webhook_deploys_the_stored_repository_never_the_payloads(tmp_path, run):
    make_repo(tmp_path / "ours", "ours\n")
    theirs = make_repo(tmp_path / "theirs", "theirs\n")

    async def main() -> None:
        server, port = await _http_server()
        world = World(tmp_path, port, git_allow_local=True)
        try:
            async with world.client() as c:
                assert (await c.post("/api/apps", json={"name": "shop"})).status_code == 201
                hook = (await c.get("/api/apps/shop/hook")).json()
                assert hook["repo"] == ""
                body, headers = signed_push(hook["secret"], str(tmp_path / "theirs"), theirs)
                r = await c.post("/hooks/shop", content=body, headers=headers)
                assert r.status_code == 409 and "hooks:url shop --repo" in r.json()["error"]["message"], r.text
                assert world.builder.sources == []  # nothing was cloned

                r = await c.put("/api/apps/shop/hook", json={"repo": str(tmp_path / "ours")})
                assert r.status_code == 200 and r.json()["repo"] == str(tmp_path / "ours")
                r = await c.post("/hooks/shop", content=body, headers=headers)  # names theirs, at their commit
                assert r.status_code == 422, r.text  # their commit is not in our repository
                assert world.builder.sources == []
                body, headers = signed_push(hook["secret"], str(tmp_path / "theirs"), "")
                r = await c.post("/hooks/shop", content=body, headers=headers)  # at main
                assert r.status_code == 202, r.text
                for task in list(world.platform.jobs):
                    await task
                assert [s["marker.txt"] for s in world.builder.sources] == [b"ours\n"]
        finally:
            server.close()
            await server.wait_closed()
            world.platform.collector.prune()
            world.state.close()

    run(main)


def test_local_paths_need_the_setting_and_refs_are_checked_before_cloning(tmp_path, run):
    make_repo(tmp_path / "ours", "ours\n")

    async def main() -> None:
        server, port = await _http_server()
        world = World(tmp_path, port)  # git_allow_local off, as by default
        try:
            async with world.client() as c:
                assert (await c.post("/api/apps", json={"name": "shop"})).status_code == 201
                for url in (str(tmp_path / "ours"), f"file://{tmp_path / 'ours'}", str(world.settings.home)):
                    r = await c.post("/api/apps/shop/deploy/git", json={"url": url})
                    assert r.status_code == 422 and "LBSOLO_GIT_ALLOW_LOCAL" in r.text, r.text
                    r = await c.put("/api/apps/shop/hook", json={"repo": url})
                    assert r.status_code == 422, r.text
                r = await c.post("/api/apps/shop/deploy/git", json={"url": "https://x/r", "ref": "--upload-pack=x"})
                assert r.status_code == 422 and "invalid git ref" in r.text
                r = await c.post("/api/apps/shop/deploy/git", json={"url": "https://127.0.0.1:1/r.git"})
                assert r.status_code == 422 and "cannot fetch" in r.text
                assert world.builder.sources == [] and world.state.get_app("shop").repo == ""  # nothing kept
        finally:
            server.close()
            await server.wait_closed()
            world.state.close()

    run(main)


def test_the_first_git_deploy_sets_the_repository(tmp_path, run):
    make_repo(tmp_path / "ours", "ours\n")
    make_repo(tmp_path / "other", "other\n")

    async def main() -> None:
        server, port = await _http_server()
        world = World(tmp_path, port, git_allow_local=True)
        try:
            async with world.client() as c:
                assert (await c.post("/api/apps", json={"name": "shop"})).status_code == 201
                for url in (tmp_path / "ours", tmp_path / "other"):
                    r = await c.post("/api/apps/shop/deploy/git", json={"url": str(url), "ref": "main"})
                    assert r.status_code == 200 and '"ok": true' in r.text, r.text
                    assert f"source: {url} at " in r.text
                # the first URL deployed stays the app's repository; a later one is deployed once
                assert world.state.get_app("shop").repo == str(tmp_path / "ours")
                assert [s["marker.txt"] for s in world.builder.sources] == [b"ours\n", b"other\n"]
        finally:
            server.close()
            await server.wait_closed()
            world.platform.collector.prune()
            world.state.close()

    run(main)


def test_credentials_in_the_repository_url_never_show(tmp_path, caplog, run):
    async def main() -> None:
        server, port = await _http_server()
        world = World(tmp_path, port)
        seen = []
        try:
            async with world.client() as c:
                assert (await c.post("/api/apps", json={"name": "shop"})).status_code == 201
                url = "https://deploy:hunter2@127.0.0.1:1/o/r.git"
                for r in (
                    await c.put("/api/apps/shop/hook", json={"repo": url}),
                    await c.get("/api/apps/shop/hook"),
                    await c.get("/api/apps/shop"),
                    await c.post("/api/apps/shop/deploy/git", json={"url": url, "ref": "main"}),
                ):
                    seen.append(r.text)
                hook = (await c.get("/api/apps/shop/hook")).json()
                assert hook["repo"] == "https://***@127.0.0.1:1/o/r.git"
                body, headers = signed_push(hook["secret"], "https://x/y", "")
                r = await c.post("/hooks/shop", content=body, headers=headers)
                assert r.status_code == 422 and "https://***@127.0.0.1:1/o/r.git" in r.text, r.text
                seen.append(r.text)
                seen.append((await c.get("/api/events")).text)
                login = await c.post("/ui/login", data={"token": TOKEN, "next": "/ui/apps/shop"}, follow_redirects=True)
                seen.append(login.text)
        finally:
            server.close()
            await server.wait_closed()
            world.state.close()
        seen.extend(r.getMessage() for r in caplog.records)
        assert "hunter2" not in "\n".join(seen)

    run(main)
