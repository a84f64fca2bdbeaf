"""The database images that scripts/test-env seeds when no registry answers — postgres:15,
postgres:17, redis:7, mariadb:10.11, built from Debian's packages — keep the official images'
documented contract: the environment variables, the data directories, the users, the ports, the
client tools, password authentication for other containers. The add-ons rely on that contract
and nothing else, so these tests also run unchanged against the official images.

Every container and network made here carries a test instance label and is removed afterwards,
anonymous data volumes included.
"""

from __future__ import annotations

import io
import tarfile
import time
import uuid
from collections.abc import Iterator

import docker
import pytest
from docker.models.containers import Container

from .conftest import remove_instance

pytestmark = pytest.mark.docker

# Passwords a careless entrypoint would mangle: quotes, a backslash, a space, shell syntax.
PG_PASSWORD = "p'w d\"$x\\1"
MARIADB_PASSWORD = "m'a \\ria$(db)"
MARIADB_ROOT_PASSWORD = "r00t'\"pw"
REDIS_PASSWORD = "redis-s3cret"


class Lab:
    """Containers of one test on a network of their own, all labelled for removal."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.instance = f"test-standins-{uuid.uuid4().hex[:10]}"
        self.labels = {"lbsolo.instance": self.instance, "lbsolo.test": "standins"}
        self.network = client.networks.create(self.instance, labels=self.labels)

    def start(self, image: str, role: str, **kw) -> Container:
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"image {image} is missing: run scripts/test-env to seed it")
        return self.client.containers.run(
            image, name=f"{self.instance}-{role}", network=self.network.name, labels=self.labels, detach=True, **kw
        )

    def client_of(self, image: str) -> Container:
        """A second container of the same image, to reach a server the way another app would."""
        return self.start(image, "client", command=["sleep", "infinity"])

    def remove(self) -> None:
        for c in self.client.containers.list(all=True, filters={"label": f"lbsolo.instance={self.instance}"}):
            c.remove(force=True, v=True)  # v: the anonymous volume of the image's VOLUME too
        remove_instance(self.client, self.instance)


@pytest.fixture
def lab(docker_client) -> Iterator[Lab]:
    lab = Lab(docker_client)
    try:
        yield lab
    finally:
        lab.remove()


def run(container: Container, *cmd: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    code, out = container.exec_run(list(cmd), environment=env or {})
    return code, out.decode(errors="replace").strip()


def wait_ready(container: Container, *probe: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run(container, *probe)[0] == 0:
            return
        container.reload()
        if container.status != "running":
            pytest.fail(f"{container.name} exited before it was ready:\n{container.logs().decode()}")
        time.sleep(0.2)
    pytest.fail(f"{container.name} not ready in {timeout}s ({' '.join(probe)}):\n{container.logs().decode()}")


def wait_exit(container: Container, timeout: float = 60.0) -> int:
    return container.wait(timeout=timeout)["StatusCode"]


def put_file(container: Container, path: str, data: bytes, mode: int = 0o644) -> None:
    directory, name = path.rsplit("/", 1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
    assert container.put_archive(directory, buf.getvalue())


# ------------------------------------------------------------------ postgres


def start_postgres(lab: Lab, major: int, role: str = "db", **env: str) -> Container:
    server = lab.start(f"postgres:{major}", role, environment=env)
    user = env.get("POSTGRES_USER", "postgres")
    # Over TCP: the set-up server listens on its socket only, so this waits for the real one.
    wait_ready(server, "pg_isready", "-h", "127.0.0.1", "-U", user, "-d", env.get("POSTGRES_DB", user))
    return server


def psql(client: Container, server: Container, sql: str, password: str, user: str = "shop", db: str = "shopdb"):
    return run(
        client,
        *("psql", "-h", server.name, "-U", user, "-d", db, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql),
        env={"PGPASSWORD": password},
    )


@pytest.mark.parametrize("major", [15, 17])
def test_postgres_takes_the_official_environment_and_authenticates_other_hosts(lab, major):
    env = {"POSTGRES_USER": "shop", "POSTGRES_PASSWORD": PG_PASSWORD, "POSTGRES_DB": "shopdb"}
    server = start_postgres(lab, major, **env)
    client = lab.client_of(f"postgres:{major}")

    who = "select current_user, current_database(), current_setting('server_version_num')::int / 10000"
    code, out = psql(client, server, who, PG_PASSWORD)
    assert (code, out) == (0, f"shop|shopdb|{major}")
    code, out = psql(client, server, "select 1", "not-the-password")
    assert code != 0 and 'password authentication failed for user "shop"' in out
    code, out = psql(client, server, "select 1", PG_PASSWORD, user="intruder")
    assert code != 0 and "password authentication failed" in out

    # the superuser is POSTGRES_USER, its password stored as SCRAM, every address listened on
    sql = (
        "select rolsuper, rolpassword like 'SCRAM-SHA-256$%', current_setting('listen_addresses'),"
        " current_setting('password_encryption') from pg_authid where rolname = 'shop'"
    )
    assert psql(client, server, sql, PG_PASSWORD) == (0, "t|t|*|scram-sha-256")
    collation = "select datcollate from pg_database where datname = 'shopdb'"
    assert psql(client, server, collation, PG_PASSWORD) == (0, "en_US.utf8")
    code, hba = run(server, "cat", "/var/lib/postgresql/data/pg_hba.conf")
    assert hba.splitlines()[-1].split() == ["host", "all", "all", "all", "scram-sha-256"]

    # the server runs as postgres (uid 999) on its data directory, the image's volume
    assert run(server, "id", "-u", "postgres") == (0, "999")
    assert run(server, "stat", "-c", "%u %a", "/var/lib/postgresql/data") == (0, "999 700")
    assert run(server, "sh", "-c", "cat /proc/1/status | grep ^Uid")[1].split()[1] == "999"
    image = lab.client.images.get(f"postgres:{major}").attrs["Config"]
    assert image["Cmd"] == ["postgres"] and "5432/tcp" in image["ExposedPorts"]
    assert "/var/lib/postgresql/data" in image["Volumes"]
    assert "PGDATA=/var/lib/postgresql/data" in image["Env"]
    for tool in ("psql", "pg_dump", "pg_restore", "pg_isready", "initdb", "postgres"):
        assert run(client, "sh", "-c", f"command -v {tool}")[0] == 0, tool


def test_postgres_without_a_password_refuses_to_initialise_unless_trust_is_asked(lab):
    refused = lab.start("postgres:15", "nopassword")
    assert wait_exit(refused) == 1
    assert "superuser password is not specified" in refused.logs().decode()

    # trust: no password at all, and the defaults (user and database postgres)
    server = start_postgres(lab, 15, POSTGRES_HOST_AUTH_METHOD="trust")
    client = lab.client_of("postgres:15")
    who = "select current_user || '@' || current_database()"
    assert psql(client, server, who, "", user="postgres", db="postgres") == (0, "postgres@postgres")


def test_a_postgres_15_dump_restores_into_postgres_17_and_data_survives_a_restart(lab):
    env = {"POSTGRES_USER": "shop", "POSTGRES_PASSWORD": PG_PASSWORD, "POSTGRES_DB": "shopdb"}
    old = start_postgres(lab, 15, "old", **env)
    schema = """
        create table items (id serial primary key, name text not null, price numeric(8, 2));
        insert into items (name, price) select 'item ' || i || ' — café', i * 1.5 from generate_series(1, 2000) i;
        create index items_name on items (name);
        create view cheap as select * from items where price < 10;
    """
    assert run(old, "psql", "-U", "shop", "-d", "shopdb", "-v", "ON_ERROR_STOP=1", "-q", "-c", schema)[0] == 0

    # The data directory is kept across a restart: no second initialisation.
    old.restart(timeout=10)
    wait_ready(old, "pg_isready", "-h", "127.0.0.1", "-U", "shop", "-d", "shopdb")
    assert "appears to contain a database; Skipping initialization" in old.logs().decode()

    code, dump = old.exec_run(["pg_dump", "-Fc", "-U", "shop", "-d", "shopdb"], demux=True)
    assert code == 0 and dump[0].startswith(b"PGDMP"), dump[1]

    new = start_postgres(lab, 17, "new", **env)
    put_file(new, "/tmp/shop.dump", dump[0])
    assert run(new, "pg_restore", "--list", "/tmp/shop.dump")[0] == 0
    code, out = run(new, "pg_restore", "--exit-on-error", "--no-owner", "-U", "shop", "-d", "shopdb", "/tmp/shop.dump")
    assert code == 0, out

    client = lab.client_of("postgres:17")
    sql = (
        "select count(*), sum(price), (select name from items where id = 42), (select count(*) from cheap),"
        " current_setting('server_version_num')::int / 10000 from items"
    )
    assert psql(client, new, sql, PG_PASSWORD) == (0, "2000|3001500.00|item 42 — café|6|17")


# --------------------------------------------------------------------- redis


def redis_cli(client: Container, server: Container, *args: str) -> tuple[int, str]:
    return run(client, "redis-cli", "-h", server.name, "--no-auth-warning", *args)


def test_redis_passes_its_arguments_through_and_requires_the_password(lab):
    command = ["redis-server", "--requirepass", REDIS_PASSWORD, "--appendonly", "yes"]
    server = lab.start("redis:7", "cache", command=command)
    wait_ready(server, "sh", "-c", f"redis-cli --no-auth-warning -a {REDIS_PASSWORD} ping | grep -qx PONG")
    client = lab.client_of("redis:7")

    assert redis_cli(client, server, "-a", REDIS_PASSWORD, "set", "greeting", "hello") == (0, "OK")
    assert redis_cli(client, server, "-a", REDIS_PASSWORD, "get", "greeting") == (0, "hello")
    assert "WRONGPASS" in redis_cli(client, server, "-a", "wrong", "get", "greeting")[1]
    assert "NOAUTH" in redis_cli(client, server, "get", "greeting")[1]
    _, info = redis_cli(client, server, "-a", REDIS_PASSWORD, "info", "server")
    assert "redis_version:7." in info

    # appendonly from the arguments, written under /data (the working directory) by redis (uid 999)
    for name, value in (("appendonly", "yes"), ("dir", "/data")):
        assert redis_cli(client, server, "-a", REDIS_PASSWORD, "config", "get", name)[1].split() == [name, value]
    assert run(server, "stat", "-c", "%u", "/data/appendonlydir") == (0, "999")
    image = lab.client.images.get("redis:7").attrs["Config"]
    assert image["Cmd"] == ["redis-server"] and image["WorkingDir"] == "/data" and "/data" in image["Volumes"]


def test_redis_without_arguments_answers_other_containers_like_the_official_image(lab):
    # The official image turns protected mode off: with no password, other hosts still get in.
    server = lab.start("redis:7", "cache")
    wait_ready(server, "redis-cli", "ping")
    client = lab.client_of("redis:7")
    assert redis_cli(client, server, "ping") == (0, "PONG")


def test_redis_takes_an_acl_file(lab):
    server = lab.client.containers.create(
        "redis:7",
        ["redis-server", "--aclfile", "/etc/redis/users.acl"],
        name=f"{lab.instance}-acl",
        network=lab.network.name,
        labels=lab.labels,
    )
    put_file(server, "/etc/redis/users.acl", b"user default off\nuser app on >app-pass ~* &* +@all\n")
    server.start()
    wait_ready(server, "sh", "-c", "redis-cli --user app --pass app-pass --no-auth-warning ping | grep -qx PONG")
    client = lab.client_of("redis:7")
    assert redis_cli(client, server, "--user", "app", "--pass", "app-pass", "ping") == (0, "PONG")
    assert "NOAUTH" in redis_cli(client, server, "ping")[1]
    assert "WRONGPASS" in redis_cli(client, server, "--user", "app", "--pass", "nope", "ping")[1]


# ------------------------------------------------------------------- mariadb


def mariadb(client: Container, server: Container, user: str, password: str, sql: str, db: str = "") -> tuple[int, str]:
    args = ["-h", server.name, "-u", user, f"-p{password}", "-N", "-B", "-e", sql, *([db] if db else [])]
    return run(client, "mariadb", *args)


def test_mariadb_takes_the_official_environment_and_authenticates_other_hosts(lab):
    env = {
        "MARIADB_ROOT_PASSWORD": MARIADB_ROOT_PASSWORD,
        "MARIADB_USER": "shop",
        "MARIADB_PASSWORD": MARIADB_PASSWORD,
        "MARIADB_DATABASE": "shop_db",
    }
    server = lab.start("mariadb:10.11", "db", environment=env)
    wait_ready(server, "healthcheck.sh", "--connect", "--innodb_initialized")
    assert run(server, "mariadb-admin", "ping")[0] == 0
    client = lab.client_of("mariadb:10.11")

    who = "select current_user(), database(), version()"
    code, out = mariadb(client, server, "shop", MARIADB_PASSWORD, who, "shop_db")
    assert code == 0, out
    user, db, version = out.split("\t")
    assert (user, db) == ("shop@%", "shop_db") and version.startswith("10.11.")
    code, out = mariadb(client, server, "shop", "not-the-password", "select 1")
    assert code != 0 and "Access denied for user 'shop'" in out
    # the user has every right on its database and none elsewhere
    create = "create table items (id int primary key, name varchar(40)); insert into items values (1, 'café'), (2, 't')"
    assert mariadb(client, server, "shop", MARIADB_PASSWORD, create, "shop_db")[0] == 0
    code, out = mariadb(client, server, "shop", MARIADB_PASSWORD, "create database other")
    assert code != 0 and "Access denied" in out
    # root may log in from other hosts, with its password only
    assert mariadb(client, server, "root", MARIADB_ROOT_PASSWORD, "select count(*) from shop_db.items") == (0, "2")
    assert mariadb(client, server, "root", "", "select 1")[0] != 0

    code, dump = run(client, "mariadb-dump", "-h", server.name, "-u", "shop", f"-p{MARIADB_PASSWORD}", "shop_db")
    assert code == 0 and "CREATE TABLE `items`" in dump and "café" in dump
    ping = ("mariadb-admin", "-h", server.name, "-u", "shop", f"-p{MARIADB_PASSWORD}", "ping")
    assert run(client, *ping) == (0, "mysqld is alive")

    # the server runs as mysql (uid 999) on its data directory, the image's volume
    assert run(server, "stat", "-c", "%u", "/var/lib/mysql") == (0, "999")
    assert run(server, "sh", "-c", "grep ^Uid /proc/1/status")[1].split()[1] == "999"
    assert "MARIADB_ROOT_PASSWORD" not in run(server, "cat", "/proc/1/environ")[1]
    image = lab.client.images.get("mariadb:10.11").attrs["Config"]
    assert image["Cmd"] == ["mariadbd"] and "3306/tcp" in image["ExposedPorts"] and "/var/lib/mysql" in image["Volumes"]


def test_mariadb_needs_a_root_password_option_and_can_generate_one(lab):
    refused = lab.start("mariadb:10.11", "nopassword")
    assert wait_exit(refused) == 1
    assert "password option is not specified" in refused.logs().decode()

    env = {"MARIADB_RANDOM_ROOT_PASSWORD": "1", "MARIADB_INITDB_SKIP_TZINFO": "1"}
    server = lab.start("mariadb:10.11", "random", environment=env)
    wait_ready(server, "healthcheck.sh", "--connect", "--innodb_initialized")
    [line] = [x for x in server.logs().decode().splitlines() if "GENERATED ROOT PASSWORD: " in x]
    password = line.split("GENERATED ROOT PASSWORD: ", 1)[1].strip()
    client = lab.client_of("mariadb:10.11")
    assert mariadb(client, server, "root", password, "select 1") == (0, "1")
