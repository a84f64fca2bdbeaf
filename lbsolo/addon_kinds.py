"""What lbsolo knows about each kind of add-on: Postgres, Redis and MariaDB.

A Kind says which image a version runs, the environment and command that image documents for
its first start (the official images' contract: POSTGRES_USER/PASSWORD/DB, MARIADB_*, the
redis-server arguments), where its data lives, how to ask it whether it is ready, the URL an
app gets, and the interactive shell. Credentials are generated here. Pure: no engine, no
state, no I/O; the use cases in core_addons.py run what these return.

It also holds what a credential rotation says to each kind (core_addon_access.py runs it, in
the add-on's container, as its administrator): Postgres and MariaDB get a second user with the
old one's rights, then lose the old user; Redis gets a second password of its `default` user
(kept in an ACL file on the volume, so a restart keeps it), then loses the old one.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from lbsolo.errors import InvalidInput

_VERSION = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){0,2}$")  # 16, 10.11, 10.11.9
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
        """The container's command (None: the image's own).

        Redis reads its users from the ACL file (`files`), which a rotation rewrites with ACL
        SAVE; the file's rules replace --requirepass's at every start, so the first password
        stops counting once rotated away (it stays only as the command's first words).
        """
        if self.name == "redis":
            acl = f"{self.data_path}/users.acl"
            return ["redis-server", "--requirepass", creds.password, "--aclfile", acl, "--appendonly", "yes",
                    "--dir", self.data_path]  # fmt: skip
        return None

    def files(self, creds: Credentials) -> dict[str, bytes]:
        """Files the data volume must hold before the first start (written only where missing)."""
        if self.name == "redis":
            return {f"{self.data_path}/users.acl": f"user default on >{creds.password} ~* &* +@all\n".encode()}
        return {}

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

    # ---- administration, for credential rotation: scripts sent on stdin to admin_command
    def admin_command(self, creds: Credentials) -> list[str]:
        """argv of the kind's client as its administrator, in the container, reading a script on stdin.

        Postgres: the current user (a superuser, as POSTGRES_USER is) over the local socket;
        MariaDB: root, whose password lbsolo keeps equal to the current user's; Redis: the
        `default` user. Passwords go through the environment or an option, never a shell.
        """
        if self.name == "postgres":
            return ["env", f"PGPASSWORD={creds.password}", "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                    "-U", creds.user, "-d", creds.database, "-f", "-"]  # fmt: skip
        if self.name == "mariadb":
            # --raw: batch output unescaped, so a grant on `shop\_db` (the entrypoint's) replays as it is
            return ["mariadb", "-u", "root", f"--password={creds.password}", "-N", "-B", "--raw"]
        return ["env", f"REDISCLI_AUTH={creds.password}", "redis-cli", "-h", "127.0.0.1", "-p", str(self.port)]

    def next_user(self, addon: str, current: str) -> str:
        """The user a rotation adds: shop_db -> shop_db_2 -> shop_db_3 (Redis keeps `default`)."""
        if self.name == "redis":
            return current
        base = db_identifier(addon)
        generation = current.removeprefix(f"{base}_") if current.startswith(f"{base}_") else ""
        return f"{base}_{int(generation) + 1 if generation.isdigit() else 2}"


def _pg_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _my_literal(value: str) -> str:
    # MariaDB reads backslashes in string literals as escapes (unless NO_BACKSLASH_ESCAPES).
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _checked(user: str) -> str:
    """A user name that can be written into a script as it is (letters, digits, '_')."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", user):
        raise InvalidInput(f"{user!r} is not a user name lbsolo makes")
    return user


PG_DATABASES = "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1;\n"


