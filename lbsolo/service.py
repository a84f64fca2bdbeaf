"""lbsolo as a systemd service: the unit and its environment file, and installing them.

`unit_text` and `env_text` are pure (what the files say); `install`, `uninstall` and `status`
write them and drive systemctl, saying clearly what they could not do (no systemd as PID 1, not
root) instead of half-doing it. The unit runs `lbsolo up` as root or as a user in the docker
group, restarts it on failure, logs to the journal, and keeps a hardening set that still lets it
reach the Docker socket, bind ports 80/443/53 and write only $LBSOLO_HOME.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lbsolo.errors import InvalidInput, LbsoloError

UNIT_NAME = "lbsolo.service"
UNIT_DIR = Path("/etc/systemd/system")
ENV_FILE = Path("/etc/lbsolo/lbsolo.env")
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Settings a service should not take from the shell that installed it: paths of that shell's
# session, or the CLI's own (the API URL and token the CLI uses to reach a daemon).
NOT_CARRIED = {"LBSOLO_API_URL", "LBSOLO_TOKEN"}


@dataclass(frozen=True)
class ServicePlan:
    """What service:install writes: where, running what, as whom."""

    command: list[str]  # argv that starts the daemon, without "up"
    home: Path
    user: str | None = None  # None: root
    unit_dir: Path = UNIT_DIR
    env_file: Path = ENV_FILE

    @property
    def unit_path(self) -> Path:
        return self.unit_dir / UNIT_NAME


def this_command() -> list[str]:
    """How to run this lbsolo again: the one-file binary itself, or this Python with `-m lbsolo`."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    # A zipapp (scripts/build-binary's dist/lbsolo, shiv): argv[0] is the archive, whatever its name.
    if argv0 is not None and argv0.is_file() and (argv0.suffix == ".pyz" or zipfile.is_zipfile(argv0)):
        return [str(argv0.resolve())]
    return [sys.executable, "-m", "lbsolo"]


def check_user(user: str | None) -> str | None:
    if user is None or user == "root":
        return None
    if not USER_NAME.match(user):
        raise InvalidInput(f"invalid user name {user!r}")
    return user


def _exec(argv: list[str]) -> str:
    # systemd splits ExecStart= like a shell would; quote each word that needs it.
    return " ".join(shlex.quote(a) for a in argv)


