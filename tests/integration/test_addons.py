"""Add-ons on the real engine: a Postgres and a Redis for an app, reached by the URL it is given,
from its own network only; bad input refused with nothing left behind; destroy removes the data.

Needs the stand-in images scripts/test-env seeds (postgres:15, redis:7); versions are explicit.
"""

from __future__ import annotations

import pytest

from .conftest import EXAMPLES

pytestmark = pytest.mark.docker

APP, OTHER = "shop", "intruder"


def labelled(docker_client, daemon, kind: str, **filters: str) -> list:
    labels = [f"lbsolo.instance={daemon.instance}", *(f"{k}={v}" for k, v in filters.items())]
    if kind == "container":
        return docker_client.containers.list(all=True, filters={"label": labels})
    return docker_client.volumes.list(filters={"label": labels})


def web_of(docker_client, daemon, app: str):
    listed = docker_client.containers.list(
        filters={"label": [f"lbsolo.instance={daemon.instance}", f"lbsolo.app={app}", "lbsolo.process=web"]}
    )
    assert len(listed) == 1, listed
    return listed[0]


def env_of(container) -> dict[str, str]:
    return dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])


PROBE = """
import socket, sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
try:
    socket.create_connection((u.hostname, u.port), timeout=2).close()
except OSError as e:
    sys.exit(f"{type(e).__name__}: {e}")
"""


@pytest.fixture(scope="module")
def apps(daemon):
    for name in (APP, OTHER):
        assert daemon.cli("apps:create", name).returncode == 0
        out = daemon.cli("deploy", str(EXAMPLES / "hello"), "--app", name)
        assert out.returncode == 0, out.stdout + out.stderr
    yield
    for name in (APP, OTHER):
        daemon.cli("destroy", name, "--yes")


def test_postgres_for_an_app_reached_by_its_url_and_only_from_its_network(daemon, docker_client, apps):
    before = daemon.api_get(f"/api/apps/{APP}").json()["release"]
    out = daemon.cli("addons:create", "postgres", "--app", APP, "--name", "shop-db", "--version", "15")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "shop-db is attached to shop" in out.stdout

    info = daemon.api_get("/api/addons/shop-db").json()
    assert (info["kind"], info["version"], info["status"]) == ("postgres", "15", "running")
    assert info["attachments"] == {APP: "DATABASE_URL"} and info["container"]["state"] == "running"
    assert "********" in info["url"] and info["credentials"]["password"] == "********"
    assert daemon.api_get(f"/api/apps/{APP}").json()["release"] != before  # a new release carries the URL
    assert daemon.api_get(f"/api/apps/{APP}/config").json()["DATABASE_URL"] == "********"

    web = web_of(docker_client, daemon, APP)
    url = env_of(web)["DATABASE_URL"]
    assert url.startswith("postgres://shop_db:") and url.endswith("@shop-db:5432/shop_db")
    code, said = web.exec_run(["python3", "-c", PROBE, url])
    assert code == 0, said  # the app reaches its database by name
    (addon,) = labelled(docker_client, daemon, "container", **{"lbsolo.addon": "shop-db"})
    # From its network address (the image trusts only the loopback), as the app connects.
    code, said = addon.exec_run(["psql", url, "-Atc", "select 40+2"])
    assert (code, said.strip()) == (0, b"42"), said  # the URL's credentials work over TCP
    wrong = url.replace("postgres://shop_db:", "postgres://shop_db:wrong")
    code, said = addon.exec_run(["psql", wrong, "-c", "select 1"])
    assert code != 0 and b"password authentication failed" in said, said

    intruder = web_of(docker_client, daemon, OTHER)
    code, said = intruder.exec_run(["python3", "-c", PROBE, url])
    assert code != 0, said  # another app's replica does not reach it

    listed = daemon.cli("addons").stdout
    assert "shop-db" in listed and "postgres" in listed


