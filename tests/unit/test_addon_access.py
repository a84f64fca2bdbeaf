"""The add-on access decisions, pure: where an add-on may be exposed, what a promotion moves,
and what a credential rotation says to each kind (no engine, no database)."""

from __future__ import annotations

import pytest

from lbsolo import addon_kinds as kinds
from lbsolo.addon_kinds import KINDS, Credentials
from lbsolo.core_addon_access import check_exposure, promotion
from lbsolo.errors import Conflict, InvalidInput, NotFound


def test_loopback_is_the_default_and_anything_else_needs_public():
    assert check_exposure("127.0.0.1", None, False) == ("127.0.0.1", None)
    assert check_exposure("::1", 15432, False) == ("::1", 15432)
    assert check_exposure("127.0.0.2", 1, False) == ("127.0.0.2", 1)
    for address in ("0.0.0.0", "::", "192.168.1.10", "10.0.0.1"):
        with pytest.raises(InvalidInput, match="add --public"):
            check_exposure(address, None, False)
        assert check_exposure(address, 5432, True)[0] == address


def test_an_address_must_be_an_ip_and_a_port_in_range():
    for address in ("localhost", "", "127.0.0.1:5432", "db.example.com", "1.2.3"):
        with pytest.raises(InvalidInput, match="is not an IP address"):
            check_exposure(address, None, True)
    for port in (0, -1, 65536, 70000):
        with pytest.raises(InvalidInput, match=f"port {port} is out of range"):
            check_exposure("127.0.0.1", port, False)
    assert check_exposure("127.0.0.1", 65535, False)[1] == 65535


def test_promotion_swaps_the_vars_of_the_promoted_and_the_former_primary():
    held = {"old-db": "DATABASE_URL", "new-db": "REPLICA_DATABASE_URL"}
    moves, unset = promotion("shop", "new-db", "DATABASE_URL", held, ["DATABASE_URL", "REPLICA_DATABASE_URL"])
    assert moves == {"new-db": "DATABASE_URL", "old-db": "REPLICA_DATABASE_URL"} and unset == []


def test_promotion_to_a_free_primary_unsets_the_old_var():
    moves, unset = promotion("shop", "db", "DATABASE_URL", {"db": "OTHER_URL"}, ["OTHER_URL", "GREETING"])
    assert moves == {"db": "DATABASE_URL"} and unset == ["OTHER_URL"]


def test_promotion_refuses_what_it_cannot_do_without_losing_something():
    with pytest.raises(NotFound, match="db is not attached to shop"):
        promotion("shop", "db", "DATABASE_URL", {}, [])
    with pytest.raises(Conflict, match="already is shop's DATABASE_URL"):
        promotion("shop", "db", "DATABASE_URL", {"db": "DATABASE_URL"}, ["DATABASE_URL"])
    with pytest.raises(Conflict, match="set by hand"):
        promotion("shop", "db", "DATABASE_URL", {"db": "OTHER_URL"}, ["DATABASE_URL", "OTHER_URL"])


def test_a_rotation_adds_the_next_user_of_the_add_on():
    pg = KINDS["postgres"]
    assert pg.next_user("shop-db", "shop_db") == "shop_db_2"
    assert pg.next_user("shop-db", "shop_db_2") == "shop_db_3"
    assert pg.next_user("shop-db", "shop_db_19") == "shop_db_20"
    assert pg.next_user("shop-db", "someone") == "shop_db_2"
    assert KINDS["redis"].next_user("cache", "default") == "default"


def test_postgres_scripts_copy_rights_and_lock_the_bootstrap_user_instead_of_dropping_it():
    add = kinds.pg_add_user("shop_db", Credentials("shop_db_2", "pw'x", "shop_db"))
    assert "rolname = 'shop_db'" in add and "'shop_db_2'" in add and "'pw''x'" in add  # a quote doubled
    assert "SUPERUSER" in add and "GRANT %I TO %I" in add
    retire = kinds.pg_retire_user("shop_db", "shop_db_2", ["postgres", "shop_db", "bad;name"])
    assert retire.count("\\connect ") == 2 and "bad;name" not in retire
    assert "REASSIGN OWNED BY" in retire and "oid = 10" in retire and "NOLOGIN PASSWORD NULL" in retire
    assert "pg_terminate_backend" in retire
    with pytest.raises(InvalidInput):
        kinds.pg_add_user("x'; drop table t; --", Credentials("y", "p", "d"))


def test_mariadb_grants_are_replayed_for_the_new_user_without_the_old_hash():
    grants = [
        "GRANT USAGE ON *.* TO `ledger`@`%` IDENTIFIED BY PASSWORD '*0123456789ABCDEF'",
        "GRANT ALL PRIVILEGES ON `ledger`.* TO `ledger`@`%` WITH GRANT OPTION",
        "",
    ]
    script = kinds.my_add_user("ledger", Credentials("ledger_2", "p\\w'", "ledger"), grants)
    lines = script.strip().splitlines()
    assert lines[0] == "CREATE USER IF NOT EXISTS 'ledger_2'@'%' IDENTIFIED BY 'p\\\\w''';"
    assert lines[2] == "GRANT USAGE ON *.* TO 'ledger_2'@'%';"
    assert lines[3] == "GRANT ALL PRIVILEGES ON `ledger`.* TO 'ledger_2'@'%' WITH GRANT OPTION;"
    assert "*0123456789ABCDEF" not in script
    assert "'root'@'%'" in kinds.my_switch_root("n") and "'root'@'localhost'" in kinds.my_switch_root("n")
    assert kinds.my_retire_user("ledger") == "DROP USER IF EXISTS 'ledger'@'%';\n"


def test_redis_keeps_its_users_in_an_acl_file_that_a_rotation_saves():
    creds = Credentials("default", "pw", "0")
    redis = KINDS["redis"]
    assert "--aclfile" in redis.command(creds)
    assert redis.files(creds) == {"/data/users.acl": b"user default on >pw ~* &* +@all\n"}
    assert kinds.redis_add_password("n") == "ACL SETUSER default on >n\nACL SAVE\n"
    assert kinds.redis_retire_password("o") == "ACL SETUSER default <o\nACL SAVE\n"
    assert KINDS["postgres"].files(creds) == {}


def test_the_administrator_logs_in_without_a_shell():
    creds = Credentials("u", "it's;$(x)", "d")
    for kind in KINDS.values():
        argv = kind.admin_command(creds)
        assert argv[0] != "sh" and any("it's;$(x)" in a for a in argv)
