"""One Settings object holding every knob of lbsolo.

Precedence: explicit overrides (CLI flags) > environment variables `LBSOLO_<FIELD>` > defaults.
Pure data: reading the environment is the only I/O here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def _default_home() -> Path:
    return Path(os.environ.get("LBSOLO_HOME") or Path.home() / ".lbsolo")


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=_default_home)
    domain: str = "lbsolo.localhost"
    api_host: str = "127.0.0.1"
    api_port: int = 7780
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 8080
    # HTTPS listener of the proxy (0: off). Certificates for the lbsolo domain come from a local
    # CA made on first use under $LBSOLO_HOME/tls (`lbsolo tls:trust` says how to trust it).
    proxy_https_port: int = 0
    dns_host: str = "127.0.0.1"
    dns_port: int = 5354
    dns_strict: bool = False
    dns_ttl: int = 5
    # Forwarding of names outside lbsolo's zones: off by default, and then only for `dns_allow`.
    dns_forward: bool = False
    dns_upstreams: str = ""  # comma-separated host[:port]; empty: /etc/resolv.conf
    dns_allow: str = ""  # comma-separated CIDRs; empty: loopback only
    dns_rate_qps: float = 2000.0  # per client (loopback exempt); 0 turns the limit off
    # Address(es) the DNS answers with: where the proxy can be reached. Empty = derived.
    public_ipv4: str = ""
    public_ipv6: str = ""
    # PORT given to web processes inside their container.
    container_port: int = 5000
    reconcile_interval: float = 5.0
    deploy_timeout: float = 60.0
    build_timeout: float = 900.0
    build_memory: str = "2g"
    max_upload_bytes: int = 512 * 1024 * 1024
    stop_timeout: int = 10
    drain_timeout: float = 30.0
    shutdown_timeout: float = 10.0
    keep_releases: int = 5

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Build settings from the environment, then apply non-None overrides."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"LBSOLO_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "home" in values:
            values["home"] = Path(values["home"]).expanduser()
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def dns_ipv4(self) -> tuple[str, ...]:
        if self.public_ipv4:
            return tuple(a.strip() for a in self.public_ipv4.split(",") if a.strip())
        if self.proxy_host in ("0.0.0.0", "", "::"):
            return ("127.0.0.1",)
        return (self.proxy_host,) if ":" not in self.proxy_host else ()

    @property
    def dns_ipv6(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.public_ipv6.split(",") if a.strip())

    @property
    def state_path(self) -> Path:
        return self.home / "state.json"

    @property
    def token_path(self) -> Path:
        return self.home / "token"

    @property
    def runtime_path(self) -> Path:
        """Where the running daemon records the addresses it actually bound."""
        return self.home / "daemon.json"

    @property
    def socket_path(self) -> Path:
        """The API's unix socket (mode 0600) for the local CLI."""
        return self.home / "api.sock"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def app_url(self, app: str) -> str:
        port = "" if self.proxy_port == 80 else f":{self.proxy_port}"
        return f"http://{app}.{self.domain}{port}"


def _coerce(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    if kind == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "Path":
        return Path(raw)
    return raw
