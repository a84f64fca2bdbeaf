"""Build detection: what kind of app a source tree holds, and the Dockerfile to build it with.

A pure decision over a directory: it reads a few files at the top of the tree (never walks it)
and renders the jinja2 templates in lbsolo/templates. It must not touch Docker, the network or
lbsolo's state; build.py runs what is decided here.

Order: the app's own Dockerfile wins; then Python (requirements.txt or pyproject.toml), Node
(package.json), a static site (index.html). A Procfile names the processes in every case; its
`web:` line, when present, is the command of the generated image.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from lbsolo.errors import InvalidInput

if TYPE_CHECKING:
    import jinja2

# Port the generated images listen on unless the PORT env var says otherwise at run time.
DEFAULT_PORT = 5000

DEFAULT_BASE_IMAGES: Mapping[str, str] = MappingProxyType(
    {"python": "python:3.12-slim", "node": "node:20-slim", "static": "busybox:latest"}
)

# What detection looks for, in order (see _MARKERS); the error for an unknown tree lists them.
LOOKED_FOR = ("Dockerfile", "requirements.txt", "pyproject.toml", "package.json", "index.html")

# Larger "config" files are refused: they are surely not what they claim to be.
MAX_READ = 1 << 20

_PROCESS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_IMAGE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")
_REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)")
# `app = Flask(__name__)`, `application: ASGIApp = ...`, or `async def app(scope, receive, send)`.
_APP_DEFINITION = re.compile(
    r"^(?:(?P<var>app|application)\s*(?::[^=\n]*)?=(?!=)|async\s+def\s+(?P<fn>app|application)\s*\()",
    re.MULTILINE,
)
_ASGI_MARKERS = re.compile(r"\b(?:FastAPI|Starlette|Litestar|Quart)\s*\(|\bget_asgi_application\b")
_EXPOSE = re.compile(r"^\s*EXPOSE\s+(\d+)", re.MULTILINE | re.IGNORECASE)
_ENV_PORT = re.compile(r"^\s*ENV\s+PORT[=\s]\s*(\d+)", re.MULTILINE | re.IGNORECASE)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# Words after which `exec` would be wrong or meaningless.
_SHELL_WORDS = frozenset(
    ("!", "{", "(", "case", "for", "if", "until", "while", "exec", ".", "source", "eval", "cd", "export", "set", "trap")
)


@functools.cache
def _templates() -> jinja2.Environment:
    # Made on first use: the CLI imports this module on every deploy and jinja2 costs ~30 ms.
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("lbsolo", "templates"),
        autoescape=False,  # Dockerfiles, not HTML
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class Kind(StrEnum):
    DOCKERFILE = "dockerfile"
    PYTHON = "python"
    NODE = "node"
    STATIC = "static"


@dataclass(frozen=True)
class Detection:
    """What detect() found.

    `dockerfile` is the text to build with: the app's own for kind dockerfile, else generated.
    `processes` comes from the Procfile; for generated Dockerfiles a missing `web` is filled in
    with the command the image runs (so `web` is absent only when the image's own CMD serves,
    or when the Procfile names only other processes).
    """

    kind: Kind
    dockerfile: str
    processes: dict[str, str] = field(default_factory=dict)
    port_hint: int | None = None
    reasons: list[str] = field(default_factory=list)


def detect(root: Path, base_images: Mapping[str, str] | None = None) -> Detection:
    """Decide how to build the source tree at `root`; raises InvalidInput when it cannot."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidInput(f"source directory not found: {root}")
    images = _base_images(base_images)
    found = [name for name in LOOKED_FOR if _file(root, name) is not None]
    procfile_path = _file(root, "Procfile")
    processes = parse_procfile(_read(procfile_path)) if procfile_path else {}
    reasons = [f"Procfile: {', '.join(processes)}"] if processes else []

    if not found:
        raise InvalidInput(
            "cannot tell how to build this app: looked for " + ", ".join(LOOKED_FOR) + " at the top of the source "
            "and found none; add a Dockerfile, or one of those files"
        )
    first = found[0]
    kind, why = _MARKERS[first]
    reasons.insert(0, f"{first}: {why}")
    reasons.extend(f"{other}: ignored, {first} comes first" for other in found[1:] if _MARKERS[other][0] != kind)

    if kind is Kind.DOCKERFILE:
        text = _read(root / "Dockerfile")
        return Detection(kind, text, processes, _dockerfile_port(text), reasons)
    render = {Kind.PYTHON: _python, Kind.NODE: _node, Kind.STATIC: _static}[kind]
    context, web = render(root, processes, reasons)
    if web is not None:
        processes.setdefault("web", web)
    text = (
        _templates()
        .get_template(f"{kind}.Dockerfile.j2")
        .render(
            title=_TITLES[kind],
            base_image=images[kind],
            port=DEFAULT_PORT,
            reasons=reasons,
            cmd=exec_command(web) if web is not None else None,
            **context,
        )
    )
    return Detection(kind, text, processes, DEFAULT_PORT, reasons)


