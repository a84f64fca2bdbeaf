"""Domain records of lbsolo: apps, releases, builds and replicas, with their named states.

Plain dataclasses with to/from dict for the state store; no I/O, no outside systems.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from lbsolo.errors import InvalidInput

# Labels put on everything lbsolo creates in Docker; nothing without LABEL_MANAGED is touched.
LABEL_MANAGED = "lbsolo.managed"
LABEL_APP = "lbsolo.app"
LABEL_RELEASE = "lbsolo.release"
LABEL_PROCESS = "lbsolo.process"
LABEL_PORT = "lbsolo.port"
LABEL_INSTANCE = "lbsolo.instance"  # which lbsolo home owns it (several may share an engine)

APP_NAME_PATTERN = r"^[a-z](?:[a-z0-9-]{0,28}[a-z0-9])?$"  # also documented in the OpenAPI schema
_APP_NAME = re.compile(APP_NAME_PATTERN)
RESERVED_NAMES = frozenset({"www", "api", "lbsolo", "ns", "admin", "localhost"})


def validate_app_name(name: str, what: str = "app name") -> str:
    """Return the name if it can be both a DNS label and a Docker name part, else raise.

    Static routes share the namespace (`<name>.<domain>`), so their names go through here too.
    """
    if not isinstance(name, str) or not _APP_NAME.match(name):
        raise InvalidInput(
            f"invalid {what} {name!r}: use 1-30 lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-' (it becomes a DNS label)"
        )
    if "--" in name:
        raise InvalidInput(f"invalid {what} {name!r}: '--' is not allowed")
    if name in RESERVED_NAMES:
        raise InvalidInput(f"invalid {what} {name!r}: reserved for lbsolo itself")
    return name


def parse_address(value: str) -> tuple[str, int]:
    """A static route's target `host:port` as (host, port); the host is an IP literal or `localhost`.

    Names other than localhost are refused: resolving them would put a DNS lookup (and its
    failures) in the proxy's connect path, and a name could quietly point off the machine.
    IPv6 literals are written in brackets: `[::1]:8080`.
    """
    text = value.strip() if isinstance(value, str) else ""
    hint = "expected HOST:PORT with an IP address or localhost, e.g. 127.0.0.1:9000 or [::1]:9000"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise InvalidInput(f"invalid address {value!r}: {hint}")
    number = int(port)
    if not 1 <= number <= 65535:
        raise InvalidInput(f"invalid address {value!r}: the port must be 1-65535")
    host, bracketed = host.lower(), text.startswith("[")
    if host == "localhost":
        if bracketed:
            raise InvalidInput(f"invalid address {value!r}: {hint}")
        return host, number
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(f"invalid address {value!r}: {hint}") from None
    if (ip.version == 6) != bracketed:
        raise InvalidInput(f"invalid address {value!r}: {hint}")
    return str(ip), number


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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

    RELEASE_PHASE = "release_phase"  # the Procfile's `release:` command, before anything changes
    START = "start"  # start the new replicas
    WAIT_READY = "wait_ready"  # wait until they pass their health checks
    SWAP = "swap"  # point the proxy at them, atomically
    DRAIN = "drain"  # old replicas get no new requests; in-flight ones finish
    STOP_OLD = "stop_old"  # stop the previous release's replicas
    DONE = "done"


def now() -> float:
    return round(time.time(), 3)


_SECRET_HINTS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "API_KEY", "PRIVATE_KEY", "ACCESS_KEY", "CREDENTIAL")
_CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_CONFIG = frozenset({"PORT", "LBSOLO_APP", "LBSOLO_RELEASE", "LBSOLO_PROCESS"})
_PROCESS_NAME = re.compile(r"^[a-z][a-z0-9]{0,19}$")
WEB = "web"
# The process label of one-off containers (test and release phases, `lbsolo run`): never a
# process type, since "-" is not allowed in one. Whoever starts one removes it; no replica.
ONE_OFF = "one-off"
MASK = "********"


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def validate_domain(name: str) -> str:
    """A custom domain: lowercase DNS name of two or more labels, optional leading `*.`; returns it normalised."""
    domain = name.strip().lower().rstrip(".")
    labels = domain.removeprefix("*.").split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise InvalidInput(f"invalid domain {name!r}: expected a DNS name such as example.com or *.example.com")
    return domain


def reserved_host(host: str, domain: str) -> bool:
    """Whether a host (or wildcard `*.host`) belongs to lbsolo itself, so no custom domain may take it.

    The bare `<domain>`, its own UI and API at `lbsolo.<domain>` (which gets the admin's session
    cookie) and every other reserved name under the domain, with anything below them; a wildcard
    is reserved when it would cover one of them.
    """
    name = host.strip().lower().rstrip(".")
    wildcard = name.startswith("*.")
    name = name.removeprefix("*.")
    domain = domain.strip().lower().strip(".")
    if name == domain or (wildcard and domain.endswith("." + name)):
        return True
    if not name.endswith("." + domain):
        return False
    first = name[: -len(domain) - 1].rsplit(".", 1)[-1]  # the label right under the domain
    return first in RESERVED_NAMES


def validate_custom_domain(name: str, domain: str) -> str:
    """A custom domain of an app or static route: a valid DNS name that is not one of lbsolo's own.

    Nor `<x>.<domain>`: custom domains are matched first, so it would shadow the app or route x.
    """
    host = validate_domain(name)
    base = domain.strip().lower().strip(".")
    if reserved_host(host, base):
        raise InvalidInput(f"{host} is reserved for lbsolo itself (its UI and API live at lbsolo.{base})")
    label = host.removesuffix("." + base)
    if host.endswith("." + base) and "." not in label:
        raise InvalidInput(f"{host} is the host of the app or route named {label!r}: name the app {label} instead")
    return host


def validate_config_key(key: str) -> str:
    if not _CONFIG_KEY.match(key):
        raise InvalidInput(f"invalid config key {key!r}: use letters, digits and '_', not starting with a digit")
    if key in RESERVED_CONFIG:
        raise InvalidInput(f"config key {key} is set by lbsolo itself")
    return key


def validate_process_name(name: str) -> str:
    if not _PROCESS_NAME.match(name):
        raise InvalidInput(f"invalid process type {name!r}: use up to 20 lowercase letters and digits")
    return name


def looks_secret(key: str) -> bool:
    upper = key.upper()
    return any(hint in upper for hint in _SECRET_HINTS)


def masked_config(config: dict[str, str], secrets: Iterable[str]) -> dict[str, str]:
    """Config as it may be shown: values of secret keys replaced by a mask."""
    secret = set(secrets)
    return {k: (MASK if k in secret or looks_secret(k) else v) for k, v in sorted(config.items())}


def release_secrets(release: Release, app: App, releases: Iterable[Release]) -> set[str]:
    """Which keys of a release's config are secret: the release's own record.

    A release stored before releases kept that record gets every key that is secret now or
    was recorded secret in any release of the app: too many masks beat one value shown.
    """
    if release.secrets is not None:
        return set(release.secrets)
    ever = set(app.secrets).union(*(r.secrets or () for r in releases))
    return {k for k in release.config if k in ever}


_VOLUME_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_MOUNT_PATH = re.compile(r"(?:/[A-Za-z0-9._@+-]+)+")
_SYSTEM_PATHS = ("/proc", "/sys", "/dev")


def validate_volume_name(name: str) -> str:
    """A volume's name, checked whole: it ends the engine's `lbsolo-<instance>-<app>-<name>`.

    No '-' in it: app names have dashes, so `x` + `a-b` and `x-a` + `b` would be one volume.
    """
    if not isinstance(name, str) or not _VOLUME_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid volume name {name!r}: use 1-40 lowercase letters, digits and '_', starting with a letter"
        )
    return name


def validate_mount_path(path: str) -> str:
    """Where a volume is mounted: an absolute, normalised path other than /, and not under /proc, /sys, /dev.

    Only plain characters: the engine joins name, path and mode with ':' into one bind string.
    """
    if not isinstance(path, str) or len(path) > 255 or not _MOUNT_PATH.fullmatch(path):
        raise InvalidInput(f"invalid mount path {path!r}: an absolute path other than / of letters, digits and ._@+-")
    parts = path.split("/")[1:]
    if any(p in (".", "..") for p in parts):
        raise InvalidInput(f"invalid mount path {path!r}: no '.' or '..' parts")
    if any(path == s or path.startswith(s + "/") for s in _SYSTEM_PATHS):
        raise InvalidInput(f"invalid mount path {path!r}: /proc, /sys and /dev belong to the container runtime")
    return path


@dataclass
class HealthCheck:
    """How the daemon decides a web replica is ready; checked from outside the container."""

    path: str | None = "/"  # None: the port accepts connections and keeps them open
    interval: float = 0.5
    timeout: float = 2.0
    retries: int = 1  # consecutive successes needed
    grace: float = 0.0  # seconds after start before the first check

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> HealthCheck:
        d = d or {}
        check = cls(
            path=d.get("path", "/"),
            interval=float(d.get("interval", 0.5)),
            timeout=float(d.get("timeout", 2.0)),
            retries=int(d.get("retries", 1)),
            grace=float(d.get("grace", 0.0)),
        )
        if check.path is not None and not str(check.path).startswith("/"):
            raise InvalidInput(f"health check path must start with '/': {check.path!r}")
        if not (0 < check.timeout <= 60 and 0 < check.interval <= 60 and 1 <= check.retries <= 20):
            raise InvalidInput("health check: timeout and interval in (0, 60] seconds, retries 1-20")
        return check


@dataclass
class App:
    name: str
    created_at: float = field(default_factory=now)
    release: int | None = None  # version currently meant to serve
    formation: dict[str, int] = field(default_factory=lambda: {WEB: 1})
    config: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)  # keys explicitly marked secret
    health: dict[str, Any] | None = None  # overrides of the source's health check
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # process -> {memory, cpus}
    volumes: dict[str, str] = field(default_factory=dict)  # volume name -> mount path
    domains: list[str] = field(default_factory=list)  # custom domains routed to the app
    hook_secret: str = ""  # authenticates inbound push webhooks
    https_redirect: bool = False  # plain-HTTP requests get a 308 to https:// (when the proxy has HTTPS)
    # The owner set the redirect (on or off) by hand: a first ACME certificate no longer turns it on.
    redirect_chosen: bool = False
    hsts_max_age: int = 0  # seconds; 0: no Strict-Transport-Security header (opt-in, over HTTPS only)
    hsts_subdomains: bool = False  # the header says includeSubDomains
    # The proxy reads a request's body whole before handing it to a replica (slow clients then
    # cost the app nothing); off: bodies stream through as they arrive (large uploads, long polls).
    request_buffering: bool = True
    repo: str = ""  # the git URL push webhooks deploy, set by the owner (never taken from a payload)
    # `apps:sleep`: after this many seconds without a request the replicas stop, and the next
    # request is held while one starts (None: never). `asleep`: stopped for that reason now.
    sleep_after: float | None = None
    asleep: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> App:
        return cls(
            name=d["name"],
            created_at=d.get("created_at", 0.0),
            release=d.get("release"),
            formation=dict(d.get("formation") or {WEB: 1}),
            config=dict(d.get("config") or {}),
            secrets=list(d.get("secrets") or []),
            health=d.get("health"),
            resources=dict(d.get("resources") or {}),
            volumes=dict(d.get("volumes") or {}),
            domains=list(d.get("domains") or []),
            hook_secret=str(d.get("hook_secret") or ""),
            https_redirect=bool(d.get("https_redirect", False)),
            redirect_chosen=bool(d.get("redirect_chosen", False)),
            hsts_max_age=int(d.get("hsts_max_age") or 0),
            hsts_subdomains=bool(d.get("hsts_subdomains", False)),
            request_buffering=bool(d.get("request_buffering", True)),
            repo=str(d.get("repo") or ""),
            sleep_after=float(d["sleep_after"]) if d.get("sleep_after") else None,
            asleep=bool(d.get("asleep", False)),
        )


@dataclass
class StaticRoute:
    """A route to a service on this machine that lbsolo does not run: `<name>.<domain>` -> `to`.

    It shares the app namespace (DNS and Host routing); an app and a route never have the same name.
    """

    name: str
    to: str  # host:port, as `format_address` writes it
    domains: list[str] = field(default_factory=list)  # extra hosts routed to it
    created_at: float = field(default_factory=now)

    @classmethod
    def create(cls, name: str, to: str, domains: Iterable[str] = ()) -> StaticRoute:
        """A validated route: the name like an app's, the address an IP literal or localhost with a port."""
        validate_app_name(name, "route name")
        return cls(
            name=name, to=format_address(*parse_address(to)), domains=sorted({validate_domain(d) for d in domains})
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StaticRoute:
        return cls(
            name=d["name"],
            to=d["to"],
            domains=list(d.get("domains") or []),
            created_at=d.get("created_at", 0.0),
        )


@dataclass
class Release:
    """Immutable once active: image + config + process commands + health check + version."""

    app: str
    version: int
    image: str  # image id (sha256:...), never rebuilt
    build_id: str | None = None
    description: str = ""
    config: dict[str, str] = field(default_factory=dict)
    # Keys of config that were secret when it was made; None: stored before releases recorded it.
    secrets: list[str] | None = None
    processes: dict[str, str] = field(default_factory=dict)  # type -> command; empty: the image's CMD as web
    health: dict[str, Any] = field(default_factory=dict)
    # lbsolo.toml's [[cron]] entries (checked, see cron_plan): the app's scheduled jobs while it is current.
    cron: list[dict[str, Any]] = field(default_factory=list)
    status: ReleaseStatus = ReleaseStatus.PENDING
    step: DeployStep | None = None
    error: str | None = None
    created_at: float = field(default_factory=now)

    @property
    def label(self) -> str:
        return f"v{self.version}"

    def process_types(self) -> list[str]:
        """The process types this release can run; `web` always (the image's CMD if not declared)."""
        kinds = {WEB, *self.processes}
        return sorted(k for k in kinds if k not in ("release", "test"))

    def command(self, process: str) -> str | None:
        return self.processes.get(process)

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
            config=dict(d.get("config") or {}),
            secrets=None if d.get("secrets") is None else list(d["secrets"]),
            processes=dict(d.get("processes") or {}),
            health=dict(d.get("health") or {}),
            cron=[dict(e) for e in d.get("cron") or []],
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
    source: str | None = None  # sha256 of the uploaded archive: the same source again re-uses `image`

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
            source=d.get("source"),
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
    host_port: int | None  # the port at `host` where a web replica is reached (None: none published)
    started_at: str = ""  # sorts oldest first (when listed: the creation time)
    host: str = "127.0.0.1"  # where the backend makes the replica reachable (Docker-local: the loopback)

    @property
    def one_off(self) -> bool:
        return self.process == ONE_OFF

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) where the proxy and health checks reach this replica; None if it has no port."""
        return None if self.host_port is None else (self.host, self.host_port)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_formation(items: Iterable[str]) -> dict[str, int]:
    """`web=3 worker=2` -> {"web": 3, "worker": 2}."""
    out = {}
    for item in items:
        kind, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise InvalidInput(f"expected TYPE=COUNT, got {item!r}")
        n = int(count)
        if n > 50:
            raise InvalidInput(f"{kind}={n}: at most 50 replicas per process type on one server")
        out[validate_process_name(kind.strip())] = n
    if not out:
        raise InvalidInput("nothing to scale: give TYPE=COUNT pairs, e.g. web=2")
    return out
