"""lbsolo.cli.dnssetup: the resolver setup plans, system detection, and applying into a temp root."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from lbsolo.cli.dnssetup import SYSTEMS, apply_plan, detect_system, setup_plan


def test_systemd_resolved_plan() -> None:
    plan = setup_plan("lbsolo.localhost", "127.0.0.1", 5354, "linux-resolved")
    [f] = plan.files
    assert f.path == "/etc/systemd/resolved.conf.d/lbsolo.conf"
    parser = configparser.ConfigParser()
    parser.read_string(f.content)
    assert dict(parser["Resolve"]) == {"dns": "127.0.0.1:5354", "domains": "~lbsolo.localhost"}
    assert plan.commands == (("systemctl", "restart", "systemd-resolved"),)
    assert plan.check == ("resolvectl", "query", "hello.lbsolo.localhost")
    assert "DNS=127.0.0.1:5354" in plan.text and "sudo systemctl restart systemd-resolved" in plan.text


def test_systemd_resolved_ipv6_needs_brackets_and_wildcard_bind_uses_loopback() -> None:
    plan = setup_plan("Apps.Example.", "::", 5300, "linux-resolved")
    assert "DNS=[::1]:5300\nDomains=~apps.example\n" in plan.files[0].content
    assert setup_plan("apps.example", "0.0.0.0", 53, "linux-resolved").server == "127.0.0.1"
    assert setup_plan("apps.example", "[fd00::5]", 53, "macos").server == "fd00::5"


def test_macos_plan() -> None:
    plan = setup_plan("lbsolo.localhost", "127.0.0.1", 5354, "macos")
    [f] = plan.files
    assert f.path == "/etc/resolver/lbsolo.localhost"
    assert [line for line in f.content.splitlines() if not line.startswith("#")] == [
        "nameserver 127.0.0.1",
        "port 5354",
    ]
    assert "/etc/resolver/lbsolo.localhost" in plan.text


def test_other_linux_plan_uses_dnsmasq() -> None:
    plan = setup_plan("shop.test", "192.168.1.5", 5354, "linux-other")
    assert plan.files[0].path == "/etc/dnsmasq.d/lbsolo.conf"
    assert "server=/shop.test/192.168.1.5#5354\n" in plan.files[0].content
    assert "server=/shop.test/192.168.1.5#5354" in plan.text
    assert "dig -p 5354 @192.168.1.5 hello.shop.test" in plan.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "127.0.0.1", 5354, "macos"), "domain"),
        (("a..b", "127.0.0.1", 5354, "macos"), "domain"),
        (("x.test", "127.0.0.1", 5354, "windows"), "system"),
        (("x.test", "127.0.0.1", 0, "macos"), "port"),
        (("x.test", "localhost", 5354, "macos"), "IP address"),
    ],
)
def test_invalid_arguments(args: tuple[str, str, int, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        setup_plan(*args)


def test_text_is_numbered_steps_for_every_system() -> None:
    for system in SYSTEMS:
        text = setup_plan("lbsolo.localhost", "127.0.0.1", 5354, system).text
        assert text.splitlines()[2].startswith("1. Create ")
        assert "2. Run: sudo " in text and "Check: " in text


def test_detect_system(tmp_path: Path) -> None:
    assert detect_system("darwin", tmp_path) == "macos"
    assert detect_system("linux", tmp_path) == "linux-other"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\n")
    assert detect_system("linux", tmp_path) == "linux-resolved"
    (tmp_path / "etc/resolv.conf").write_text("nameserver 192.168.1.1\n")
    assert detect_system("linux", tmp_path) == "linux-other"
    (tmp_path / "run/systemd/resolve").mkdir(parents=True)
    assert detect_system("linux", tmp_path) == "linux-resolved"
    assert detect_system() in SYSTEMS


@pytest.mark.parametrize("system", SYSTEMS)
def test_apply_writes_files_under_root_and_runs_commands_only_when_asked(tmp_path: Path, system: str) -> None:
    plan = setup_plan("lbsolo.localhost", "127.0.0.1", 5354, system)
    written = apply_plan(plan, tmp_path)
    assert written == [tmp_path / f.path.lstrip("/") for f in plan.files]
    for path, f in zip(written, plan.files, strict=True):
        assert path.read_text() == f.content
        assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in written[0].parent.iterdir()) == [written[0].name]  # no temp files left

    ran: list[tuple[str, ...]] = []
    apply_plan(plan, tmp_path, run=ran.append)  # idempotent: overwrites the same files
    assert ran == list(plan.commands)
    assert written[0].read_text() == plan.files[0].content
