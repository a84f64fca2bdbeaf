"""The node firewall's pure decisions (lbsolo.cluster_firewall): which DOCKER-USER rules keep a swarm
node's app ports for the manager alone, and how to get from the chain's rules now to those. No iptables."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest

from lbsolo import cluster_firewall as fw
from lbsolo.errors import Conflict, InvalidInput

PORTS = fw.PortRange(30000, 30999)
MANAGER = [ipaddress.ip_address("10.0.0.1")]
TAG = "-m comment --comment lbsolo-abc"


def test_the_port_range_is_read_and_checked():
    assert fw.parse_ports("30000-30999") == PORTS
    assert fw.parse_ports(" 30000:30999 ") == PORTS and str(PORTS) == "30000-30999" and len(PORTS) == 1000
    assert fw.parse_ports("31000") == fw.PortRange(31000, 31000) and fw.PortRange(31000, 31000).match == "31000"
    assert fw.parse_ports(fw.DEFAULT_PORTS).match == "30000:30999"
    for bad, says in [
        ("", "is not a port range: write FIRST-LAST, e.g. 30000-30999"),
        ("30000-", "is not a port range"),
        ("3e4-31000", "is not a port range"),
        ("30000-30999,31000", "is not a port range"),
        ("80-90", "ports are 1024 to 65535"),
        ("30000-70000", "ports are 1024 to 65535"),
        ("30999-30000", "the first port is above the last; write 30000-30999"),
    ]:
        with pytest.raises(InvalidInput, match=says):
            fw.parse_ports(bad, "--ports")


def test_manager_addresses_must_be_ip_addresses():
    assert fw.parse_managers(["10.0.0.1", " 10.0.0.1", "fd00::1"]) == [
        ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1"),
    ]  # fmt: skip
    for bad, says in [
        ("manager.example", "is not an IP address: give the address the manager reaches this node from"),
        ("10.0.0.0/24", "is not an IP address"),
        ("10.0.0.1:2377", "is not an IP address"),
        ("0.0.0.0", "no connection comes from that address"),
    ]:
        with pytest.raises(InvalidInput, match=says):
            fw.parse_managers([bad])
    with pytest.raises(InvalidInput, match=r"give the manager's address \(--manager IP\)"):
        fw.parse_managers([])


def test_the_tag_names_the_instance_and_nothing_else():
    assert fw.tag("abc") == "lbsolo-abc"
    for bad in ("", "a b", "a;b", '"x"', "-x", "x" * 64):
        with pytest.raises(InvalidInput, match="letters, digits"):
            fw.tag(bad)


def test_the_rules_admit_established_then_the_manager_and_drop_the_rest_of_the_range():
    assert fw.rules("abc", MANAGER, PORTS, 4) == [
        f"-p tcp -m conntrack --ctstate RELATED,ESTABLISHED --ctorigdstport 30000:30999 {TAG} -j RETURN",
        f"-s 10.0.0.1/32 -p tcp -m conntrack --ctorigdstport 30000:30999 {TAG} -j RETURN",
        f"-p tcp -m conntrack --ctstate DNAT --ctorigdstport 30000:30999 {TAG} -j DROP",
    ]
    both = fw.parse_managers(["10.0.0.1", "10.0.0.2", "fd00::1"])
    v4, v6 = fw.rules("abc", both, PORTS, 4), fw.rules("abc", both, PORTS, 6)
    assert [r.split("-p ")[0].strip() for r in v4] == ["", "-s 10.0.0.1/32", "-s 10.0.0.2/32", ""]
    assert v6[1].startswith("-s fd00::1/128 -p tcp") and len(v6) == 3
    # a v4-only manager: the v6 family drops everyone from the range (no one may bypass the proxy over v6)
    assert [r.rsplit(" ", 1)[1] for r in fw.rules("abc", MANAGER, PORTS, 6)] == ["RETURN", "DROP"]


def listing(*rules: str) -> str:
    return "-N DOCKER-USER\n" + "".join(f"-A DOCKER-USER {r}\n" for r in rules)


def test_applying_on_an_empty_chain_inserts_the_rules_at_the_top():
    wanted = fw.rules("abc", MANAGER, PORTS, 4)
    current = fw.chain_rules(listing("-j RETURN"))
    assert current == ["-j RETURN"]
    done = fw.change(current, wanted, "abc")
    assert (done.added, done.removed, done.unchanged) == (3, 0, False)
    assert done.script.splitlines() == [
        "*filter", *(f"-I DOCKER-USER {n} {r}" for n, r in enumerate(wanted, start=1)), "COMMIT",
    ]  # fmt: skip


def test_applying_again_changes_nothing():
    wanted = fw.rules("abc", MANAGER, PORTS, 4)
    current = fw.chain_rules(listing(*wanted, "-j RETURN"))
    assert fw.change(current, wanted, "abc").unchanged
    assert fw.change(current, wanted, "abc").script == ""


def test_new_rules_replace_the_old_in_one_transaction_leaving_others_rules_alone():
    old = fw.rules("abc", MANAGER, PORTS, 4)
    other = "-s 192.0.2.7/32 -m comment --comment lbsolo-abcd -j DROP"  # another instance: a longer tag
    theirs = "-i eth1 -j DROP"
    current = [theirs, *old[:2], other, old[2]]
    wanted = fw.rules("abc", fw.parse_managers(["10.0.0.2"]), PORTS, 4)
    done = fw.change(current, wanted, "abc")
    assert (done.added, done.removed) == (3, 3)
    # after 3 insertions the old ones sit at 1-based 2, 3, 5, shifted by 3: deleted from the last
    assert done.script.splitlines()[4:] == ["-D DOCKER-USER 8", "-D DOCKER-USER 6", "-D DOCKER-USER 5", "COMMIT"]
    assert fw.owned(old[0], "abc") and not fw.owned(other, "abc") and not fw.owned(theirs, "abc")
    assert fw.owned('-j DROP -m comment --comment "lbsolo-abc"', "abc")


def test_rules_of_this_instance_not_at_the_top_are_moved_there():
    wanted = fw.rules("abc", MANAGER, PORTS, 4)
    done = fw.change(["-i eth1 -j DROP", *wanted], wanted, "abc")
    assert (done.added, done.removed, done.unchanged) == (3, 3, False)


def test_removal_takes_exactly_this_instances_rules():
    wanted = fw.rules("abc", MANAGER, PORTS, 4)
    current = ["-i eth1 -j DROP", *wanted, "-j RETURN"]
    done = fw.removal(current, "abc")
    assert done.script.splitlines() == ["*filter", "-D DOCKER-USER 4", "-D DOCKER-USER 3", "-D DOCKER-USER 2", "COMMIT"]
    assert fw.removal(["-j RETURN"], "abc").unchanged


def test_the_printed_commands_and_the_join_step():
    lines = fw.commands("abc", MANAGER, PORTS)
    assert lines[0].startswith("iptables -w -I DOCKER-USER 1 -p tcp -m conntrack --ctstate RELATED,ESTABLISHED")
    assert len(lines) == 3 and not any(line.startswith("ip6tables") for line in lines)
    assert len(fw.commands("abc", fw.parse_managers(["10.0.0.1", "fd00::1"]), PORTS)) == 6
    step = fw.node_step("abc", "10.0.0.1", PORTS)
    assert step == "lbsolo node:firewall --instance abc --manager 10.0.0.1 --ports 30000-30999"


def test_a_new_replica_takes_the_lowest_free_port_of_the_range():
    assert fw.pick_port(PORTS, []) == 30000
    assert fw.pick_port(PORTS, [30000, 30002, 8080]) == 30001
    with pytest.raises(Conflict, match=r"every port of LBSOLO_SWARM_PORTS \(30000-30001, 2 ports\) is published"):
        fw.pick_port(fw.PortRange(30000, 30001), [30000, 30001])


# ---- applying (lbsolo.engine_swarm_firewall) with stand-ins for iptables: the real one never runs here


def fake(stderr: str, status: int) -> list[str]:
    """A prefix that runs, instead of iptables, a program answering `stderr` and `status`."""
    return [sys.executable, "-c", f"import sys; sys.stderr.write({stderr!r}); sys.exit({status})"]


def test_a_node_without_iptables_is_told_how_to_install_it():
    from lbsolo.engine_swarm_firewall import FirewallError, NodeFirewall

    with pytest.raises(FirewallError, match=r"iptables is not installed on this node: install it \(Debian/Ubuntu"):
        NodeFirewall(prefix=["env", "PATH=/nonexistent"]).apply("abc", MANAGER, PORTS)


def test_not_root_and_no_docker_chain_are_told_the_fix():
    from lbsolo.engine_swarm_firewall import FirewallError, NodeFirewall

    denied = fake(
        "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n", 4
    )
    with pytest.raises(FirewallError, match=r"permission denied: run `lbsolo node:firewall` as root"):
        NodeFirewall(prefix=denied).apply("abc", MANAGER, PORTS)
    absent = fake("iptables: chain `DOCKER-USER' in table `filter' is incompatible, use 'nft' tool.\n", 1)
    with pytest.raises(FirewallError, match=r"no DOCKER-USER chain: is Docker running here, with its iptables rules"):
        NodeFirewall(prefix=absent).apply("abc", MANAGER, PORTS)


def cli(*args: str, path: str = "/nonexistent") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path}  # no iptables reachable: a slip would fail, not touch this host's firewall
    return subprocess.run([sys.executable, "-m", "lbsolo", *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_verb_prints_the_lines_and_refuses_bad_input_before_any_iptables():
    printed = cli("node:firewall", "--instance", "abc", "--manager", "10.0.0.1", "--print")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines() == [
        f"iptables -w -I DOCKER-USER {n} {r}" for n, r in enumerate(fw.rules("abc", MANAGER, PORTS, 4), 1)
    ]
    for args, says in [
        (("--instance", "abc", "--manager", "manager.example"), "--manager 'manager.example' is not an IP address"),
        (("--instance", "abc", "--manager", "10.0.0.1", "--ports", "2-1"), "--ports '2-1': ports are 1024 to 65535"),
        (("--instance", "a b", "--manager", "10.0.0.1"), "instance 'a b': letters, digits"),
    ]:
        done = cli("node:firewall", *args)
        assert done.returncode == 1 and says in " ".join(done.stderr.split()), done.stderr
