"""What each add-on kind runs and hands out: images, first-start environment, URLs, readiness."""

from __future__ import annotations

import urllib.parse

import pytest

from lbsolo.addon_kinds import KINDS, Credentials, db_identifier, kind_of
from lbsolo.errors import InvalidInput


def test_unknown_kinds_and_bad_versions_are_refused_by_name():
    with pytest.raises(InvalidInput, match="unknown add-on kind 'mongo': use one of postgres, redis, mariadb"):
        kind_of("mongo")
    for bad in ("", "latest", "16;rm -rf /", "1.2.3.4", "16 "):
        with pytest.raises(InvalidInput, match="invalid postgres version"):
            kind_of("postgres").check_version(bad)
    assert kind_of("mariadb").check_version("10.11") == "10.11"


def test_majors_say_when_a_change_needs_a_dump():
    assert kind_of("postgres").major("16.4") == "16"
    assert kind_of("mariadb").major("10.11") == "10.11"
    assert kind_of("redis").major("7") == "7"


def test_generated_credentials_are_strong_and_need_no_escaping():
    pg = kind_of("postgres")
    a, b = pg.credentials("shop-db"), pg.credentials("shop-db")
    assert a.user == a.database == "shop_db" and a.password != b.password and len(a.password) >= 32
    url = pg.url(a, "shop-db")
    parsed = urllib.parse.urlsplit(url)
    assert (parsed.scheme, parsed.hostname, parsed.port, parsed.path) == ("postgres", "shop-db", 5432, "/shop_db")
    assert urllib.parse.unquote(parsed.password or "") == a.password == parsed.password
    assert kind_of("mariadb").url(a, "h").startswith("mysql://shop_db:")
    r = kind_of("redis").credentials("cache")
    assert kind_of("redis").url(r, "cache") == f"redis://default:{r.password}@cache:6379/0"


def test_first_start_follows_the_official_images_contract():
    creds = Credentials("u", "pw", "d")
    assert KINDS["postgres"].environment(creds) == {
        "POSTGRES_USER": "u",
        "POSTGRES_PASSWORD": "pw",
        "POSTGRES_DB": "d",
        "PGDATA": "/var/lib/postgresql/data/pgdata",
    }
    assert KINDS["mariadb"].environment(creds)["MARIADB_DATABASE"] == "d"
    assert KINDS["redis"].command(creds)[:3] == ["redis-server", "--requirepass", "pw"]
    assert KINDS["postgres"].command(creds) is None
    assert "pg_isready" in KINDS["postgres"].ready_command(creds)
    assert KINDS["postgres"].image("15") == "postgres:15"


def test_a_password_is_quoted_in_the_shell_commands():
    creds = Credentials("u", "it's;$(x)", "d")
    assert "'it'\"'\"'s;$(x)'" in KINDS["mariadb"].ready_command(creds)
    assert "'it'\"'\"'s;$(x)'" in KINDS["postgres"].shell_command(creds)


def test_names_become_database_identifiers():
    assert db_identifier("a-b-1") == "a_b_1"
    with pytest.raises(InvalidInput):
        db_identifier("1abc")
