"""Reaching add-ons on the real engine: expose/unexpose a Postgres on this machine, rotate the
credentials of a Postgres, a Redis and a MariaDB while an app that queries them on every
request is served without a failure, promote an attachment to DATABASE_URL, and a shell
through the CLI; bad input refused in one line with the database untouched.

Needs the stand-in images scripts/test-env seeds (postgres:15, redis:7, mariadb:10.11) and
psql on the host. The app under load (tests/integration/dbprobe/) speaks the three databases'
wire protocols with the standard library alone: its build reaches no package index.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.parse

import pytest

from .conftest import EXAMPLES, free_port

pytestmark = pytest.mark.docker

APP = "store"


def addon_container(docker_client, daemon, name: str):
    listed = docker_client.containers.list(
        all=True, filters={"label": [f"lbsolo.instance={daemon.instance}", f"lbsolo.addon={name}"]}
    )
    listed = [c for c in listed if "lbsolo.addon-scratch" not in c.labels]
    assert len(listed) == 1, listed
    return listed[0]


def web_env(docker_client, daemon, app: str) -> dict[str, str]:
    (web,) = docker_client.containers.list(
        filters={"label": [f"lbsolo.instance={daemon.instance}", f"lbsolo.app={app}", "lbsolo.process=web"]}
    )
    return dict(e.split("=", 1) for e in web.attrs["Config"]["Env"])


def psql(url: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", url, "-X", "-Atc", sql], capture_output=True, text=True, timeout=20, env={"PGCONNECT_TIMEOUT": "5"}
    )


def ok(out: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def refused(out: subprocess.CompletedProcess[str], message: str) -> None:
    assert out.returncode == 1, out.stdout + out.stderr
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def app(daemon):
    ok(daemon.cli("apps:create", APP))
    ok(daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", APP))
    yield APP
    daemon.cli("destroy", APP, "--yes")


@pytest.fixture(scope="module")
def pg(daemon, docker_client, app):
    ok(daemon.cli("addons:create", "postgres", "--app", app, "--name", "store-db", "--version", "15"))
    db = addon_container(docker_client, daemon, "store-db")
    code, said = db.exec_run(["psql", "-U", "store_db", "-d", "store_db", "-Atc",
                              "create table items (id int); insert into items values (1), (2), (3)"])  # fmt: skip
    assert code == 0, said
    return "store-db"


def host_url(daemon, docker_client, app: str, port: int, address: str = "127.0.0.1") -> str:
    url = urllib.parse.urlsplit(web_env(docker_client, daemon, app)["DATABASE_URL"])
    return url._replace(netloc=f"{url.username}:{url.password}@{address}:{port}").geturl()


def test_expose_on_loopback_answers_psql_from_the_host_and_unexpose_closes_it(daemon, docker_client, pg):
    before = addon_container(docker_client, daemon, pg).id
    port = free_port()
    out = ok(daemon.cli("addons:expose", pg, "--port", str(port)))
    assert f"@127.0.0.1:{port}/store_db" in out.stdout and "********" in out.stdout
    assert "PUBLIC" not in out.stderr
    db = addon_container(docker_client, daemon, pg)
    assert db.id != before and db.attrs["HostConfig"]["PortBindings"] == {
        "5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    }
    url = host_url(daemon, docker_client, APP, port)
    assert ok(psql(url, "select count(*) from items")).stdout.strip() == "3"  # the data came along
    wrong = url.replace(":" + urllib.parse.urlsplit(url).password + "@", ":wrong@")
    assert "password authentication failed" in psql(wrong, "select 1").stderr
    info = daemon.api_get(f"/api/addons/{pg}").json()
    assert info["exposed"] == {"address": "127.0.0.1", "port": port} and info["public"] is False
    assert daemon.get(APP).status_code == 200

    out = ok(daemon.cli("addons:expose", pg, "--port", str(port)))  # as it is already: no restart
    assert addon_container(docker_client, daemon, pg).id == db.id

    ok(daemon.cli("addons:unexpose", pg))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    db = addon_container(docker_client, daemon, pg)
    assert not db.attrs["HostConfig"]["PortBindings"]
    code, said = db.exec_run(["psql", "-U", "store_db", "-d", "store_db", "-Atc", "select count(*) from items"])
    assert (code, said.strip()) == (0, b"3")
    assert daemon.api_get(f"/api/addons/{pg}").json()["exposed"] == {}
    # The app's replica still reaches it by name, on its own network.
    (web,) = docker_client.containers.list(
        filters={"label": [f"lbsolo.instance={daemon.instance}", f"lbsolo.app={APP}", "lbsolo.process=web"]}
    )
    code, said = web.exec_run(["python3", "-c", "import socket; socket.create_connection(('store-db', 5432), 3)"])
    assert code == 0, said


def test_expose_refuses_bad_addresses_and_ports_and_leaves_the_database_running(daemon, docker_client, pg):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    before = addon_container(docker_client, daemon, pg).id
    try:
        cases = [
            (("addons:expose", "nothere"), "no add-on 'nothere'"),
            (("addons:expose", pg, "--address", "0.0.0.0"), "add --public"),
            (("addons:expose", pg, "--address", "localhost"), "'localhost' is not an IP address"),
            (("addons:expose", pg, "--address", "10.1.2.3", "--public"), "10.1.2.3 is not an address of this machine"),
            (("addons:expose", pg, "--port", "70000"), "port 70000 is out of range"),
            (("addons:expose", pg, "--port", "0"), "port 0 is out of range"),
            (("addons:expose", pg, "--port", str(taken.getsockname()[1])), "is in use"),
            (("addons:unexpose", pg), "store-db is not exposed"),
        ]
        for args, message in cases:
            refused(daemon.cli(*args), message)
    finally:
        taken.close()
    db = addon_container(docker_client, daemon, pg)
    assert db.id == before and db.status == "running"
    code, said = db.exec_run(["psql", "-U", "store_db", "-d", "store_db", "-Atc", "select count(*) from items"])
    assert (code, said.strip()) == (0, b"3")


def test_a_public_exposure_says_so_loudly(daemon, docker_client, pg):
    port = free_port()
    out = ok(daemon.cli("addons:expose", pg, "--address", "0.0.0.0", "--port", str(port), "--public"))
    assert "PUBLIC" in out.stderr and "reachable from other machines" in out.stderr
    assert daemon.api_get(f"/api/addons/{pg}").json()["public"] is True
    assert ok(psql(host_url(daemon, docker_client, APP, port), "select count(*) from items")).stdout.strip() == "3"
    ok(daemon.cli("addons:unexpose", pg))
