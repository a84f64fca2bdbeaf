"""The one-file lbsolo (scripts/build-binary's dist/lbsolo) on the real engine, not the venv:
`up`, `apps:create`, `deploy examples/hello`, a 200 through the proxy, a DNS answer, `version`.

The file is built, or reused while it is newer than its sources (the script decides). It runs with
a cache directory of its own (SHIV_ROOT), so its first-run unpacking is part of the test. Always
runs in CI; LBSOLO_SKIP_BINARY=1 skips it elsewhere.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from lbsolo import __version__
from tests.integration.conftest import EXAMPLES, ROOT, Daemon, remove_instance

BINARY = ROOT / "dist" / "lbsolo"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = pytest.mark.skipif(
    not IN_CI and os.environ.get("LBSOLO_SKIP_BINARY", "") not in ("", "0"),
    reason="LBSOLO_SKIP_BINARY is set (the one-file test always runs in CI)",
)


@pytest.fixture(scope="module")
def binary() -> Path:
    out = subprocess.run(
        [str(ROOT / "scripts" / "build-binary")], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert str(BINARY) in out.stdout  # it says where the file is
    return BINARY


@pytest.fixture
def binary_daemon(docker_client, binary: Path, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(home=tmp_path / "home", command=[str(binary)], extra_env={"SHIV_ROOT": str(tmp_path / "shiv")})
    first = d.cli("version", timeout=120)  # the first run unpacks the archive into SHIV_ROOT
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.strip() == f"lbsolo {__version__}"
    try:
        d.start()
        yield d
    finally:
        d.stop()
        if (d.home / "token").exists():
            remove_instance(docker_client, d.instance)


@pytest.mark.timeout(900)
def test_the_built_file_runs_up_deploys_hello_and_answers_through_proxy_and_dns(binary_daemon: Daemon):
    d = binary_daemon
    assert d.runtime()  # daemon.json written by the file's own `up`
    out = d.cli("apps:create", "binhello")
    assert out.returncode == 0, out.stdout + out.stderr
    out = d.cli("deploy", str(EXAMPLES / "hello"), "--app", "binhello")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Deployed binhello v1" in out.stdout

    r = d.get("binhello")
    assert r.status_code == 200
    assert "release=v1" in r.text

    q = dns.message.make_query("binhello.lbsolo.localhost", dns.rdatatype.A)
    answer = dns.query.udp(q, "127.0.0.1", port=d.dns_port, timeout=3)
    assert [rr.address for rrset in answer.answer for rr in rrset] == ["127.0.0.1"]

    apps = d.cli("apps")
    assert apps.returncode == 0 and "binhello" in apps.stdout
    out = d.cli("version")
    assert out.returncode == 0 and out.stdout.strip() == f"lbsolo {__version__}"
