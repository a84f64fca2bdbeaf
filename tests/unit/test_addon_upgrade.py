"""The upgrade's pure decisions: which way a version change goes (or why it cannot), the new
add-on's name, and the write fence's scripts."""

from __future__ import annotations

import pytest

from lbsolo import addon_upgrade as plan
from lbsolo.addon_kinds import Credentials, kind_of
from lbsolo.addon_upgrade import UpgradeWay
from lbsolo.errors import Conflict, InvalidInput

PG, REDIS, MARIA = kind_of("postgres"), kind_of("redis"), kind_of("mariadb")


@pytest.mark.parametrize(
    ("k", "current", "target"),
    [(PG, "15", "15.8"), (PG, "15.4", "15.8"), (MARIA, "10.11", "10.11.9"), (REDIS, "7", "7.2")],
)
def test_the_same_major_upgrades_in_place(k, current, target):
    assert plan.way(k, current, target, via_dump=False) == UpgradeWay.IN_PLACE


@pytest.mark.parametrize(("k", "current", "target"), [(PG, "15", "17"), (MARIA, "10.11", "11.4"), (REDIS, "7", "8")])
def test_a_new_major_is_refused_unless_through_a_dump(k, current, target):
    with pytest.raises(Conflict, match=r"is a major upgrade.*--via-dump"):
        plan.way(k, current, target, via_dump=False)
    assert plan.way(k, current, target, via_dump=True) == UpgradeWay.VIA_DUMP


def test_mariadb_majors_are_two_numbers_and_compare_as_numbers():
    assert plan.way(MARIA, "10.9", "10.11", via_dump=True) == UpgradeWay.VIA_DUMP  # 10.11 is newer than 10.9
    with pytest.raises(InvalidInput, match="older"):
        plan.way(MARIA, "10.11", "10.9", via_dump=True)


@pytest.mark.parametrize("via_dump", [False, True])
def test_going_back_a_major_is_refused_either_way(via_dump):
    with pytest.raises(InvalidInput, match="older than 17"):
        plan.way(PG, "17", "15", via_dump=via_dump)


def test_the_same_version_and_a_dump_for_a_minor_are_refused():
    with pytest.raises(Conflict, match="already runs postgres 15"):
        plan.way(PG, "15", "15", via_dump=False)
    with pytest.raises(InvalidInput, match="same major"):
        plan.way(PG, "15", "15.8", via_dump=True)


@pytest.mark.parametrize("bad", ["", "latest", "15-alpine", "1.2.3.4", "../15", "15 ; rm"])
def test_a_malformed_version_is_refused(bad):
    with pytest.raises(InvalidInput, match="invalid postgres version"):
        plan.way(PG, "15", bad, via_dump=True)


@pytest.mark.parametrize(
    ("name", "k", "target", "expected"),
    [
        ("shop-db", PG, "17", "shop-db-17"),
        ("shop-db-15", PG, "17", "shop-db-17"),
        ("shop-maria", MARIA, "11.4", "shop-maria-11-4"),
        ("shop-maria-10-11", MARIA, "11.4", "shop-maria-11-4"),
        ("cache", REDIS, "8.0", "cache-8"),
    ],
)
def test_the_new_add_on_is_named_after_the_new_major(name, k, target, expected):
    assert plan.upgraded_name(name, k, target) == expected


def test_the_fence_scripts_name_the_add_ons_database_and_undo_each_other():
    creds = Credentials("shop_db_2", "pw", "shop_db")
    fence = plan.fence(PG, creds)
    assert 'ALTER DATABASE "shop_db" SET default_transaction_read_only = on' in fence
    assert "datname = 'shop_db'" in fence and "pg_stat_clear_snapshot" in fence
    assert "state <> 'active'" in fence  # a query under way is let finish, not cut off
    unfence = plan.unfence(PG, creds)
    assert unfence.index("READ WRITE") < unfence.index('ALTER DATABASE "shop_db" RESET default_transaction_read_only')
    assert "pg_stat_clear_snapshot" in unfence and "pg_terminate_backend" in unfence  # sessions opened read-only
    assert plan.fence(MARIA, creds).endswith("SET GLOBAL read_only = ON;\n")
    assert "lock_wait_timeout" in plan.fence(MARIA, creds)
    assert plan.unfence(MARIA, creds) == "SET GLOBAL read_only = OFF;\n"
    assert plan.fence(REDIS, creds) == "ACL SETUSER default -@write\n"
    assert plan.unfence(REDIS, creds) == "ACL SETUSER default +@write\n"


def test_a_database_name_that_is_no_identifier_is_refused_before_it_reaches_a_script():
    with pytest.raises(InvalidInput):
        plan.fence(PG, Credentials("u", "pw", "x'; drop table t; --"))
