"""Packing a source directory for upload: a tar that honours `.dockerignore`.

Pure file-system work on the client side; the daemon re-checks every archive it receives.
"""

from __future__ import annotations

import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lbsolo.errors import InvalidInput, TooLarge

ALWAYS_SENT = ("Dockerfile", ".dockerignore")
ALWAYS_SKIPPED = (".git",)


@dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]
    negated: bool


def _translate(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    # A pattern that names a directory excludes everything below it too.
    return "^" + "".join(out) + "(?:/.*)?$"


def parse_ignore(text: str) -> list[Rule]:
    """Rules of a .dockerignore file, in order; the last matching rule decides."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:].strip()
        line = os.path.normpath(line).lstrip("/")
        if line in ("", "."):
            continue
        rules.append(Rule(re.compile(_translate(line)), negated))
    return rules


def gitignore_as_dockerignore(text: str) -> str:
    """A .gitignore's patterns in .dockerignore terms: unanchored patterns match at any depth."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        body = line[1:] if negated else line
        anchored = body.startswith("/") or "/" in body.rstrip("/")
        body = body.strip("/") if anchored else "**/" + body.rstrip("/")
        out.append(("!" if negated else "") + body)
    return "\n".join(out)


def ignore_rules(root: Path) -> list[Rule]:
    """The rules for a source tree: its .dockerignore, else its .gitignore, else none."""
    dockerignore, gitignore = root / ".dockerignore", root / ".gitignore"
    if dockerignore.is_file():
        return parse_ignore(dockerignore.read_text(encoding="utf-8", errors="replace"))
    if gitignore.is_file():
        return parse_ignore(gitignore_as_dockerignore(gitignore.read_text(encoding="utf-8", errors="replace")))
    return []


def is_ignored(path: str, rules: list[Rule]) -> bool:
    """Whether a relative, '/'-separated path is excluded by the rules."""
    ignored = False
    for rule in rules:
        if rule.regex.match(path):
            ignored = not rule.negated
    return ignored


def iter_files(root: Path, rules: list[Rule]) -> list[str]:
    """Relative paths of the files and directories to send, sorted, honouring the rules."""
    can_prune = not any(r.negated for r in rules)
    chosen: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        kept_dirs = []
        for d in sorted(dirnames):
            rel = rel_dir + d
            if d in ALWAYS_SKIPPED and not rel_dir:
                continue
            if can_prune and is_ignored(rel, rules):
                continue
            kept_dirs.append(d)
            if not is_ignored(rel, rules) or os.path.islink(os.path.join(dirpath, d)):
                chosen.append(rel)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            rel = rel_dir + name
            if rel in ALWAYS_SENT or not is_ignored(rel, rules):
                chosen.append(rel)
    return sorted(chosen)


def pack(root: Path, limit: int) -> IO[bytes]:
    """A tar of the directory (rewound, ready to upload). Raises if it is not a directory or too big."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a directory")
    rules = ignore_rules(root)
    out = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller, who closes it
    try:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel in iter_files(root, rules):
                info = tar.gettarinfo(str(root / rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    with (root / rel).open("rb") as f:
                        tar.addfile(info, f)
                elif info.isdir() or info.issym():
                    tar.addfile(info)
                if out.tell() > limit:
                    raise TooLarge(f"the source of {root} is over {limit} bytes; add a .dockerignore")
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out


def parse_dotenv(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a .env file: comments, `export`, and single or double quotes handled."""
    out = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"line {n} of the .env file is not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"')
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key.strip()] = value
    return out