def parse_procfile(text: str) -> dict[str, str]:
    """Parse a Procfile (`name: command` per line; blank lines and # comments skipped).

    Raises InvalidInput naming the line for anything else: a line without a colon, an invalid
    or repeated process name, an empty command.
    """
    processes: dict[str, str] = {}
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, command = line.partition(":")
        name, command = name.strip(), command.strip()
        if not colon:
            raise InvalidInput(f"Procfile line {number}: expected 'name: command', got {line!r}")
        if not _PROCESS_NAME.fullmatch(name):
            raise InvalidInput(
                f"Procfile line {number}: invalid process name {name!r} "
                "(letters, digits, '-' and '_', starting with a letter or digit, at most 63)"
            )
        if name in processes:
            raise InvalidInput(f"Procfile line {number}: process {name!r} is defined twice")
        if not command:
            raise InvalidInput(f"Procfile line {number}: process {name!r} has no command")
        processes[name] = command
    return processes


def exec_command(command: str) -> str:
    """The shell line that runs a Procfile command, with `exec` when the shell can step aside.

    With `exec` the app is the container's main process and gets SIGTERM itself, so it can
    drain; compound commands (`a && b`, pipes, leading assignments) are left to the shell.
    """
    if "\n" in command or "\r" in command:
        raise InvalidInput(f"a process command must be one line: {command!r}")
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: let the shell report it
        return command
    if not tokens or tokens[0] in _SHELL_WORDS or _ASSIGNMENT.match(tokens[0]):
        return command
    if any(token and set(token) <= set(lexer.punctuation_chars) for token in tokens):
        return command
    return f"exec {command}"


def container_command(command: str) -> list[str]:
    """The container command (argv) for a Procfile process, as the generated CMD runs web."""
    return ["/bin/sh", "-c", exec_command(command)]


# ------------------------------------------------------------------ kinds

# marker file -> the kind it means, and the reason shown for it
_MARKERS = {
    "Dockerfile": (Kind.DOCKERFILE, "built as is"),
    "requirements.txt": (Kind.PYTHON, "a Python app"),
    "pyproject.toml": (Kind.PYTHON, "a Python app"),
    "package.json": (Kind.NODE, "a Node app"),
    "index.html": (Kind.STATIC, "a static site"),
}
_TITLES = {Kind.PYTHON: "a Python app", Kind.NODE: "a Node app", Kind.STATIC: "a static site"}


def _python(root: Path, processes: dict[str, str], reasons: list[str]) -> tuple[dict[str, object], str | None]:
    requirements = _file(root, "requirements.txt")
    if requirements is not None:
        deps = _requirement_names(_read(requirements))
        reasons.append("dependencies: pip install -r requirements.txt")
    else:
        deps = _pyproject_dependencies(_read(root / "pyproject.toml"))
        reasons.append("dependencies: pip install . (pyproject.toml)")
    web = processes.get("web")
    if web is not None:
        reasons.append("web: the Procfile's web command")
    else:
        web = _python_web(root, deps, reasons, has_processes=bool(processes))
    return {"requirements": requirements is not None}, web


def _python_web(root: Path, deps: set[str], reasons: list[str], *, has_processes: bool) -> str | None:
    for module in ("wsgi", "asgi", "main", "app"):
        path = _file(root, f"{module}.py")
        if path is None:
            continue
        source = _sniff(path)
        match = _APP_DEFINITION.search(source)
        if match is None:
            continue
        target = f"{module}:{match['var'] or match['fn']}"
        asgi = match["fn"] is not None or module == "asgi" or _ASGI_MARKERS.search(source) is not None
        if asgi and "uvicorn" in deps:
            reasons.append(f"web: uvicorn serves {target} (uvicorn is a dependency, {module}.py defines an ASGI app)")
            return f"uvicorn {target} --host 0.0.0.0 --port $PORT"
        if not asgi and "gunicorn" in deps:
            reasons.append(f"web: gunicorn serves {target} (gunicorn is a dependency, {module}.py defines an app)")
            return f"gunicorn --bind 0.0.0.0:$PORT {target}"
    for script in ("app.py", "main.py"):
        if _file(root, script) is not None:
            reasons.append(f"web: python {script} (no Procfile web: line)")
            return f"python {script}"
    if has_processes:
        reasons.append("web: none (the Procfile has no web: line and there is no app.py or main.py)")
        return None
    raise InvalidInput(
        "a Python app, but nothing says how to start it: add a Procfile with a 'web:' line, or an app.py or main.py"
    )


