"""Applying lbsolo's DOCKER-USER rules on one swarm node: the I/O around lbsolo.cluster_firewall.

Run by `lbsolo node:firewall` on the node itself, as root, once per node (the manager too), the
step `lbsolo cluster:join-command` prints: it reads the chain (`iptables -S DOCKER-USER`) and,
unless the wanted rules are there already, replaces this instance's rules in one
`iptables-restore --noflush` transaction. IPv6 is done the same way when the node has Docker's
ip6tables DOCKER-USER chain, and skipped (said) when it has not. Tests run the same code in a
test node's network namespace by giving `prefix` (`nsenter --net=…`).

Blocking (it runs processes): the CLI calls it, never the daemon's event loop. It must not touch
any chain but DOCKER-USER, nor any rule that does not carry this instance's tag.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from lbsolo import cluster_firewall as fw
from lbsolo.errors import EngineError

TOOLS = {4: ("iptables", "iptables-restore"), 6: ("ip6tables", "ip6tables-restore")}
MISSING = 127  # a shell's or nsenter's status when the program is not there


class FirewallError(EngineError):
    """The node's firewall could not be read or changed (the message names the fix)."""


@dataclass
class Applied:
    """What one run did, per IP family: rules added and removed, or unchanged, or skipped (why)."""

    families: dict[int, fw.Change] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def unchanged(self) -> bool:
        return all(c.unchanged for c in self.families.values())


class NodeFirewall:
    """The DOCKER-USER chain of the node this runs on (or of the namespace `prefix` enters)."""

    def __init__(self, prefix: Sequence[str] = (), timeout: float = 30.0) -> None:
        self.prefix = list(prefix)
        self.timeout = timeout

    def _run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                [*self.prefix, *argv], input=stdin, capture_output=True, text=True, timeout=self.timeout
            )
        except FileNotFoundError:
            done = subprocess.CompletedProcess(argv, MISSING, "", f"{argv[0]}: not found")
        except subprocess.TimeoutExpired:
            raise FirewallError(
                f"{argv[0]} did not answer in {self.timeout:.0f}s (another holds the xtables lock?)"
            ) from None
        if done.returncode == MISSING:
            raise FirewallError(
                f"{argv[0]} is not installed on this node: install it (Debian/Ubuntu: `apt-get install iptables`), "
                "then run `lbsolo node:firewall` again"
            )
        if done.returncode != 0 and "Permission denied" in done.stderr:
            raise FirewallError(f"{argv[0]}: permission denied: run `lbsolo node:firewall` as root (sudo)")
        return done

    def listing(self, family: int) -> list[str] | None:
        """The chain's rules, or None when this family has no DOCKER-USER chain."""
        done = self._run([TOOLS[family][0], "-w", "5", "-S", fw.CHAIN])
        if done.returncode != 0:
            return None
        return fw.chain_rules(done.stdout)

    def _commit(self, family: int, change: fw.Change) -> None:
        if change.unchanged:
            return
        done = self._run([TOOLS[family][1], "-w", "5", "--noflush"], stdin=change.script)
        if done.returncode != 0:
            raise FirewallError(f"{TOOLS[family][1]} refused lbsolo's rules: {done.stderr.strip()}")

    def apply(self, instance: str, managers: Sequence[fw.Address], ports: fw.PortRange) -> Applied:
        """Leave exactly the wanted rules of `instance` first in DOCKER-USER (IPv4, and IPv6 if it has the chain)."""
        started = time.monotonic()
        out = Applied()
        for family in (4, 6):
            current = self.listing(family)
            if current is None:
                if family == 4:
                    raise FirewallError(
                        "this node has no DOCKER-USER chain: is Docker running here, with its iptables rules "
                        "(not --iptables=false)? Start Docker, then run `lbsolo node:firewall` again"
                    )
                out.skipped[6] = "no ip6tables DOCKER-USER chain (Docker's IPv6 is off): nothing published over IPv6"
                continue
            change = fw.change(current, fw.rules(instance, managers, ports, family), instance)
            self._commit(family, change)
            out.families[family] = change
        out.seconds = time.monotonic() - started
        return out

    def remove(self, instance: str) -> Applied:
        """Delete every rule of `instance` from DOCKER-USER, and nothing else."""
        started = time.monotonic()
        out = Applied()
        for family in (4, 6):
            current = self.listing(family)
            if current is None:
                out.skipped[family] = "no DOCKER-USER chain"
                continue
            change = fw.removal(current, instance)
            self._commit(family, change)
            out.families[family] = change
        out.seconds = time.monotonic() - started
        return out
