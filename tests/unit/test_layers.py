"""Layers import downward only, and one module owns each outside system.

cli (and its client, watch) | api | web | git | daemon -> core (with rollout, scheduler) -> build | run | proxy | dns ->
engine | state -> models | errors | config. Read from the source, so a lazy import inside a
function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lbsolo"


def _imports(module: str) -> set[str]:
    """Top-level names imported by lbsolo/<module>.py: 'docker', 'lbsolo.core', ..."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.Import):
            found |= {_top(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative import; lbsolo imports absolutely"
            if node.module == "lbsolo":
                found |= {f"lbsolo.{a.name}" for a in node.names}
            else:
                found.add(_top(node.module))
    return found


def _top(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "lbsolo" else parts[0]


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))

OWNERS = {
    "docker": {"engine"},
    "tinydb": {"state"},
    "typer": {"cli"},
    "rich": {"cli"},
    "watchdog": {"watch"},
    "dnslib": {"dns", "dns_forward"},
    "httptools": {"proxy_client", "proxy_upstream"},
    "fastapi": {"api", "api_ops", "git", "web"},
    "starlette": {"api"},
    "uvicorn": {"daemon"},
    "requests": {"engine"},
    "jinja2": {"detect", "web"},
    "cryptography": {"tls"},
}

TOP = {"cli", "client", "watch", "api", "api_guard", "api_ops", "web", "git", "daemon", "__main__"}
CORE = {"core", "rollout", "scheduler"}
PARTS = {"build", "detect", "run", "plan", "source", "gitclone", "tls", "logs", "stats", "notify", "tokens", "events"}
PARTS |= {"auth"}
PARTS |= {m for m in MODULES if m.startswith(("proxy", "dns"))}
BOTTOM = {"engine", "state", "models", "errors", "config"}
BASE = {"models", "errors", "config"}  # under engine and state


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_one_module_owns_each_outside_system(library):
    users = {m for m in MODULES if library in _imports(m)}
    assert users <= OWNERS[library], f"{library} imported outside {sorted(OWNERS[library])}: {sorted(users)}"


@pytest.mark.parametrize("module", MODULES)
def test_layers_import_downward_only(module):
    imported = {name.removeprefix("lbsolo.") for name in _imports(module) if name.startswith("lbsolo.")}
    if module in CORE:
        above = TOP
    elif module in PARTS:
        above = TOP | CORE
    elif module in BOTTOM:
        above = TOP | CORE | PARTS | ({"engine", "state"} if module in BASE else set())
    else:
        assert module in TOP or module == "__init__", f"{module} belongs to no layer: add it to one"
        return
    assert not imported & above, f"{module} imports from a layer above it: {sorted(imported & above)}"
