"""What lbsolo knows about each kind of add-on: Postgres, Redis and MariaDB.

A Kind says which image a version runs, the environment and command that image documents for
its first start (the official images' contract: POSTGRES_USER/PASSWORD/DB, MARIADB_*, the
redis-server arguments), where its data lives, how to ask it whether it is ready, the URL an
app gets, and the interactive shell. Credentials are generated here. Pure: no engine, no
state, no I/O; the use cases in core_addons.py run what these return.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from lbsolo.errors import InvalidInput

_VERSION = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3})?$")
_USER = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str
    database: str

    def to_dict(self) -> dict[str, str]:
        return {"user": self.user, "password": self.password, "database": self.database}

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> Credentials:
        return cls(str(d["user"]), str(d["password"]), str(d.get("database", "")))


def new_password() -> str:
    """32 URL-safe characters (192 bits): nothing in them needs escaping in a URL or a shell."""
    return secrets.token_urlsafe(24)


def db_identifier(name: str) -> str:
    """An add-on's name as a database or user name: letters, digits and '_' (no '-')."""
    out = name.replace("-", "_")
    if not _USER.match(out):
        raise InvalidInput(f"{name!r} does not make a database name")
    return out


@dataclass(frozen=True)
class Kind:
    name: str
    repository: str  # the official image's name; a version is its tag
    port: int
    data_path: str  # where the image keeps its data: the add-on's volume is mounted here
    url_var: str  # the config var an attached app gets by default
    scheme: str

    def image(self, version: str) -> str:
        return f"{self.repository}:{version}"

    def check_version(self, version: str) -> str:
        if not isinstance(version, str) or not _VERSION.match(version):
            raise InvalidInput(f"invalid {self.name} version {version!r}: use a major version such as 16 (or 10.11)")
        return version

    def major(self, version: str) -> str:
        """The part of a version whose change needs a dump and restore (MariaDB: 10.11; others: 16)."""
        parts = version.split(".")
        return ".".join(parts[:2]) if self.name == "mariadb" else parts[0]

    def credentials(self, addon: str) -> Credentials:
        ident = db_identifier(addon)
        if self.name == "redis":
            return Credentials("default", new_password(), "0")
        return Credentials(ident, new_password(), ident)

    def environment(self, creds: Credentials) -> dict[str, str]:
        if self.name == "postgres":
            return {
                "POSTGRES_USER": creds.user,
                "POSTGRES_PASSWORD": creds.password,
                "POSTGRES_DB": creds.database,
                "PGDATA": f"{self.data_path}/pgdata",  # a subdirectory: a volume's root may hold lost+found
            }
        if self.name == "mariadb":
            return {
                "MARIADB_ROOT_PASSWORD": creds.password,
                "MARIADB_USER": creds.user,
                "MARIADB_PASSWORD": creds.password,
                "MARIADB_DATABASE": creds.database,
            }
        return {}

    def command(self, creds: Credentials) -> list[str] | None:
        """The container's command (None: the image's own)."""
        if self.name == "redis":
            return ["redis-server", "--requirepass", creds.password, "--appendonly", "yes", "--dir", self.data_path]
        return None

    def ready_command(self, creds: Credentials) -> str:
        """A shell command, run in the container, that exits 0 once it takes connections over TCP."""
        if self.name == "postgres":
            # Over TCP, not the socket: the entrypoint's own temporary server listens only there.
            return f"pg_isready -q -h 127.0.0.1 -p {self.port} -U {creds.user} -d {creds.database}"
        if self.name == "mariadb":
            pw = shlex.quote(creds.password)
            return f"mariadb-admin ping -h 127.0.0.1 -P {self.port} -u root --password={pw} --silent"
        return f"REDISCLI_AUTH={shlex.quote(creds.password)} redis-cli -h 127.0.0.1 -p {self.port} ping | grep -q PONG"

    def url(self, creds: Credentials, host: str, port: int | None = None) -> str:
        where = f"{host}:{port or self.port}"
        if self.name == "redis":
            return f"redis://{creds.user}:{creds.password}@{where}/{creds.database}"
        return f"{self.scheme}://{creds.user}:{creds.password}@{where}/{creds.database}"

    def shell_command(self, creds: Credentials) -> str:
        """The interactive client, run in the container (`addons:shell`)."""
        pw = shlex.quote(creds.password)
        if self.name == "postgres":
            return f"PGPASSWORD={pw} exec psql -h 127.0.0.1 -U {creds.user} -d {creds.database}"
        if self.name == "mariadb":
            return f"exec mariadb -h 127.0.0.1 -u {creds.user} --password={pw} {creds.database}"
        return f"REDISCLI_AUTH={pw} exec redis-cli -h 127.0.0.1"


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("postgres", "postgres", 5432, "/var/lib/postgresql/data", "DATABASE_URL", "postgres"),
        Kind("redis", "redis", 6379, "/data", "REDIS_URL", "redis"),
        Kind("mariadb", "mariadb", 3306, "/var/lib/mysql", "DATABASE_URL", "mysql"),
    )
}


def kind_of(name: str) -> Kind:
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise InvalidInput(f"unknown add-on kind {name!r}: use one of {', '.join(KINDS)}") from None
