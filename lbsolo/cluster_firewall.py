"""Which firewall rules keep a swarm node's published app ports for the manager's proxy alone, as pure decisions.

On the swarm backend a replica publishes its port in host mode (Swarm cannot publish on
127.0.0.1 only), on a port of a fixed range lbsolo reserves (LBSOLO_SWARM_PORTS). Docker DNATs
such a port to the container, so a connection to it crosses the node's FORWARD chain, whose
first jump is Docker's DOCKER-USER chain: there lbsolo puts, for each IP family,

1. RETURN for packets of connections already admitted (ESTABLISHED, RELATED) to the range;
2. RETURN for new connections from each manager address to the range;
3. DROP for any other connection DNAT-ed to the range.

All three match on the connection's original destination port (`-m conntrack --ctorigdstport`:
the packet's own port is the container's after DNAT); the DROP matches only DNAT-ed connections,
so a container's outbound connection to a far port in the range is left alone. RETURN, not
ACCEPT: lbsolo only takes away, and Docker's own rules still decide the rest. Every rule carries
`-m comment --comment lbsolo-<instance>`, so lbsolo replaces or removes exactly its own.

Here: the range and the addresses as typed, checked; the rules; how to go from the chain's rules
now (`iptables -S DOCKER-USER`) to the wanted ones in one iptables-restore transaction; a free
port of the range for a new replica. The I/O is lbsolo.engine_swarm_firewall. This module must
not import any outside library, nor do I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lbsolo.errors import Conflict, InvalidInput

CHAIN = "DOCKER-USER"
# Below Linux's ephemeral range (32768-60999): a node's own outbound connections never take them.
DEFAULT_PORTS = "30000-30999"
INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    @property
    def match(self) -> str:
        """As iptables writes it: 30000:30999 (one port: 30000)."""
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


def parse_ports(text: str, what: str = "LBSOLO_SWARM_PORTS") -> PortRange:
    """'30000-30999' (or one port, '30000'): the range replicas publish on, checked."""
    value = (text or "").strip()
    m = re.fullmatch(r"(\d{1,5})(?:\s*[-:]\s*(\d{1,5}))?", value)
    if not m:
        raise InvalidInput(f"{what} {text!r} is not a port range: write FIRST-LAST, e.g. {DEFAULT_PORTS}")
    first, last = int(m[1]), int(m[2] or m[1])
    if not (1024 <= first <= 65535 and 1024 <= last <= 65535):
        raise InvalidInput(f"{what} {text!r}: ports are 1024 to 65535 (below 1024 are the system's)")
    if first > last:
        raise InvalidInput(f"{what} {text!r}: the first port is above the last; write {last}-{first}")
    return PortRange(first, last)


def parse_managers(values: Iterable[str]) -> list[Address]:
    """The addresses the manager's proxy connects from, each an IP address (no name, no network)."""
    out: list[Address] = []
    for raw in values:
        value = raw.strip()
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            raise InvalidInput(
                f"--manager {raw!r} is not an IP address: give the address the manager reaches this node from "
                "(its swarm address, as `lbsolo nodes` shows it)"
            ) from None
        if ip.is_unspecified or ip.is_multicast:
            raise InvalidInput(f"--manager {raw!r}: no connection comes from that address; give the manager's own")
        if ip not in out:
            out.append(ip)
    if not out:
        raise InvalidInput("give the manager's address (--manager IP): only it may reach the app ports")
    return out


def tag(instance: str) -> str:
    """The comment every rule of this lbsolo instance carries."""
    if not INSTANCE.fullmatch(instance or ""):
        raise InvalidInput(
            f"instance {instance!r}: letters, digits, '.', '_' and '-' (the id `lbsolo cluster:join-command` prints)"
        )
    return f"lbsolo-{instance}"


