"""The engine seam: the Docker backend (and the unit tests' fake) answer to lbsolo.engine's Backend.

A backend's method must accept every call the protocol allows: each of the protocol's
parameters by the same name and kind (or swallowed by **kwargs), defaults where it has them,
and nothing more required. The protocol's docstrings say what the calls mean.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Any

import pytest

from lbsolo import engine
from lbsolo.engine import Backend, Builds, Events, Images, Jobs, Logs, Networks, Replicas, Stats, Volumes, parse_memory
from lbsolo.engine_docker import DockerBackend, _lines, stats_numbers
from lbsolo.models import Replica
from tests.unit.test_rollout import FakeEngine

PARTS = (Replicas, Logs, Jobs, Events, Volumes, Networks, Stats, Images, Builds)
POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def methods(protocol: type) -> list[str]:
    """The methods a protocol names (its own and its parts'), without Protocol's machinery."""
    return sorted(
        name
        for klass in protocol.__mro__
        if klass not in (object,) and getattr(klass, "_is_protocol", False)
        for name, value in vars(klass).items()
        if callable(value) and not name.startswith("_")
    )


def incompatibility(wanted: inspect.Signature, got: inspect.Signature, *, returns: bool) -> str | None:
    """Why a method with signature `got` cannot stand where `wanted` is asked for; None if it can."""
    want = [p for p in wanted.parameters.values() if p.name != "self"]
    mine = [p for p in got.parameters.values() if p.name != "self"]
    have = {p.name: p for p in mine}
    order = [p for p in mine if p.kind in POSITIONAL]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in mine)
    matched = set()
    for i, p in enumerate(q for q in want if q.kind in POSITIONAL):
        # Positional-only in the protocol: any name will do; else the name too, for keyword calls.
        if i >= len(order) or (p.kind is not inspect.Parameter.POSITIONAL_ONLY and order[i].name != p.name):
            return f"positional parameter {i} should be {p.name!r}"
        if p.default is not inspect.Parameter.empty and order[i].default is inspect.Parameter.empty:
            return f"{p.name!r} needs a default"
        matched.add(order[i].name)
    for p in want:
        if p.kind in POSITIONAL:
            continue
        if p.name not in have:
            if var_kw:
                continue
            return f"no parameter {p.name!r}"
        if p.default is not inspect.Parameter.empty and have[p.name].default is inspect.Parameter.empty:
            return f"{p.name!r} needs a default"
        matched.add(p.name)
    for p in mine:
        extra = p.name not in matched and p.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        )
        if extra and p.default is inspect.Parameter.empty:
            return f"extra parameter {p.name!r} without a default"
    if returns and got.return_annotation != wanted.return_annotation:
        return f"returns {got.return_annotation}, not {wanted.return_annotation}"
    return None


def mismatches(protocol: type, impl: type, *, only: list[str] | None = None, returns: bool = True) -> dict[str, str]:
    out = {}
    for name in only or methods(protocol):
        if not callable(getattr(impl, name, None)):
            out[name] = "missing"
            continue
        why = incompatibility(
            inspect.signature(getattr(protocol, name)), inspect.signature(getattr(impl, name)), returns=returns
        )
        if why:
            out[name] = why
    return out


def test_the_backend_names_what_the_core_asks_of_where_containers_run():
    assert methods(Backend) == sorted(
        [
            *("run", "start", "stop_and_remove", "list_replicas", "logs", "follow_logs", "run_once", "exec"),
            *("events", "ensure_volume", "remove_app_volumes", "ensure_network", "remove_network", "stats"),
            *("image_exists", "tag_image", "push_image", "app_images", "remove_image", "remove_app_images"),
            *("prune_build_leftovers", "base_labels", "build", "ping", "close"),
        ]
    )
    assert sorted(m for part in PARTS for m in methods(part)) == sorted(set(methods(Backend)) - {"ping", "close"})


def test_docker_backend_satisfies_the_protocol():
    assert mismatches(Backend, DockerBackend) == {}
    backend = DockerBackend("abc")  # connects on first use only
    assert isinstance(backend, Backend) and backend.instance == "abc"
    assert all(isinstance(backend, part) for part in PARTS)


def test_the_check_sees_a_wrong_signature():
    class Wrong:
        def logs(self, replica_id: str) -> str: ...  # no tail
        def follow_logs(self, replica_id: str, after: float | None = None) -> Any: ...  # renamed
        def stop_and_remove(self, replica_id: str, timeout: int, signal: str) -> None: ...  # one more, required
        def start(self, any_name: str) -> Replica: ...  # the id is positional-only: fine

    assert mismatches(Logs, Wrong, returns=False) == {
        "logs": "positional parameter 1 should be 'tail'",
        "follow_logs": "positional parameter 1 should be 'since'",
    }
    assert mismatches(Replicas, Wrong, only=["stop_and_remove", "start"]) == {
        "stop_and_remove": "extra parameter 'signal' without a default"
    }
    assert mismatches(Stats, Wrong) == {"stats": "missing"}


def test_the_rollout_tests_fake_engine_answers_to_the_parts_it_stands_in_for():
    # It is a partial backend: what it has must match the protocol, so code that works against
    # the fake works against any backend. Return types are the fake's own (plain dicts).
    have = [m for m in methods(Backend) if callable(getattr(FakeEngine, m, None))]
    assert {"run", "list_replicas", "stop_and_remove", "logs", "follow_logs", "ensure_network"} <= set(have)
    assert mismatches(Backend, FakeEngine, only=have, returns=False) == {}
    fake = FakeEngine({1: 5000})
    assert isinstance(fake, Logs) and isinstance(fake, Networks)
    assert not isinstance(fake, Volumes)  # it makes volumes but never removes them
    assert not isinstance(fake, Backend)


def test_engine_is_the_docker_backend_and_the_interface_loads_no_docker():
    assert engine.Engine is DockerBackend
    from lbsolo.engine import Engine

    assert Engine is DockerBackend
    with pytest.raises(AttributeError):
        _ = engine.Swarm  # type: ignore[attr-defined]
    code = "import sys, lbsolo.engine, lbsolo.core_plan; assert 'docker' not in sys.modules, 'docker loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_replica_is_reached_at_its_host_and_port():
    r = Replica(id="c1", name="n", app="a", release=1, process="web", running=True, status="running", host_port=5000)
    assert r.address == ("127.0.0.1", 5000)
    elsewhere = Replica(**{**r.to_dict(), "host": "10.0.0.7"})
    assert elsewhere.address == ("10.0.0.7", 5000) and elsewhere.to_dict()["host"] == "10.0.0.7"
    assert Replica(**{**r.to_dict(), "host_port": None}).address is None


@pytest.mark.parametrize(("text", "size"), [("512m", 512 * 1024**2), ("1G", 1024**3), ("64k", 65536), ("100", 100)])
def test_memory_sizes(text: str, size: int):
    assert parse_memory(text) == size


def test_lines_of_a_stream_cut_anywhere():
    chunks = [b"one\ntw", b"o\n", b"", b"thr", "ee \xe2\x9c\x93".encode("latin-1")]
    assert list(_lines(iter(chunks))) == ["one", "two", "three \u2713"]
    assert list(_lines(iter([b"a\n"]))) == ["a"]


def test_stats_are_plain_numbers_even_when_the_document_is_empty():
    assert stats_numbers({}) == dict.fromkeys(["cpu_percent", "mem_bytes", "mem_limit", "net_rx", "net_tx"], 0.0)
    assert DockerBackend._stats_numbers is stats_numbers
