"""Fetching a git URL (or, when allowed, a local repository) at a ref into a directory, with git.

Used by `lbsolo deploy --git` and the push webhooks; the daemon's own git remotes live in git.py.
Which URLs may be cloned is a pure decision (`clone_policy`); git itself is held to the same
transports (`protocol.allow`) and runs with an empty HOME and no system or global config, so
nothing of the daemon user's git setup (credential helpers, url rewrites, hooks) takes part.
Credentials in a URL never leave this module unredacted: every message goes through `redact`.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from pathlib import Path

from lbsolo.errors import EngineError, InvalidInput

REMOTE_PROTOCOLS = ("https", "ssh", "git")
LOCAL_PROTOCOL = "file"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SSH_SCHEMES = {"ssh", "git+ssh", "ssh+git"}
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/]*@")
_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}")
_SHA = re.compile(r"[0-9a-f]{7,64}")


def redact(text: str) -> str:
    """Text with the user and password of every `scheme://user:pass@host` URL in it replaced by ***."""
    return _USERINFO.sub(r"\1***@", text)


def clone_policy(url: str, allow_local: bool) -> str:
    """The git protocol a URL would be fetched with, if it may be: https, ssh, git, or file (local).

    Raises InvalidInput for anything else: other transports (http, ext::, fd::, remote
    helpers), option-like URLs and hosts, control characters, and local paths or file:// unless
    `allow_local` (an admin setting: a local clone lets whoever calls the API read any
    repository the daemon can).
    """
    shown = redact(url)
    if not url or url != url.strip() or any(ord(c) < 32 or c == "\x7f" for c in url):
        raise InvalidInput(f"invalid git URL {shown!r}")
    if url.startswith("-"):
        raise InvalidInput("a git URL cannot start with '-'")
    scheme = _SCHEME.match(url)
    before_slash = url.split("/", 1)[0]
    if scheme:
        kind = scheme.group(1).lower()
        rest = url[scheme.end() :]
        host = rest.split("/", 1)[0].rpartition("@")[2]
        if host.startswith("-") or rest.split("/", 1)[0].startswith("-"):
            raise InvalidInput(f"invalid git URL {shown!r}: the host cannot start with '-'")
        kind = "ssh" if kind in _SSH_SCHEMES else kind
        if kind == LOCAL_PROTOCOL:
            return _local(shown, allow_local)
        if kind not in REMOTE_PROTOCOLS:
            raise InvalidInput(f"git URL {shown!r}: only https://, ssh:// and git:// URLs are cloned")
        if not host:
            raise InvalidInput(f"invalid git URL {shown!r}: no host")
        return kind
    if "::" in before_slash:
        raise InvalidInput(f"git URL {shown!r}: remote helpers (transport::address) are not cloned")
    if ":" in before_slash:  # scp-like [user@]host:path, which git fetches over ssh
        host = before_slash.partition(":")[0].rpartition("@")[2]
        if not host or host.startswith("-"):
            raise InvalidInput(f"invalid git URL {shown!r}")
        return "ssh"
    return _local(shown, allow_local)


def _local(shown: str, allow_local: bool) -> str:
    if not allow_local:
        raise InvalidInput(
            f"{shown!r} is a local repository: only https, ssh and git URLs are cloned "
            "(the daemon's admin can allow local ones with LBSOLO_GIT_ALLOW_LOCAL=1)"
        )
    return LOCAL_PROTOCOL


def validate_ref(ref: str) -> str:
    """A branch, tag or commit to check out: plain ref characters, never option-like."""
    if (
        not isinstance(ref, str)
        or not _REF.fullmatch(ref)
        or ".." in ref
        or "//" in ref
        or ref.endswith(("/", ".", ".lock"))
    ):
        raise InvalidInput(f"invalid git ref {ref!r}: a branch, tag or commit (letters, digits, '._/-')")
    return ref


def git_options(allow_local: bool) -> list[str]:
    """`-c` options holding git itself to the allowed transports, whatever it is handed."""
    allowed = [*REMOTE_PROTOCOLS, *([LOCAL_PROTOCOL] if allow_local else [])]
    return ["-c", "protocol.allow=never", *(x for p in allowed for x in ("-c", f"protocol.{p}.allow=always"))]


def git_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment git runs in: an empty HOME, no system or global config, never a prompt."""
    inherited = os.environ if base is None else base
    env = {k: v for k, v in inherited.items() if not k.startswith("GIT_") and k not in ("HOME", "XDG_CONFIG_HOME")}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="true",  # answers any credential question with nothing
        SSH_ASKPASS="true",
        GIT_SSH_COMMAND="ssh -o BatchMode=yes",  # fail, not wait, on a host key or password question
    )
    return env