def rules(instance: str, managers: Sequence[Address], ports: PortRange, family: int) -> list[str]:
    """The DOCKER-USER rules for one IP family (4 or 6), in order, as `iptables -S` prints them (without `-A CHAIN`)."""
    comment = f"-m comment --comment {tag(instance)}"
    conntrack = f"-m conntrack --ctorigdstport {ports.match}"
    host = 32 if family == 4 else 128
    out = [f"-p tcp -m conntrack --ctstate RELATED,ESTABLISHED --ctorigdstport {ports.match} {comment} -j RETURN"]
    out += [f"-s {ip}/{host} -p tcp {conntrack} {comment} -j RETURN" for ip in managers if ip.version == family]
    out.append(f"-p tcp -m conntrack --ctstate DNAT --ctorigdstport {ports.match} {comment} -j DROP")
    return out


def chain_rules(listing: str, chain: str = CHAIN) -> list[str]:
    """The chain's rules from `iptables -S CHAIN`, in order, without their `-A CHAIN `."""
    prefix = f"-A {chain} "
    return [line[len(prefix) :].strip() for line in listing.splitlines() if line.startswith(prefix)]


def owned(rule: str, instance: str) -> bool:
    """Whether a rule is this instance's: its comment is exactly the tag (quoted or not)."""
    words = rule.split()
    mine = tag(instance)
    return any(w == "--comment" and words[i + 1].strip('"') == mine for i, w in enumerate(words[:-1]))


@dataclass(frozen=True)
class Change:
    """From the chain's rules now to the wanted ones: nothing, or one iptables-restore transaction."""

    script: str  # for `iptables-restore --noflush`; empty: the rules are in place already
    added: int
    removed: int

    @property
    def unchanged(self) -> bool:
        return not self.script


def change(current: Sequence[str], wanted: Sequence[str], instance: str, chain: str = CHAIN) -> Change:
    """The transaction that leaves `wanted` first in the chain and no other rule of this instance.

    Nothing when they are there already, first and in order (applying again changes nothing).
    Otherwise the wanted rules are inserted at the top and the instance's old ones deleted by
    their number, in one transaction: no moment without rules, and no one else's rule is touched."""
    mine = [i for i, rule in enumerate(current) if owned(rule, instance)]
    if list(current[: len(wanted)]) == list(wanted) and mine == list(range(len(wanted))):
        return Change("", 0, 0)
    lines = ["*filter"]
    lines += [f"-I {chain} {n} {rule}" for n, rule in enumerate(wanted, start=1)]
    # Numbers are 1-based and shifted by the inserted rules; from the last, so each stays right.
    lines += [f"-D {chain} {i + 1 + len(wanted)}" for i in reversed(mine)]
    lines.append("COMMIT")
    return Change("\n".join(lines) + "\n", len(wanted), len(mine))


def removal(current: Sequence[str], instance: str, chain: str = CHAIN) -> Change:
    """The transaction that deletes this instance's rules and nothing else (nothing when there are none)."""
    mine = [i for i, rule in enumerate(current) if owned(rule, instance)]
    if not mine:
        return Change("", 0, 0)
    lines = ["*filter", *(f"-D {chain} {i + 1}" for i in reversed(mine)), "COMMIT"]
    return Change("\n".join(lines) + "\n", 0, len(mine))


def commands(instance: str, managers: Sequence[Address], ports: PortRange) -> list[str]:
    """The same rules as shell lines, for a node without lbsolo (`lbsolo node:firewall --print`)."""
    out = []
    for family, tool in ((4, "iptables"), (6, "ip6tables")):
        if family == 6 and not any(ip.version == 6 for ip in managers):
            continue
        wanted = rules(instance, managers, ports, family)
        out += [f"{tool} -w -I {CHAIN} {n} {rule}" for n, rule in enumerate(wanted, start=1)]
    return out


def node_step(instance: str, manager: str, ports: PortRange) -> str:
    """What `cluster:join-command` tells the operator to run, as root, on every node (the manager too)."""
    return f"lbsolo node:firewall --instance {instance} --manager {manager} --ports {ports}"


def pick_port(ports: PortRange, used: Iterable[int]) -> int:
    """The lowest port of the range no replica of this instance publishes on (on any node)."""
    taken = {p for p in used if p in ports}
    for port in range(ports.first, ports.last + 1):
        if port not in taken:
            return port
    raise Conflict(
        f"every port of LBSOLO_SWARM_PORTS ({ports}, {len(ports)} ports) is published by a replica already: "
        "widen the range (and run `lbsolo node:firewall` again on every node)"
    )