def _node(root: Path, processes: dict[str, str], reasons: list[str]) -> tuple[dict[str, object], str | None]:
    package = _package_json(_read(root / "package.json"))
    scripts = package.get("scripts") or {}
    if not isinstance(scripts, dict) or not all(isinstance(v, str) for v in scripts.values()):
        raise InvalidInput("package.json: 'scripts' must map names to commands")
    install_files = ["package.json"]
    lockfile = next((n for n in ("package-lock.json", "npm-shrinkwrap.json") if _file(root, n) is not None), None)
    if lockfile is not None:
        install_files.append(lockfile)
        install = "npm ci"
        reasons.append(f"dependencies: npm ci ({lockfile})")
    else:
        install = "npm install"
        reasons.append("dependencies: npm install (no package-lock.json)")
    build = "build" in scripts
    if build:
        reasons.append("build: npm run build (package.json has a build script)")

    web = processes.get("web")
    if web is not None:
        reasons.append("web: the Procfile's web command")
    elif "start" in scripts and ("prestart" in scripts or "poststart" in scripts):
        web = "npm start"
        reasons.append("web: npm start (the start script has pre/post hooks)")
    elif "start" in scripts:
        # Run the script itself rather than `npm start`: one process less and signals reach the app.
        web = scripts["start"]
        reasons.append("web: the start script of package.json")
    else:
        main = package.get("main")
        candidates = [main] if isinstance(main, str) and main else []
        candidates += ["server.js", "index.js"]
        entry = next((c for c in candidates if _file(root, c) is not None), None)
        if entry is not None:
            web = f"node {shlex.quote(entry)}"
            reasons.append(f"web: node {entry} (no start script)")
        elif processes:
            reasons.append("web: none (no Procfile web: line, start script, main, server.js or index.js)")
        else:
            raise InvalidInput(
                "a Node app, but nothing says how to start it: add a 'start' script to package.json, "
                "a Procfile with a 'web:' line, or a server.js"
            )
    return {"install": install, "install_files": install_files, "build": build}, web


def _static(root: Path, processes: dict[str, str], reasons: list[str]) -> tuple[dict[str, object], str | None]:
    web = processes.get("web")
    if web is not None:
        reasons.append("web: the Procfile's web command")
    else:
        # httpd as PID 1 would ignore SIGTERM (the kernel gives PID 1 no default action), so
        # the shell stays PID 1 and passes the signal on: the container stops at once.
        web = "httpd -f -v -p $PORT -h /site & trap 'kill $!' TERM INT; wait"
        reasons.append("web: busybox httpd serves the files")
    return {}, web


# ------------------------------------------------------------------ reading


def _base_images(overrides: Mapping[str, str] | None) -> dict[Kind, str]:
    images = dict(DEFAULT_BASE_IMAGES)
    for kind, image in (overrides or {}).items():
        if kind not in images:
            raise InvalidInput(f"unknown base image kind {kind!r}; known: {', '.join(images)}")
        if not isinstance(image, str) or not _IMAGE_REF.fullmatch(image):
            raise InvalidInput(f"base image for {kind} is not an image reference: {image!r}")
        images[kind] = image
    return {Kind(kind): image for kind, image in images.items()}


def _file(root: Path, name: str) -> Path | None:
    """root/name if it is a regular file inside root (a link may not lead out of the tree)."""
    path = root / name
    try:
        if not path.is_file() or not path.resolve().is_relative_to(root.resolve()):
            return None
    except OSError:
        return None
    return path


def _read(path: Path) -> str:
    data = path.read_bytes()[: MAX_READ + 1]
    if len(data) > MAX_READ:
        raise InvalidInput(f"{path.name} is larger than {MAX_READ // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{path.name} is not UTF-8 text: {e}") from e


def _sniff(path: Path) -> str:
    """The start of a source file, for guessing; never fails on odd bytes."""
    with path.open("rb") as f:
        return f.read(MAX_READ).decode("utf-8", errors="replace")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(text: str) -> set[str]:
    names = set()
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        match = _REQUIREMENT.match(line)
        if match:
            names.add(_canonical(match[1]))
    return names


def _pyproject_dependencies(text: str) -> set[str]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"pyproject.toml is not valid TOML: {e}") from e
    project = data.get("project")
    deps = project.get("dependencies", []) if isinstance(project, dict) else []
    tool = data.get("tool")
    poetry = tool.get("poetry", {}) if isinstance(tool, dict) else {}
    poetry = poetry.get("dependencies", {}) if isinstance(poetry, dict) else {}
    names = {_canonical(m[1]) for d in deps if isinstance(d, str) and (m := _REQUIREMENT.match(d.strip()))}
    if isinstance(poetry, dict):
        names |= {_canonical(n) for n in poetry if n != "python"}
    return names


def _package_json(text: str) -> dict[str, object]:
    try:
        package = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"package.json is not valid JSON: {e}") from e
    if not isinstance(package, dict):
        raise InvalidInput("package.json must hold a JSON object")
    return package


def _dockerfile_port(text: str) -> int | None:
    for pattern in (_EXPOSE, _ENV_PORT):
        match = pattern.search(text)
        if match and 0 < int(match[1]) < 65536:
            return int(match[1])
    return None