def pg_add_user(old: str, new: Credentials) -> str:
    """Make (or update) `new` a login with `old`'s attributes and memberships, and a member of
    `old` itself (so it reaches what `old` owns) unless `old` is a superuser (it needs no more)."""
    o, n = _pg_literal(_checked(old)), _pg_literal(_checked(new.user))
    return f"""DO $lbsolo$
DECLARE
    r pg_roles;
    m text;
BEGIN
    SELECT * INTO r FROM pg_roles WHERE rolname = {o};
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no role %', {o};
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {n}) THEN
        EXECUTE format('CREATE ROLE %I', {n});
    END IF;
    EXECUTE format('ALTER ROLE %I WITH LOGIN %s %s %s %s %s PASSWORD %L', {n},
        CASE WHEN r.rolsuper THEN 'SUPERUSER' ELSE 'NOSUPERUSER' END,
        CASE WHEN r.rolcreatedb THEN 'CREATEDB' ELSE 'NOCREATEDB' END,
        CASE WHEN r.rolcreaterole THEN 'CREATEROLE' ELSE 'NOCREATEROLE' END,
        CASE WHEN r.rolreplication THEN 'REPLICATION' ELSE 'NOREPLICATION' END,
        CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END,
        {_pg_literal(new.password)});
    FOR m IN SELECT g.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid WHERE a.member = r.oid LOOP
        EXECUTE format('GRANT %I TO %I', m, {n});
    END LOOP;
    IF NOT r.rolsuper THEN
        EXECUTE format('GRANT %I TO %I', {o}, {n});
    END IF;
END $lbsolo$;
"""


def pg_retire_user(old: str, new: str, databases: list[str]) -> str:
    """Hand what `old` owns in every database to `new`, drop `old` and end its sessions.

    The bootstrap superuser (POSTGRES_USER, oid 10) owns the system's own objects and can be
    neither dropped nor dispossessed: it is locked instead (NOLOGIN, no password), which ends
    its use as a credential just the same.
    """
    o, n = _pg_literal(_checked(old)), _pg_literal(_checked(new))
    parts = []
    for db in databases:
        if not re.fullmatch(r"[A-Za-z0-9_]+", db):
            continue  # not one lbsolo or the image made: nothing of ours in it
        parts.append(f"""\\connect {db}
DO $lbsolo$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = {o} AND oid <> 10) THEN
        EXECUTE format('REASSIGN OWNED BY %I TO %I', {o}, {n});
        EXECUTE format('DROP OWNED BY %I', {o});
    END IF;
END $lbsolo$;
""")
    parts.append(f"""DO $lbsolo$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = {o} AND oid = 10) THEN
        EXECUTE format('ALTER ROLE %I NOLOGIN PASSWORD NULL', {o});
    ELSIF EXISTS (SELECT FROM pg_roles WHERE rolname = {o}) THEN
        EXECUTE format('DROP ROLE %I', {o});
    END IF;
END $lbsolo$;
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = {o};
""")
    return "".join(parts)


def my_grants_query(old: str) -> str:
    return f"SHOW GRANTS FOR {_my_literal(_checked(old))}@'%';\n"


_GRANTEE = re.compile(
    r" TO (`[^`]+`|'[^']+')@(`[^`]*`|'[^']*')( IDENTIFIED (BY PASSWORD '[^']*'|VIA .*?))?(?= WITH |$)"
)


def my_add_user(old: str, new: Credentials, grants: list[str]) -> str:
    """Make (or update) `new`@'%' with the password, then replay `old`'s grants (SHOW GRANTS
    lines) for it, without the password hash they carry."""
    _checked(old)
    n = f"{_my_literal(_checked(new.user))}@'%'"
    out = [f"CREATE USER IF NOT EXISTS {n} IDENTIFIED BY {_my_literal(new.password)};",
           f"ALTER USER {n} IDENTIFIED BY {_my_literal(new.password)};"]  # fmt: skip
    for line in grants:
        line = line.strip()
        if line.startswith("GRANT ") and _GRANTEE.search(line):
            out.append(_GRANTEE.sub(f" TO {n}", line, count=1) + ";")
    return "\n".join(out) + "\n"


def my_switch_root(new_password: str) -> str:
    """root's password follows the current user's (the administrator lbsolo logs in as)."""
    pw = _my_literal(new_password)
    return "".join(f"ALTER USER IF EXISTS 'root'@'{host}' IDENTIFIED BY {pw};\n" for host in ("%", "localhost"))


def my_retire_user(old: str) -> str:
    return f"DROP USER IF EXISTS {_my_literal(_checked(old))}@'%';\n"


def redis_add_password(password: str) -> str:
    return f"ACL SETUSER default on >{password}\nACL SAVE\n"


def redis_retire_password(password: str) -> str:
    return f"ACL SETUSER default <{password}\nACL SAVE\n"


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
