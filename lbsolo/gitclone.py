"""Fetching a git URL (or a local repository) at a ref into a directory, with the git command.

Used by `lbsolo deploy --git` and the push webhooks; the daemon's own git remotes live in git.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from lbsolo.errors import EngineError, InvalidInput


async def run_git(*args: str, cwd: Path | None = None) -> None:
    """Run git quietly; its error output becomes the EngineError's message."""
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise EngineError(f"git {args[0]} failed: {err.decode(errors='replace').strip()}")


async def clone(url: str, ref: str | None, into: Path, timeout: float = 300.0) -> str:
    """Fetch url at ref (branch, tag or commit) into a new directory; return the commit checked out."""
    if url.startswith("-") or (ref or "").startswith("-"):
        raise InvalidInput("a git URL or ref cannot start with '-'")
    is_sha = ref is not None and len(ref) >= 7 and all(c in "0123456789abcdef" for c in ref.lower())
    args = ["clone", "--quiet"]
    if ref and not is_sha:
        args += ["--depth", "1", "--branch", ref]
    elif not ref:
        args += ["--depth", "1"]
    try:
        await asyncio.wait_for(run_git(*args, "--", url, str(into)), timeout)
        if is_sha:
            await asyncio.wait_for(run_git("checkout", "--quiet", str(ref), cwd=into), timeout)
    except TimeoutError as e:
        raise InvalidInput(f"git clone of {url} took longer than {timeout:.0f}s") from e
    except EngineError as e:
        raise InvalidInput(f"cannot fetch {url}{'#' + ref if ref else ''}: {e.message}") from e
    proc = await asyncio.create_subprocess_exec(
        "git", "rev-parse", "HEAD", cwd=into, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return out.decode().strip()