def test_redis_attached_to_a_second_app_under_another_name(daemon, docker_client, apps):
    out = daemon.cli("addons:create", "redis", "--app", APP, "--name", "cache", "--version", "7")
    assert out.returncode == 0, out.stdout + out.stderr
    url = env_of(web_of(docker_client, daemon, APP))["REDIS_URL"]
    (addon,) = labelled(docker_client, daemon, "container", **{"lbsolo.addon": "cache"})
    password = url.split(":")[2].split("@")[0]
    code, said = addon.exec_run(["redis-cli", "-a", password, "--no-auth-warning", "ping"])
    assert (code, said.strip()) == (0, b"PONG")
    code, said = addon.exec_run(["redis-cli", "-a", "wrong", "--no-auth-warning", "ping"])
    assert b"PONG" not in said

    out = daemon.cli("addons:attach", "cache", "--app", OTHER, "--as", "CACHE_URL")
    assert out.returncode == 0, out.stdout + out.stderr
    intruder = web_of(docker_client, daemon, OTHER)
    assert env_of(intruder)["CACHE_URL"] == url
    code, said = intruder.exec_run(["python3", "-c", PROBE, url])
    assert code == 0, said  # attached: now on that app's network too

    out = daemon.cli("addons:detach", "cache", "--app", OTHER)
    assert out.returncode == 0, out.stdout + out.stderr
    intruder = web_of(docker_client, daemon, OTHER)
    assert "CACHE_URL" not in env_of(intruder)
    assert daemon.api_get("/api/addons/cache").json()["attachments"] == {APP: "REDIS_URL"}


def test_mariadb_hands_out_a_mysql_url_whose_user_can_query(daemon, docker_client, apps):
    out = daemon.cli("addons:create", "mariadb", "--app", OTHER, "--name", "ledger", "--version", "10.11")
    assert out.returncode == 0, out.stdout + out.stderr
    url = env_of(web_of(docker_client, daemon, OTHER))["DATABASE_URL"]
    assert url.startswith("mysql://ledger:") and url.endswith("@ledger:3306/ledger")
    password = url.split(":")[2].split("@")[0]
    (addon,) = labelled(docker_client, daemon, "container", **{"lbsolo.addon": "ledger"})
    query = ["mariadb", "-h", "ledger", "-u", "ledger", f"--password={password}", "ledger", "-N", "-e", "select 6*7"]
    code, said = addon.exec_run(query)
    assert (code, said.strip()) == (0, b"42"), said
    code, said = addon.exec_run([*query[:4], "--password=wrong", *query[5:]])
    assert code != 0 and b"Access denied" in said, said
    out = daemon.cli("addons:destroy", "ledger", "--confirm", "ledger", "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DATABASE_URL" not in daemon.api_get(f"/api/apps/{OTHER}/config").json()


def test_bad_input_is_refused_in_one_line_and_leaves_nothing(daemon, docker_client, apps):
    cases = [
        (("addons:create", "mongo", "--app", APP), "unknown add-on kind 'mongo'"),
        (("addons:create", "postgres", "--app", "nope", "--version", "15"), "unknown app 'nope'"),
        (("addons:create", "postgres", "--app", OTHER, "--name", APP, "--version", "15"), "is an app"),
        (("addons:create", "postgres", "--app", APP, "--name", "Bad_Name", "--version", "15"), "invalid add-on name"),
        (("addons:create", "postgres", "--app", APP, "--version", "latest"), "invalid postgres version"),
        (("addons:create", "postgres", "--app", APP, "--name", "x-db", "--version", "15"), "already has DATABASE_URL"),
        (("addons:create", "postgres", "--app", OTHER, "--name", "ghost", "--version", "99"), "no image postgres:99"),
        (("addons:attach", "nothere", "--app", APP), "no add-on 'nothere'"),
        (("addons:attach", "shop-db", "--app", "nope"), "unknown app 'nope'"),
        (("addons:destroy", "shop-db"), "--confirm shop-db"),
    ]
    for args, message in cases:
        out = daemon.cli(*args)
        assert out.returncode == 1, (args, out.stdout)
        assert message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    names = {a["name"] for a in daemon.api_get("/api/addons").json()}
    assert names <= {"shop-db", "cache"}
    for name in ("ghost", "x-db", APP):
        assert labelled(docker_client, daemon, "container", **{"lbsolo.addon": name}) == []
        assert labelled(docker_client, daemon, "volume", **{"lbsolo.addon": name}) == []


def test_destroy_refuses_while_attached_then_removes_container_volume_and_url(daemon, docker_client, apps):
    for name in ("shop-db", "cache"):
        out = daemon.cli("addons:destroy", name, "--confirm", name)
        assert out.returncode == 1 and "attached to shop" in out.stderr, out.stderr
        out = daemon.cli("addons:destroy", name, "--confirm", name, "--detach")
        assert out.returncode == 0, out.stdout + out.stderr
        assert labelled(docker_client, daemon, "container", **{"lbsolo.addon": name}) == []
        assert labelled(docker_client, daemon, "volume", **{"lbsolo.addon": name}) == []
    config = daemon.api_get(f"/api/apps/{APP}/config").json()
    assert "DATABASE_URL" not in config and "REDIS_URL" not in config
    assert daemon.api_get("/api/addons").json() == []
    assert daemon.get(APP).status_code == 200  # the app serves on through all of it