async def run_git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """Run git quietly and return its output; its (redacted) error output becomes the EngineError's message."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate()
    except BaseException:  # cancelled (a timeout): don't leave git running
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        raise
    if proc.returncode != 0:
        verb = next((a for a in args if not a.startswith("-") and "=" not in a), "command")
        raise EngineError(f"git {verb} failed: {redact(err.decode(errors='replace').strip())}")
    return out.decode(errors="replace")


async def clone(
    url: str, ref: str | None, into: Path, *, home: Path, allow_local: bool = False, timeout: float = 300.0
) -> str:
    """Fetch url at ref (branch, tag or commit) into a new directory; return the commit checked out.

    `home` is an empty directory git may use as HOME.
    """
    clone_policy(url, allow_local)
    if ref is not None:
        validate_ref(ref)
    shown = redact(url)
    is_sha = ref is not None and bool(_SHA.fullmatch(ref.lower()))
    home.mkdir(parents=True, exist_ok=True)
    env = git_env(home)
    options = git_options(allow_local)
    args = [*options, "clone", "--quiet", "--no-recurse-submodules"]
    if ref and not is_sha:
        args += ["--depth", "1", "--branch", ref]
    elif not ref:
        args += ["--depth", "1"]
    try:
        await asyncio.wait_for(run_git(*args, "--", url, str(into), env=env), timeout)
        if is_sha:
            await asyncio.wait_for(
                run_git(*options, "checkout", "--quiet", "--detach", str(ref), "--", cwd=into, env=env), timeout
            )
        commit = await run_git("rev-parse", "HEAD", cwd=into, env=env)
    except TimeoutError as e:
        raise InvalidInput(f"git clone of {shown} took longer than {timeout:.0f}s") from e
    except EngineError as e:
        raise InvalidInput(f"cannot fetch {shown}{'#' + ref if ref else ''}: {e.message}") from e
    return commit.strip()


async def fetch_ref(
    url: str, ref: str, into: Path, *, home: Path, allow_local: bool = False, timeout: float = 300.0
) -> str:
    """Fetch one full ref of url (a pull request's `refs/pull/N/head`, which `clone --branch`
    cannot take) into a new directory and check it out; return the commit.

    The same policy, options and environment as `clone`: `url` is the connected repository's,
    never one from a webhook's payload.
    """
    clone_policy(url, allow_local)
    validate_ref(ref)
    if not ref.startswith("refs/"):
        raise InvalidInput(f"invalid git ref {ref!r}: a full ref (refs/...) is fetched")
    shown = redact(url)
    home.mkdir(parents=True, exist_ok=True)
    into.mkdir(parents=True)
    env = git_env(home)
    options = git_options(allow_local)
    try:
        await asyncio.wait_for(run_git("init", "--quiet", cwd=into, env=env), timeout)
        await asyncio.wait_for(
            run_git(*options, "fetch", "--quiet", "--depth", "1", "--no-tags", "--", url, ref, cwd=into, env=env),
            timeout,
        )
        await asyncio.wait_for(run_git("checkout", "--quiet", "--detach", "FETCH_HEAD", cwd=into, env=env), timeout)
        commit = await run_git("rev-parse", "HEAD", cwd=into, env=env)
    except TimeoutError as e:
        raise InvalidInput(f"git fetch of {shown}#{ref} took longer than {timeout:.0f}s") from e
    except EngineError as e:
        raise InvalidInput(f"cannot fetch {shown}#{ref}: {e.message}") from e
    return commit.strip()
