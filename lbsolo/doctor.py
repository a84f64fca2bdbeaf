"""`lbsolo doctor`: what on this machine keeps lbsolo from working, and the one command that fixes it.

`gather` reads the machine (the Docker engine's info, whether each port lbsolo listens on is
free or held by a running lbsolo, free disk for images and backups, how the domain resolves);
`judge` turns those facts into findings, and is pure so each rule has a unit test. Runs without
a daemon (it is what you run when the daemon will not start). Imports the engine, never the core.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import shutil
import socket
import urllib.request
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from lbsolo.config import Settings

LOW_DISK_BYTES = 2 * 1024**3  # below this free, builds and backups start failing
LOW_DISK_SHARE = 0.10


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    level: Level
    what: str
    detail: str
    fix: str = ""  # the one command (or setting) that fixes it


@dataclass
class Facts:
    """What `gather` found; every field has a value meaning "could not tell"."""

    engine_version: str = ""
    engine_error: str = ""
    engine_info: dict[str, Any] = field(default_factory=dict)
    daemon_pid: int | None = None  # a running lbsolo answering its health check
    daemon_ports: dict[str, int] = field(default_factory=dict)  # what the running daemon bound
    ports: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # name -> (host, port, "free"|"taken"|error)
    disk: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # name -> (path, free, total)
    resolved: dict[str, list[str]] = field(default_factory=dict)  # name -> addresses (empty: does not resolve)


def _port_state(host: str, port: int, kind: int) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return "taken"
            if e.errno == errno.EACCES:
                return "needs root or CAP_NET_BIND_SERVICE"
            return e.strerror or str(e)
    return "free"


def _daemon(settings: Settings) -> tuple[int | None, dict[str, int]]:
    try:
        runtime = json.loads(settings.runtime_path.read_text())
        with urllib.request.urlopen(f"{runtime['api_url']}/healthz", timeout=2) as r:
            if r.status != 200:
                return None, {}
    except (OSError, ValueError, KeyError):
        return None, {}
    ports = {"proxy": int(runtime.get("proxy_port", 0)), "dns": int(runtime.get("dns_port", 0))}
    ports["api"] = int(str(runtime["api_url"]).rsplit(":", 1)[1])
    return int(runtime.get("pid", 0)) or None, ports


def gather(settings: Settings) -> Facts:
    from lbsolo.engine_docker import DockerBackend  # the docker SDK only when doctor runs

    facts = Facts()
    engine = DockerBackend("doctor")
    try:
        facts.engine_version = engine.ping()
        facts.engine_info = engine.info()
    except Exception as e:  # any failure to reach the engine is the finding
        facts.engine_error = str(e)
    finally:
        engine.close()
    facts.daemon_pid, facts.daemon_ports = _daemon(settings)
    wanted = {
        "proxy": (settings.proxy_host, settings.proxy_port, socket.SOCK_STREAM),
        "dns (udp)": (settings.dns_host, settings.dns_port, socket.SOCK_DGRAM),
        "dns (tcp)": (settings.dns_host, settings.dns_port, socket.SOCK_STREAM),
        "api": (settings.api_host, settings.api_port, socket.SOCK_STREAM),
    }
    if settings.proxy_https_port:
        wanted["https"] = (settings.proxy_host, settings.proxy_https_port, socket.SOCK_STREAM)
    for name, (host, port, kind) in wanted.items():
        facts.ports[name] = (host, port, _port_state(host, port, kind) if port else "free")
    paths = {"lbsolo home": settings.home, "images": Path(facts.engine_info.get("DockerRootDir") or "/var/lib/docker")}
    for name, path in paths.items():
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            usage = shutil.disk_usage(probe)
            facts.disk[name] = (str(path), usage.free, usage.total)
        except OSError:
            pass
    for name in (f"doctor-probe.{settings.domain}",):
        try:
            infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
            facts.resolved[name] = sorted({str(i[4][0]) for i in infos})
        except OSError:
            facts.resolved[name] = []
    return facts


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def judge(facts: Facts, settings: Settings) -> list[Finding]:
    out = _engine(facts)
    out += _ports(facts)
    for name, (path, free, total) in facts.disk.items():
        low = free < LOW_DISK_BYTES or (total > 0 and free / total < LOW_DISK_SHARE)
        detail = f"{_gib(free)} free of {_gib(total)} at {path}"
        out.append(Finding(Level.WARN, f"disk ({name})", detail, "lbsolo gc; docker system prune") if low
                   else Finding(Level.OK, f"disk ({name})", detail))  # fmt: skip
    out += _dns(facts, settings)
    out += _acme(settings)
    return out


def _engine(facts: Facts) -> list[Finding]:
    if facts.engine_error:
        fix = "sudo systemctl start docker (or: sudo apt-get install docker.io)"
        return [Finding(Level.FAIL, "docker engine", f"not reachable: {facts.engine_error}", fix)]
    out = [Finding(Level.OK, "docker engine", f"version {facts.engine_version}")]
    info = facts.engine_info
    missing = [k for k in ("MemoryLimit", "CpuCfsQuota", "PidsLimit") if info.get(k) is False]
    if missing:
        detail = f"the engine cannot enforce {', '.join(missing)}: apps:resources limits are not applied"
        fix = "enable the memory cgroup: add cgroup_enable=memory to the kernel command line"
        out.append(Finding(Level.WARN, "resource limits", detail, fix))
    elif info:
        out.append(Finding(Level.OK, "resource limits", f"enforced (cgroup v{info.get('CgroupVersion', '?')})"))
    return out


def _ports(facts: Facts) -> list[Finding]:
    out = []
    owned = set(facts.daemon_ports.values())
    for name, (host, port, state) in facts.ports.items():
        what, where = f"port {name}", f"{host}:{port}"
        if state == "free":
            out.append(Finding(Level.OK, what, f"{where} is free"))
        elif facts.daemon_pid and port in owned:
            out.append(Finding(Level.OK, what, f"{where} is held by the running lbsolo (pid {facts.daemon_pid})"))
        elif state == "taken":
            fix = f"sudo ss -ltnup 'sport = :{port}' (then stop it, or pick another LBSOLO_* port)"
            out.append(Finding(Level.FAIL, what, f"{where} is taken by another program", fix))
        else:
            fix = "run lbsolo as root, or give it CAP_NET_BIND_SERVICE (lbsolo service:install does)"
            out.append(Finding(Level.FAIL, what, f"{where}: {state}", fix))
    return out


def _dns(facts: Facts, settings: Settings) -> list[Finding]:
    out = []
    expected = set(settings.dns_ipv4) | set(settings.dns_ipv6)
    for name, addrs in facts.resolved.items():
        local = _all_loopback(set(addrs)) and _all_loopback(expected)
        if not addrs:
            detail = f"{name} does not resolve on this machine: apps are reachable only with a Host header"
            out.append(Finding(Level.WARN, "dns", detail, "sudo lbsolo dns:setup"))
        elif expected & set(addrs) or local:
            out.append(Finding(Level.OK, "dns", f"{name} resolves to {', '.join(addrs)}"))
        else:
            detail = f"{name} resolves to {', '.join(addrs)}, not to this proxy ({', '.join(sorted(expected))})"
            fix = f"point a wildcard record *.{settings.domain} at this server, or: sudo lbsolo dns:setup"
            out.append(Finding(Level.WARN, "dns", detail, fix))
    public = not _all_loopback(expected) or settings.proxy_host in ("0.0.0.0", "::")
    if public and not settings.public_ipv4 and not settings.public_ipv6:
        detail = "the proxy listens beyond loopback but LBSOLO_PUBLIC_IPV4 is unset: the DNS answers with 127.0.0.1"
        out.append(Finding(Level.WARN, "public address", detail, "set LBSOLO_PUBLIC_IPV4=<this server's address>"))
    return out


def _acme(settings: Settings) -> list[Finding]:
    """Whether custom domains get certificates from an ACME CA, and what keeps them from it."""
    public = settings.proxy_host in ("0.0.0.0", "::") or not _all_loopback(set(settings.dns_ipv4))
    if not settings.acme_on:
        detail = "off: LBSOLO_ACME_EMAIL is not set, so custom domains get no certificate from a CA"
        fix = "set LBSOLO_ACME_EMAIL=you@example.com (and LBSOLO_PROXY_HTTPS_PORT=443), then restart lbsolo"
        return [Finding(Level.WARN if public else Level.OK, "acme", detail, fix if public else "")]
    out = []
    where = settings.acme_directory_url
    out.append(Finding(Level.OK, "acme", f"on: {where}, contact {settings.acme_email}"))
    if not settings.proxy_https_port:
        detail = "certificates are issued but not served: the proxy has no HTTPS listener"
        out.append(Finding(Level.WARN, "acme", detail, "set LBSOLO_PROXY_HTTPS_PORT=443"))
    if settings.acme_http_port != settings.proxy_port:
        detail = (
            f"the CA fetches HTTP-01 tokens on port {settings.acme_http_port}, the proxy listens on "
            f"{settings.proxy_port}: forward one to the other"
        )
        out.append(Finding(Level.WARN, "acme", detail, "set LBSOLO_PROXY_PORT=80"))
    if settings.proxy_https_port and settings.acme_tls_port != settings.proxy_https_port:
        detail = (
            f"the CA connects for TLS-ALPN-01 on port {settings.acme_tls_port}, the HTTPS listener is on "
            f"{settings.proxy_https_port}: forward one to the other (or HTTP-01 alone is used)"
        )
        out.append(Finding(Level.WARN, "acme", detail, "set LBSOLO_PROXY_HTTPS_PORT=443"))
    return out


def _all_loopback(addrs: set[str]) -> bool:
    return all(ipaddress.ip_address(a).is_loopback for a in addrs)


def failed(findings: list[Finding]) -> bool:
    return any(f.level is Level.FAIL for f in findings)
