"""Domain records of lbsolo: apps, releases, builds and replicas, with their named states.

Plain dataclasses with to/from dict for the state store; no I/O, no outside systems.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from lbsolo.errors import InvalidInput

# Labels put on everything lbsolo creates in Docker; nothing without LABEL_MANAGED is touched.
LABEL_MANAGED = "lbsolo.managed"
LABEL_APP = "lbsolo.app"
LABEL_RELEASE = "lbsolo.release"
LABEL_PROCESS = "lbsolo.process"
LABEL_BUILD = "lbsolo.build"
LABEL_PORT = "lbsolo.port"
LABEL_INSTANCE = "lbsolo.instance"  # which lbsolo home owns it (several may share an engine)

_APP_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,28}[a-z0-9])?$")
RESERVED_NAMES = frozenset({"www", "api", "lbsolo", "ns", "admin", "localhost"})


def validate_app_name(name: str) -> str:
    """Return the name if it can be both a DNS label and a Docker name part, else raise."""
    if not isinstance(name, str) or not _APP_NAME.match(name):
        raise InvalidInput(
            f"invalid app name {name!r}: use 1-30 lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-' (it becomes a DNS label)"
        )
    if "--" in name:
        raise InvalidInput(f"invalid app name {name!r}: '--' is not allowed")
    if name in RESERVED_NAMES:
        raise InvalidInput(f"invalid app name {name!r}: reserved for lbsolo itself")
    return name


class ReleaseStatus(StrEnum):
    PENDING = "pending"  # created, rollout not started
    DEPLOYING = "deploying"  # new replicas starting / being checked
    ACTIVE = "active"  # serving traffic
    SUPERSEDED = "superseded"  # was active, replaced by a later release
    FAILED = "failed"  # never served: its replicas did not come up


class BuildStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class DeployStep(StrEnum):
    """The named steps of a rollout, saved on the release as it moves along."""

    START = "start"  # start the new replica(s)
    WAIT_READY = "wait_ready"  # wait until they accept connections
    SWAP = "swap"  # point the proxy at them
    STOP_OLD = "stop_old"  # stop the previous release's replicas
    DONE = "done"


def now() -> float:
    return round(time.time(), 3)


@dataclass
class App:
    name: str
    created_at: float = field(default_factory=now)
    release: int | None = None  # version currently meant to serve

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> App:
        return cls(name=d["name"], created_at=d.get("created_at", 0.0), release=d.get("release"))


@dataclass
class Release:
    app: str
    version: int
    image: str  # image id (sha256:...), immutable
    build_id: str | None = None
    description: str = ""
    status: ReleaseStatus = ReleaseStatus.PENDING
    step: DeployStep | None = None
    error: str | None = None
    created_at: float = field(default_factory=now)

    @property
    def label(self) -> str:
        return f"v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        d["step"] = str(self.step) if self.step else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Release:
        return cls(
            app=d["app"],
            version=int(d["version"]),
            image=d["image"],
            build_id=d.get("build_id"),
            description=d.get("description", ""),
            status=ReleaseStatus(d.get("status", "pending")),
            step=DeployStep(d["step"]) if d.get("step") else None,
            error=d.get("error"),
            created_at=d.get("created_at", 0.0),
        )


@dataclass
class Build:
    id: str
    app: str
    status: BuildStatus = BuildStatus.QUEUED
    image: str | None = None
    error: str | None = None
    created_at: float = field(default_factory=now)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Build:
        return cls(
            id=d["id"],
            app=d["app"],
            status=BuildStatus(d.get("status", "queued")),
            image=d.get("image"),
            error=d.get("error"),
            created_at=d.get("created_at", 0.0),
            finished_at=d.get("finished_at"),
        )


@dataclass(frozen=True)
class Replica:
    """A container as the engine reports it, reduced to what lbsolo decides on."""

    id: str
    name: str
    app: str
    release: int | None
    process: str
    running: bool
    status: str  # engine's word: running, exited, created, ...
    host_port: int | None  # published on 127.0.0.1
    started_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
