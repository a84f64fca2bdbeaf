"""Reaching add-ons on the real engine: expose/unexpose a Postgres on this machine, rotate the
credentials of a Postgres, a Redis and a MariaDB while an app that queries them on every
request is served without a failure, promote an attachment to DATABASE_URL, and a shell
through the CLI; bad input refused in one line with the database untouched.

Needs the stand-in images scripts/test-env seeds (postgres:15, redis:7, mariadb:10.11) and
psql on the host. The app under load (tests/integration/dbprobe/) speaks the three databases'
wire protocols with the standard library alone: its build reaches no package index.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import socket
import struct
import subprocess
import termios
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from .conftest import EXAMPLES, ROOT, free_port

pytestmark = pytest.mark.docker

APP, LOADER = "store", "loader"
PROBE_APP = Path(__file__).parent / "dbprobe"
VARS = ("DATABASE_URL", "REDIS_URL", "MYSQL_URL")
DENIED = ("authentication failed", "not permitted to log in", "Access denied", "WRONGPASS")


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


# ---------------------------------------------------------------- credentials:rotate


class Load:
    """Requests through the proxy to the app, each of which queries one of its databases afresh."""

    def __init__(self, daemon, app: str, variables: tuple[str, ...], threads: int = 3) -> None:
        self.daemon, self.app, self.variables = daemon, app, variables
        self.count, self.failures = 0, []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def run(self, offset: int) -> None:
        i = offset
        while not self.stopping.is_set():
            var = self.variables[i % len(self.variables)]
            i += 1
            try:
                r = self.daemon.get(self.app, "/q", params={"var": var})
                if r.status_code != 200 or not r.text.startswith("ok"):
                    self.failures.append((var, r.status_code, r.text.strip()))
            except httpx.HTTPError as e:
                self.failures.append((var, "error", repr(e)))
            self.count += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(15)


@pytest.fixture(scope="module")
def loader(daemon):
    ok(daemon.cli("apps:create", LOADER))
    ok(daemon.cli("deploy", str(PROBE_APP), "--app", LOADER))
    ok(daemon.cli("addons:create", "postgres", "--app", LOADER, "--name", "loader-db", "--version", "15"))
    ok(daemon.cli("addons:create", "redis", "--app", LOADER, "--name", "loader-cache", "--version", "7"))
    ok(daemon.cli("addons:create", "mariadb", "--app", LOADER, "--name", "loader-maria", "--version", "10.11",
                  "--as", "MYSQL_URL"))  # fmt: skip
    for var in VARS:
        r = daemon.get(LOADER, "/q", params={"var": var})
        assert r.status_code == 200, r.text
    yield LOADER
    for name in ("loader-db", "loader-cache", "loader-maria"):
        daemon.cli("addons:destroy", name, "--confirm", name, "--detach")
    daemon.cli("destroy", LOADER, "--yes")


def tried(daemon, url: str) -> httpx.Response:
    return daemon.get(LOADER, "/try", params={"url": url})


def test_rotation_moves_the_app_without_a_failed_request_then_the_old_credentials_stop_working(
    daemon, docker_client, loader
):
    old = {var: web_env(docker_client, daemon, LOADER)[var] for var in VARS}
    with Load(daemon, LOADER, VARS) as load:
        time.sleep(1)
        for name in ("loader-db", "loader-cache", "loader-maria"):
            out = ok(daemon.cli("addons:credentials:rotate", name))
            assert "credentials are rotated (loader moved" in out.stdout, out.stdout
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert load.count > 60, load.count
    new = {var: web_env(docker_client, daemon, LOADER)[var] for var in VARS}
    for var in VARS:
        assert new[var] != old[var]
        assert tried(daemon, new[var]).text.startswith("ok"), var
        r = tried(daemon, old[var])
        assert r.status_code == 500 and any(d in r.text for d in DENIED), (var, r.text)
    assert new["DATABASE_URL"].startswith("postgres://loader_db_2:")
    assert new["MYSQL_URL"].startswith("mysql://loader_maria_2:")
    assert new["REDIS_URL"].startswith("redis://default:")
    # The Postgres bootstrap user cannot be dropped: it is locked instead.
    db = addon_container(docker_client, daemon, "loader-db")
    roles = "select rolname, rolcanlogin, rolsuper from pg_roles where rolname like 'loader%' order by 1"
    code, said = db.exec_run(["psql", "-U", "loader_db_2", "-d", "loader_db", "-Atc", roles])
    assert (code, said.decode().split()) == (0, ["loader_db|f|t", "loader_db_2|t|t"]), said
    maria = addon_container(docker_client, daemon, "loader-maria")
    root = urllib.parse.urlsplit(new["MYSQL_URL"]).password
    users = "select user from mysql.user where user like 'loader%'"
    code, said = maria.exec_run(["mariadb", "-u", "root", f"-p{root}", "-N", "-e", users])
    assert (code, said.decode().split()) == (0, ["loader_maria_2"]), said
    old_root = urllib.parse.urlsplit(old["MYSQL_URL"]).password
    code, said = maria.exec_run(["mariadb", "-h", "loader-maria", "-u", "root", f"-p{old_root}", "-e", "select 1"])
    assert code != 0 and b"Access denied" in said, said  # root's password moved on too
    info = daemon.api_get("/api/addons/loader-db").json()
    assert info["credentials"]["user"] == "loader_db_2" and info["rotating"] is False
    assert "retiring_user" not in info["credentials"]
    # A restart keeps the new Redis password (the ACL file) and not the old one.
    cache = addon_container(docker_client, daemon, "loader-cache")
    cache.restart(timeout=5)
    deadline = time.monotonic() + 20
    while not tried(daemon, new["REDIS_URL"]).text.startswith("ok"):
        assert time.monotonic() < deadline, tried(daemon, new["REDIS_URL"]).text
        time.sleep(0.3)
    assert tried(daemon, old["REDIS_URL"]).status_code == 500


def test_a_second_rotation_drops_the_user_the_first_made_and_keeps_what_it_owned(daemon, docker_client, loader):
    db = addon_container(docker_client, daemon, "loader-db")
    make = "create table notes (id int); insert into notes values (1), (2)"
    code, said = db.exec_run(["psql", "-U", "loader_db_2", "-d", "loader_db", "-Atc", make])
    assert code == 0, said
    with Load(daemon, LOADER, ("DATABASE_URL",), threads=2) as load:
        ok(daemon.cli("addons:credentials:rotate", "loader-db"))
    assert load.failures == [] and load.count > 10, (load.count, load.failures[:5])
    who = "select tableowner from pg_tables where tablename = 'notes'; select count(*) from notes;"
    who += "select count(*) from pg_roles where rolname = 'loader_db_2'"
    code, said = db.exec_run(["psql", "-U", "loader_db_3", "-d", "loader_db", "-Atc", who])
    assert (code, said.decode().split()) == (0, ["loader_db_3", "2", "0"]), said


def test_rotation_refuses_an_unknown_or_stopped_add_on_and_changes_nothing(daemon, docker_client, loader):
    refused(daemon.cli("addons:credentials:rotate", "nothere"), "no add-on 'nothere'")
    before = web_env(docker_client, daemon, LOADER)["REDIS_URL"]
    # Paused, not stopped: the daemon starts a stopped add-on again within a second (heal), and the
    # engine can run no command in a paused container.
    cache = addon_container(docker_client, daemon, "loader-cache")
    cache.pause()
    try:
        refused(daemon.cli("addons:credentials:rotate", "loader-cache"), "container is paused")
    finally:
        cache.unpause()
    assert web_env(docker_client, daemon, LOADER)["REDIS_URL"] == before
    assert daemon.api_get("/api/addons/loader-cache").json()["rotating"] is False


# ---------------------------------------------------------------- promote


def test_promote_swaps_which_attachment_is_database_url_with_no_failed_request(daemon, docker_client, loader, app):
    refused(daemon.cli("addons:promote", "loader-db", "--app", LOADER), "already is loader's DATABASE_URL")
    refused(daemon.cli("addons:promote", "nothere", "--app", LOADER), "no add-on 'nothere'")
    refused(daemon.cli("addons:promote", "loader-cache", "--app", "nope"), "unknown app 'nope'")
    refused(daemon.cli("addons:promote", "loader-db", "--app", app), "loader-db is not attached to store")
    before = web_env(docker_client, daemon, LOADER)
    with Load(daemon, LOADER, VARS, threads=2) as load:
        ok(daemon.cli("addons:promote", "loader-maria", "--app", LOADER))
    assert load.failures == [], load.failures[:5]
    env = web_env(docker_client, daemon, LOADER)
    assert env["DATABASE_URL"] == before["MYSQL_URL"] and env["MYSQL_URL"] == before["DATABASE_URL"]
    assert daemon.api_get("/api/addons/loader-maria").json()["attachments"] == {LOADER: "DATABASE_URL"}
    assert daemon.api_get("/api/addons/loader-db").json()["attachments"] == {LOADER: "MYSQL_URL"}
    assert daemon.get(LOADER, "/q", params={"var": "DATABASE_URL"}).text.startswith("ok 42")

    ok(daemon.cli("addons:promote", "loader-db", "--app", LOADER))
    env = web_env(docker_client, daemon, LOADER)
    assert env["DATABASE_URL"] == before["DATABASE_URL"] and env["MYSQL_URL"] == before["MYSQL_URL"]


# ---------------------------------------------------------------- shell


def shell(daemon, name: str, given: str) -> subprocess.CompletedProcess[str]:
    argv = daemon.cli_argv("addons:shell", name)
    return subprocess.run(argv, input=given, env=daemon.env, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_shell_runs_each_kinds_client_on_what_is_piped_in(daemon, loader):
    out = ok(shell(daemon, "loader-db", "select 40 + 2 as answer;\n"))
    assert "answer" in out.stdout and "42" in out.stdout, out.stdout
    out = ok(shell(daemon, "loader-cache", "PING\nSET k v\nGET k\n"))
    assert out.stdout.split() == ["PONG", "OK", "v"], out.stdout
    out = ok(shell(daemon, "loader-maria", "select 6 * 7;\n"))
    assert "42" in out.stdout, out.stdout
    big = ok(
        shell(daemon, "loader-db", "\\pset format unaligned\n\\pset tuples_only on\nselect repeat('x', 400000);\n")
    )
    assert big.stdout.strip().endswith("x" * 400000), big.stdout[-200:]


def test_the_shell_passes_the_clients_exit_code_and_errors(daemon, loader):
    out = shell(daemon, "loader-maria", "select * from no_such_table;\n")
    assert out.returncode == 1 and "doesn't exist" in out.stderr, out.stdout + out.stderr
    out = shell(daemon, "loader-db", "\\set ON_ERROR_STOP on\nselect nope;\nselect 1;\n")
    assert out.returncode == 3 and 'column "nope" does not exist' in out.stderr, out.stdout + out.stderr
    refused(shell(daemon, "nothere", "select 1;\n"), "no add-on 'nothere'")


def test_the_shell_is_interactive_its_answers_come_while_its_input_is_still_open(daemon, loader):
    argv = daemon.cli_argv("addons:shell", "loader-db")
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen(argv, env=daemon.env, cwd=ROOT, **pipes) as proc:
        try:
            assert proc.stdin is not None and proc.stdout is not None
            for question, answer in ((b"select 'first' || 1;\n", b"first1"), (b"select 'then' || 2;\n", b"then2")):
                proc.stdin.write(question)
                proc.stdin.flush()
                seen = b""
                deadline = time.monotonic() + 15
                while answer not in seen:
                    assert time.monotonic() < deadline, seen
                    seen += proc.stdout.read1(4096)
            proc.stdin.close()
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def read_some(fd: int) -> bytes:
    """What the terminal has for us within 0.2 s (a bare read would block for good on a quiet one)."""
    ready, _, _ = select.select([fd], [], [], 0.2)
    if not ready:
        return b""
    with contextlib.suppress(OSError):
        return os.read(fd, 4096)
    return b""


def test_on_a_terminal_the_shell_is_the_clients_own_prompt(daemon, loader):
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # else psql pages its answers
    try:
        argv = daemon.cli_argv("addons:shell", "loader-db")
        with subprocess.Popen(argv, env=daemon.env, cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal) as proc:
            try:
                seen = b""
                for question, answer in ((b"", b"loader_db=#"), (b"select 6 * 7 as answer;\r", b"42")):
                    os.write(main, question)
                    deadline = time.monotonic() + 15
                    while answer not in seen:
                        assert time.monotonic() < deadline, seen
                        seen += read_some(main)
                os.write(main, b"\\q\r")
                deadline = time.monotonic() + 15
                while proc.poll() is None and time.monotonic() < deadline:
                    seen += read_some(main)
                assert proc.wait(1) == 0, seen
            finally:
                if proc.poll() is None:
                    proc.kill()
    finally:
        os.close(main)
        os.close(terminal)
