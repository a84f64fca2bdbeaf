"""The systemd unit service:install writes (checked by systemd-analyze where it exists), its
environment file, and doctor's rules, each from facts made up here."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from lbsolo import doctor, service
from lbsolo.config import Settings
from lbsolo.doctor import Facts, Level
from lbsolo.errors import InvalidInput, LbsoloError


def plan(tmp_path: Path, user: str | None = None) -> service.ServicePlan:
    return service.ServicePlan(
        command=[sys.executable, "-m", "lbsolo"], home=tmp_path / "home", user=user,
        unit_dir=tmp_path / "units", env_file=tmp_path / "lbsolo.env",
    )  # fmt: skip


def test_the_unit_runs_lbsolo_up_restarts_on_failure_and_writes_only_its_home(tmp_path):
    text = service.unit_text(plan(tmp_path))
    assert f"ExecStart={sys.executable} -m lbsolo up\n" in text
    home, env = tmp_path / "home", tmp_path / "lbsolo.env"
    for line in ("Restart=on-failure", "ProtectSystem=strict", f"ReadWritePaths={home}", "NoNewPrivileges=yes",
                 "StandardOutput=journal", f"EnvironmentFile=-{env}"):  # fmt: skip
        assert line + "\n" in text, line
    assert "User=" not in text  # root: the Docker socket is its own
    as_user = service.unit_text(plan(tmp_path, "deploy"))
    assert "User=deploy\n" in as_user and "SupplementaryGroups=docker\n" in as_user
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE\n" in as_user  # ports 80/443/53 without root


def test_a_path_with_spaces_is_quoted_in_exec_start(tmp_path):
    p = service.ServicePlan(command=["/opt/my tools/lbsolo"], home=tmp_path, unit_dir=tmp_path, env_file=tmp_path / "e")
    assert "ExecStart='/opt/my tools/lbsolo' up\n" in service.unit_text(p)


# scripts/test-env installs systemd-analyze; in CI its absence is a failure, not a skip.
@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not os.environ.get("CI"), reason="systemd-analyze is not installed"
)
def test_systemd_analyze_verify_accepts_the_unit_and_reports_a_broken_one(tmp_path):
    assert shutil.which("systemd-analyze"), "scripts/test-env installs it (Debian's systemd package)"
    p = plan(tmp_path)
    p.unit_dir.mkdir()
    p.unit_path.write_text(service.unit_text(p))
    assert service.verify(p.unit_path) == ""
    p.unit_path.write_text(service.unit_text(p).replace("Restart=on-failure", "Restart=sometimes"))
    assert "restart specifier" in service.verify(p.unit_path)


def test_install_writes_the_unit_and_settings_and_keeps_an_edited_settings_file(tmp_path, monkeypatch):
    monkeypatch.setattr(service, "systemd_running", lambda: False)
    p = plan(tmp_path)
    env = {"LBSOLO_DOMAIN": "apps.example.com", "LBSOLO_TOKEN": "secret", "LBSOLO_HOME": "/x", "PATH": "/bin",
           "LBSOLO_PROXY_PORT": "80"}  # fmt: skip
    done = service.install(p, env)
    assert any("not started" in line for line in done)
    assert p.unit_path.read_text() == service.unit_text(p)
    settings = p.env_file.read_text()
    assert 'LBSOLO_DOMAIN="apps.example.com"\n' in settings and 'LBSOLO_PROXY_PORT="80"\n' in settings
    assert "TOKEN" not in settings and "PATH" not in settings and "LBSOLO_HOME" not in settings
    assert oct(p.env_file.stat().st_mode & 0o777) == "0o600"
    p.env_file.write_text('LBSOLO_DOMAIN="edited"\n')
    assert any("kept" in line for line in service.install(p, env))
    assert p.env_file.read_text() == 'LBSOLO_DOMAIN="edited"\n'
    assert service.status(p)[0] is True
    done = service.uninstall(p)
    assert not p.unit_path.exists() and p.env_file.exists()
    assert service.status(p)[0] is False


def test_bad_input_to_install_is_refused_before_anything_is_written(tmp_path):
    for user in ("Root!", "a b", "-x", "x" * 40):
        with pytest.raises(InvalidInput):
            service.check_user(user)
    assert service.check_user("root") is None
    with pytest.raises(InvalidInput, match="newline"):
        service.env_text({"LBSOLO_DOMAIN": "a\nExecStart=/bin/evil"})
    assert service.env_text({"LBSOLO_DOMAIN": 'a"b\\c'}).endswith('LBSOLO_DOMAIN="a\\"b\\\\c"\n')
    if service.os.geteuid() != 0:
        with pytest.raises(LbsoloError, match="root"):
            service.install(service.ServicePlan(command=["x"], home=tmp_path), {})


# ---- doctor


def findings(facts: Facts, **settings: object) -> dict[str, doctor.Finding]:
    return {f.what: f for f in doctor.judge(facts, Settings(**settings))}  # type: ignore[arg-type]


def healthy() -> Facts:
    return Facts(
        engine_version="24.0",
        engine_info={"MemoryLimit": True, "CpuCfsQuota": True, "PidsLimit": True, "CgroupVersion": "2"},
        ports={"proxy": ("127.0.0.1", 8080, "free"), "dns (udp)": ("127.0.0.1", 5354, "free")},
        disk={"images": ("/var/lib/docker", 50 * 1024**3, 100 * 1024**3)},
        resolved={"doctor-probe.lbsolo.localhost": ["127.0.0.1", "::1"]},
    )  # fmt: skip


def test_doctor_on_a_healthy_machine_finds_nothing_wrong():
    got = findings(healthy())
    assert {f.level for f in got.values()} == {Level.OK}, got
    assert not doctor.failed(list(got.values()))


def test_doctor_names_each_problem_and_its_fix():
    facts = healthy()
    facts.engine_error, facts.engine_version, facts.engine_info = "connection refused", "", {}
    facts.ports["proxy"] = ("0.0.0.0", 80, "taken")
    facts.ports["dns (udp)"] = ("0.0.0.0", 53, "needs root or CAP_NET_BIND_SERVICE")
    facts.disk["images"] = ("/var/lib/docker", 1024**3, 100 * 1024**3)
    facts.resolved = {"doctor-probe.apps.example.com": []}
    got = findings(facts, domain="apps.example.com", proxy_host="0.0.0.0")
    assert got["docker engine"].level is Level.FAIL and "systemctl start docker" in got["docker engine"].fix
    assert got["port proxy"].level is Level.FAIL and ":80" in got["port proxy"].fix
    assert got["port dns (udp)"].level is Level.FAIL and "CAP_NET_BIND_SERVICE" in got["port dns (udp)"].fix
    assert got["disk (images)"].level is Level.WARN
    assert got["dns"].level is Level.WARN and got["dns"].fix == "sudo lbsolo dns:setup"
    assert got["public address"].level is Level.WARN and "LBSOLO_PUBLIC_IPV4" in got["public address"].fix
    assert doctor.failed(list(got.values()))


def test_doctor_counts_a_port_held_by_the_running_lbsolo_as_fine_and_a_limit_it_cannot_enforce_as_a_warning():
    facts = healthy()
    facts.ports["proxy"] = ("127.0.0.1", 8080, "taken")
    facts.daemon_pid, facts.daemon_ports = 1234, {"proxy": 8080}
    facts.engine_info["MemoryLimit"] = False
    got = findings(facts)
    assert got["port proxy"].level is Level.OK and "1234" in got["port proxy"].detail
    assert got["resource limits"].level is Level.WARN and "MemoryLimit" in got["resource limits"].detail


def test_doctor_sees_a_taken_port_on_this_machine(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert doctor._port_state("127.0.0.1", port, socket.SOCK_STREAM) == "taken"
    assert doctor._port_state("127.0.0.1", port, socket.SOCK_STREAM) == "free"
