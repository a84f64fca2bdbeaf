"""Steps that make the host's resolver send the lbsolo domain to lbsolo's DNS server.

What it is for: ``lbsolo dns:setup`` prints these steps and, with ``--apply``, performs
them.  :func:`setup_plan` is pure (domain, address, system -> files, commands, text);
:func:`detect_system` looks at the host; :func:`apply_plan` writes the files under a
root directory (tests use a temporary one) and runs the commands only when given a
runner.

* systemd-resolved (most current Linux desktops and servers): a drop-in
  ``/etc/systemd/resolved.conf.d/lbsolo.conf`` with ``DNS=127.0.0.1:5354`` (the port
  syntax needs systemd 246 or newer) and the routing-only domain ``~<domain>``.
* macOS: ``/etc/resolver/<domain>`` with ``nameserver`` and ``port``.
* anything else: a dnsmasq rule ``server=/<domain>/127.0.0.1#5354``.

What it must not do: print, exit, or touch anything at import or in :func:`setup_plan`.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SYSTEMS", "SetupFile", "SetupPlan", "apply_plan", "detect_system", "setup_plan"]

SYSTEMS = ("linux-resolved", "linux-other", "macos")


@dataclass(frozen=True, slots=True)
class SetupFile:
    """A file the plan writes: absolute path on the host, and its whole content."""

    path: str
    content: str


@dataclass(frozen=True, slots=True)
class SetupPlan:
    """What to do on one system so that ``<anything>.<domain>`` is asked of lbsolo."""

    system: str
    domain: str
    server: str  # the address resolvers should use, e.g. "127.0.0.1"
    port: int
    files: tuple[SetupFile, ...]
    commands: tuple[tuple[str, ...], ...]  # run after writing the files, as root
    check: tuple[str, ...]  # a command that shows it works
    notes: tuple[str, ...]
    text: str  # the steps for a human, ready to print


def setup_plan(domain: str, host: str, port: int, system: str) -> SetupPlan:
    """The steps for ``system`` (one of :data:`SYSTEMS`) to route ``domain`` to ``host:port``."""
    domain = domain.strip().rstrip(".").lower()
    if not domain or any(not label or len(label) > 63 for label in domain.split(".")) or "/" in domain:
        raise ValueError(f"invalid DNS domain: {domain!r}")
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; expected one of {', '.join(SYSTEMS)}")
    if not 0 < port < 65536:
        raise ValueError(f"invalid DNS port: {port!r}")
    server = _reachable(host)
    v6 = ":" in server
    notes: list[str] = []
    if (domain == "localhost" or domain.endswith(".localhost")) and system == "linux-resolved":
        notes.append(
            "systemd-resolved answers *.localhost itself (127.0.0.1 and ::1) without asking any DNS server. "
            "That suits a proxy on loopback; to reach lbsolo from elsewhere use another domain, e.g. apps.test."
        )
    if system == "linux-resolved":
        address = f"[{server}]:{port}" if v6 else f"{server}:{port}"
        path = "/etc/systemd/resolved.conf.d/lbsolo.conf"
        content = (
            "# Written by `lbsolo dns:setup`: send the lbsolo domain to lbsolo's DNS server.\n"
            "# The port in DNS= needs systemd 246 or newer.  Remove this file to undo.\n"
            f"[Resolve]\nDNS={address}\nDomains=~{domain}\n"
        )
        files = (SetupFile(path, content),)
        commands: tuple[tuple[str, ...], ...] = (("systemctl", "restart", "systemd-resolved"),)
        check: tuple[str, ...] = ("resolvectl", "query", f"hello.{domain}")
        notes.append("On systemd older than 246 (no port in DNS=), run lbsolo's DNS on port 53 or use dnsmasq.")
        intro = "systemd-resolved: route the domain to lbsolo with a drop-in, then restart the resolver."
    elif system == "macos":
        path = f"/etc/resolver/{domain}"
        content = f"# Written by `lbsolo dns:setup`.  Remove this file to undo.\nnameserver {server}\nport {port}\n"
        files = (SetupFile(path, content),)
        commands = (("dscacheutil", "-flushcache"), ("killall", "-HUP", "mDNSResponder"))
        check = ("dscacheutil", "-q", "host", "-a", "name", f"hello.{domain}")
        notes.append("`dig` and `nslookup` bypass /etc/resolver; check with dscacheutil, ping or a browser.")
        intro = "macOS: a per-domain resolver file sends the domain (and its subdomains) to lbsolo."
    else:
        path = "/etc/dnsmasq.d/lbsolo.conf"
        content = f"# Written by `lbsolo dns:setup`.  Remove this file to undo.\nserver=/{domain}/{server}#{port}\n"
        files = (SetupFile(path, content),)
        commands = (("systemctl", "restart", "dnsmasq"),)
        check = ("dig", f"hello.{domain}")
        notes.append(
            "This assumes dnsmasq is the host's resolver.  With NetworkManager's dnsmasq plugin, put the same "
            "line in /etc/NetworkManager/dnsmasq.d/lbsolo.conf and restart NetworkManager instead."
        )
        notes.append(f"Without a local resolver, query lbsolo directly: dig -p {port} @{server} hello.{domain}")
        intro = "Other systems: tell the local dnsmasq to forward the domain to lbsolo."
    text = _render(intro, files, commands, check, notes)
    return SetupPlan(system, domain, server, port, files, commands, check, tuple(notes), text)


def _reachable(host: str) -> str:
    """The address a local resolver should use for a server bound to ``host``."""
    host = host.strip().strip("[]") or "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError as e:
        raise ValueError(f"the DNS host must be an IP address, not {host!r}") from e
    if address.is_unspecified:  # bound to all addresses: loopback is one of them
        return "::1" if address.version == 6 else "127.0.0.1"
    return str(address)


def _render(
    intro: str,
    files: Sequence[SetupFile],
    commands: Sequence[Sequence[str]],
    check: Sequence[str],
    notes: Sequence[str],
) -> str:
    lines = [intro, ""]
    step = 1
    for f in files:
        lines.append(f"{step}. Create {f.path} (as root) containing:")
        lines += ["", *(f"     {line}" for line in f.content.splitlines()), ""]
        step += 1
    for command in commands:
        lines.append(f"{step}. Run: sudo {' '.join(command)}")
        step += 1
    lines.append(f"{step}. Check: {' '.join(check)}")
    if notes:
        lines += ["", *(f"Note: {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def detect_system(platform: str = sys.platform, root: Path = Path("/")) -> str:
    """Which of :data:`SYSTEMS` this host is (``root`` lets tests fake a filesystem)."""
    if platform == "darwin":
        return "macos"
    if (root / "run/systemd/resolve").is_dir():
        return "linux-resolved"
    try:
        resolv = (root / "etc/resolv.conf").read_text(encoding="utf-8", errors="replace")
    except OSError:
        resolv = ""
    if "127.0.0.53" in resolv:
        return "linux-resolved"
    return "linux-other"


def apply_plan(
    plan: SetupPlan, root: Path = Path("/"), run: Callable[[tuple[str, ...]], object] | None = None
) -> list[Path]:
    """Write the plan's files under ``root`` (atomically), then run its commands with ``run``.

    Commands are only run when ``run`` is given (the CLI passes a subprocess runner);
    returns the paths written.  Raises OSError (e.g. PermissionError without root).
    """
    written = []
    for f in plan.files:
        target = root / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".lbsolo-", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(f.content)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    if run is not None:
        for command in plan.commands:
            run(command)
    return written