def unit_text(plan: ServicePlan) -> str:
    user_lines = (
        f"User={plan.user}\nGroup={plan.user}\nSupplementaryGroups=docker\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n"
        if plan.user
        else ""
    )
    return f"""\
# Written by `lbsolo service:install`; `lbsolo service:uninstall` removes it.
[Unit]
Description=lbsolo: apps from code on this server (API, web UI, proxy, DNS)
Documentation=https://github.com/lbsolo/lbsolo
After=network-online.target docker.service
Wants=network-online.target docker.service

[Service]
# notify: the daemon says when it serves; on a reload (lbsolo restart) the new process says
# so with its pid (MAINPID) before the old one exits, and the service stays up.
Type=notify
NotifyAccess=all
{user_lines}EnvironmentFile=-{plan.env_file}
Environment=LBSOLO_HOME={plan.home}
# The one-file build unpacks itself once per version: into the one writable place (ProtectSystem=strict).
Environment=SHIV_ROOT={plan.home}/shiv
ExecStart={_exec([*plan.command, "up"])}
ExecReload=/bin/kill -USR2 $MAINPID
Restart=on-failure
RestartSec=2
# The daemon drains the proxy and stops its parts on SIGTERM; give it time to.
TimeoutStopSec=45
KillMode=mixed
LimitNOFILE=65536
StandardOutput=journal
StandardError=journal
SyslogIdentifier=lbsolo

# Hardening that keeps what lbsolo needs: the Docker socket, binding low ports, its home.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={plan.home}
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def env_text(environ: dict[str, str]) -> str:
    """The LBSOLO_* settings of `environ` (the installing shell's), one per line, for EnvironmentFile=."""
    lines = ["# lbsolo's settings for the service (see the README's settings table); edit, then:",
             "#   systemctl restart lbsolo"]  # fmt: skip
    for key in sorted(environ):
        if not key.startswith("LBSOLO_") or key in NOT_CARRIED or key == "LBSOLO_HOME":
            continue
        value = environ[key]
        if "\n" in value:
            raise InvalidInput(f"{key} holds a newline; an environment file cannot carry it")
        lines.append(f'{key}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"')
    return "\n".join(lines) + "\n"


def systemd_running() -> bool:
    """systemd is PID 1 (not so in most containers and CI machines)."""
    return Path("/run/systemd/system").is_dir()


def verify(unit_path: Path) -> str:
    """`systemd-analyze verify` of a unit: its complaints, or "" (also when the tool is missing)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return ""
    out = subprocess.run([tool, "verify", str(unit_path)], capture_output=True, text=True, timeout=60)
    # Complaints about other units on this machine are not ours to report.
    ours = [line for line in (out.stdout + out.stderr).splitlines() if unit_path.name in line]
    return "\n".join(ours) if out.returncode != 0 or ours else ""


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(plan: ServicePlan, environ: dict[str, str], *, start: bool = True) -> list[str]:
    """Write the unit and environment file, verify the unit, enable and start it. Returns what was done."""
    if plan.unit_dir == UNIT_DIR and os.geteuid() != 0:
        raise LbsoloError("service:install writes /etc/systemd/system: run it as root (sudo)")
    done: list[str] = []
    plan.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if plan.user:
        shutil.chown(plan.home, plan.user, plan.user)
    _write(plan.unit_path, unit_text(plan), 0o644)
    done.append(f"wrote {plan.unit_path}")
    if not plan.env_file.exists():
        _write(plan.env_file, env_text(environ), 0o600)
        done.append(f"wrote {plan.env_file} (the LBSOLO_* settings of this shell)")
    else:
        done.append(f"kept {plan.env_file} as it is")
    complaints = verify(plan.unit_path)
    if complaints:
        raise LbsoloError(f"systemd-analyze verify {plan.unit_path} complains:\n{complaints}")
    if not systemd_running():
        done.append("systemd is not running here (PID 1 is something else): the unit is written, not started")
        return done
    for args in (("daemon-reload",), ("enable", "--now" if start else "--quiet", UNIT_NAME)):
        out = _systemctl(*args)
        if out.returncode != 0:
            raise LbsoloError(f"systemctl {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    done.append(f"enabled {UNIT_NAME}" + (" and started it (logs: journalctl -u lbsolo -f)" if start else ""))
    return done


def uninstall(plan: ServicePlan) -> list[str]:
    """Stop and disable the service and remove its unit; $LBSOLO_HOME and the environment file stay."""
    done: list[str] = []
    if systemd_running() and plan.unit_path.exists():
        out = _systemctl("disable", "--now", UNIT_NAME)
        if out.returncode != 0:
            raise LbsoloError(f"systemctl disable --now {UNIT_NAME}: {out.stderr.strip()}")
        done.append(f"stopped and disabled {UNIT_NAME}")
    if plan.unit_path.exists():
        plan.unit_path.unlink()
        done.append(f"removed {plan.unit_path}")
        if systemd_running():
            _systemctl("daemon-reload")
    else:
        done.append(f"no {plan.unit_path}: nothing to remove")
    done.append(f"kept {plan.home} (apps' data) and {plan.env_file} (settings)")
    return done


def status(plan: ServicePlan) -> tuple[bool, str]:
    """(installed, what systemd says about it)."""
    if not plan.unit_path.exists():
        return False, f"not installed ({plan.unit_path} does not exist): sudo lbsolo service:install"
    if not systemd_running():
        return True, f"installed at {plan.unit_path}; systemd is not running here, so it is not managed"
    out = _systemctl("status", "--no-pager", "--lines=5", UNIT_NAME)
    return True, (out.stdout or out.stderr).strip()
