"""The dump knowledge: commands per kind, a dump file's kind and major from its first bytes, what
may be restored where, and the verification's count comparison."""

from __future__ import annotations

import json

import pytest

from lbsolo.addon_dumps import (
    Sniffed,
    check_backup_id,
    check_complete,
    check_keep,
    check_restorable,
    check_schedule,
    compare_counts,
    counts_command,
    dump_command,
    manifest,
    new_backup_id,
    next_run,
    parse_counts,
    redis_replace_command,
    restore_command,
    schedule_due,
    schedule_interval,
    schedule_missed,
    sniff,
    to_prune,
)
from lbsolo.addon_kinds import KINDS, Credentials
from lbsolo.errors import InvalidInput

# The first bytes of real pg_dump -Fc files of the stand-ins (archive 1.14 by 15.18, 1.16 by 17.12).
PG15 = bytes.fromhex(
    "5047444d50010e0004080101010000000001000000000700000000080000000005000000000b000000007e0000000000000000"
    "000100000064001e00000031352e3138202844656269616e2031352e31382d302b6465623132753129001e00000031352e3138"
    "202844656269616e"
)
PG17 = bytes.fromhex(
    "5047444d50011000040801010001000000000700000000080000000005000000000b000000007e0000000000000000000100"
    "000064001e00000031372e3132202844656269616e2031372e31322d302b6465623133753129001e00000031372e3132202844"
    "656269616e2031372e"
)
RDB = b"REDIS0010\xfa\tredis-ver\x067.0.15\xfa\nredis-bits\xc0@"
MARIADB = (
    b"/*M!999999\\- enable the sandbox mode */\n-- MariaDB dump 10.19  Distrib 10.11.6-MariaDB\n--\n"
    b"-- Server version\t10.11.6-MariaDB-0+deb12u1\n"
)
CREDS = Credentials("shop_db", "pw-123_abc", "shop_db")


def test_sniffs_the_kind_and_major_of_real_dump_headers():
    assert sniff(PG15 + b"\0" * 64) == Sniffed("postgres", "15")
    assert sniff(PG17 + b"\0" * 64) == Sniffed("postgres", "17")
    assert sniff(RDB) == Sniffed("redis", "7")
    assert sniff(MARIADB) == Sniffed("mariadb", "10.11")


@pytest.mark.parametrize(
    ("head", "said"),
    [
        (b"", "empty"),
        (b"\x1f\x8b\x08\x00rest", "gzip"),
        (b"hello world", "not a dump"),
        (PG15[:30], "cut short"),
    ],
)
def test_refuses_what_is_not_a_whole_dump_head(head, said):
    with pytest.raises(InvalidInput, match=said):
        sniff(head)


def test_another_kind_or_a_newer_major_is_refused_an_older_one_is_fine():
    pg = KINDS["postgres"]
    check_restorable(Sniffed("postgres", "15"), pg, "17")
    check_restorable(Sniffed("postgres", "15"), pg, "15")
    with pytest.raises(InvalidInput, match="newer than this add-on's 15"):
        check_restorable(Sniffed("postgres", "17"), pg, "15")
    with pytest.raises(InvalidInput, match="is a redis dump; this add-on is postgres"):
        check_restorable(Sniffed("redis", "7"), pg, "15")
    check_restorable(Sniffed("mariadb", "10.6"), KINDS["mariadb"], "10.11")
    with pytest.raises(InvalidInput, match="newer"):
        check_restorable(Sniffed("mariadb", "11.4"), KINDS["mariadb"], "10.11")


def test_a_cut_rdb_or_sql_dump_is_seen_by_its_end():
    check_complete(KINDS["redis"], b"....\xff" + b"\x01" * 8)
    with pytest.raises(InvalidInput, match="cut short"):
        check_complete(KINDS["redis"], b"....\xff\x01\x02")
    check_complete(KINDS["mariadb"], b"INSERT ...;\n-- Dump completed on 2026-12-05  8:00:00\n")
    with pytest.raises(InvalidInput, match="Dump completed"):
        check_complete(KINDS["mariadb"], b"INSERT INTO t VALUES (1),(2")


def test_counts_are_parsed_and_compared_with_the_readings_around_the_dump():
    assert parse_counts("public.a\t3\npublic.b\t0\nnoise\n\npublic.c|x\tN\n") == {"public.a": 3, "public.b": 0}
    assert compare_counts({"a": 3}, {"a": 3}, {"a": 3}) == []
    assert compare_counts({"a": 3}, {"a": 5}, {"a": 4}) == []  # written during the dump
    assert compare_counts({"a": 3}, {"a": 3}, {"a": 2}) == ["a: 2 restored, 3 at dump time"]
    assert compare_counts({"a": 3}, {"a": 3}, {}) == ["a: 0 restored, 3 at dump time"]
    assert compare_counts({}, {}, {"x": 1}) == ["x: 1 restored, 0 at dump time"]


def test_commands_are_argv_for_a_shell_with_the_credentials_quoted():
    for name, kind in KINDS.items():
        for argv in (dump_command(kind, CREDS), counts_command(kind, CREDS)):
            assert argv[:2] == ["sh", "-c"] and CREDS.password in argv[2], name
    assert "pg_dump" in dump_command(KINDS["postgres"], CREDS)[2] and "-Fc" in dump_command(KINDS["postgres"], CREDS)[2]
    assert "--single-transaction" in restore_command(KINDS["postgres"], CREDS)[2]
    assert "--single-transaction" in dump_command(KINDS["mariadb"], CREDS)[2]
    assert "bgsave" in dump_command(KINDS["redis"], CREDS)[2]
    with pytest.raises(InvalidInput):
        restore_command(KINDS["redis"], CREDS)


def test_backup_ids_are_timestamps_and_nothing_else():
    assert check_backup_id("20261205T080912Z") == "20261205T080912Z"
    assert check_backup_id("20261205T080912Z-a1") == "20261205T080912Z-a1"
    for bad in ("../x", "20261205T080912Z/../../etc", "", "latest"):
        with pytest.raises(InvalidInput):
            check_backup_id(bad)


def test_the_manifest_is_json_with_what_a_restore_checks():
    m = manifest(
        backup_id="20261205T080912Z",
        addon="shop-db",
        kind=KINDS["mariadb"],
        version="10.11",
        created=1.5,
        size=10,
        sha256="ab",
        counts={"t": 1},
        counts_after={"t": 1},
    )
    assert json.loads(json.dumps(m))["major"] == "10.11" and m["verified"] is None and m["kind"] == "mariadb"


def test_a_backup_id_takes_a_suffix_when_its_second_is_taken():
    at = 1796457600.5  # 2026-12-05T08:00:00Z
    assert new_backup_id(at, set()) == "20261205T080000Z"
    assert new_backup_id(at, {"20261205T080000Z"}) == "20261205T080000Z-2"
    assert new_backup_id(at, {"20261205T080000Z", "20261205T080000Z-2"}) == "20261205T080000Z-3"
    assert all(check_backup_id(new_backup_id(at, {"20261205T080000Z"})) for _ in range(2))


def test_schedules_are_five_cron_fields_or_an_alias_and_run_in_order():
    assert check_schedule(" 0  3 * * * ") == "0 3 * * *"
    assert check_schedule("@daily") == "@daily"
    for bad in ("every day", "61 3 * * *", "0 3 * * * *", "", "@sometimes"):
        with pytest.raises(InvalidInput, match="invalid schedule"):
            check_schedule(bad)
    at = 1796457600.0
    first = next_run("0 * * * *", at)
    assert at < first <= at + 3600 and next_run("0 * * * *", first) == first + 3600
    assert schedule_interval("0 * * * *", at) == 3600
    assert check_keep(7) == 7
    for bad in (0, -1, 1001, True):
        with pytest.raises(InvalidInput):
            check_keep(bad)


def test_a_schedule_is_due_after_the_latest_of_its_setting_last_backup_and_attempt():
    at = 1796457600.0  # 2026-12-05T08:00:00Z, on the hour
    hourly = "0 * * * *"
    assert schedule_due(hourly, at) == at + 3600
    assert schedule_due(hourly, at, None, None) == at + 3600  # no backup, no attempt yet
    assert schedule_due(hourly, at - 10 * 3600, at + 60, None) == at + 3600  # the last backup counts
    assert schedule_due(hourly, at - 10 * 3600, None, at + 7200) == at + 3 * 3600  # so does an attempt
    # Ten hours down: due once, ten hours ago, and missed (late by more than one interval).
    due = schedule_due(hourly, at - 10 * 3600)
    assert due == at - 9 * 3600 and schedule_missed(hourly, due, at)
    assert not schedule_missed(hourly, at, at + 60)  # just due, not missed


def test_pruning_keeps_the_newest_and_never_the_last_verified_backup():
    def m(i: int, verified: bool | None) -> dict:
        return {"id": f"b{i}", "created": float(i), "verified": verified}

    assert to_prune([m(1, True), m(2, True), m(3, True)], 2) == ["b1"]
    assert to_prune([m(1, True), m(2, True)], 2) == []
    # The two newest failed their verification: the newest good one stays too.
    assert to_prune([m(1, True), m(2, True), m(3, False), m(4, False)], 2) == ["b1"]


def test_a_redis_restore_swaps_its_data_in_by_renaming_one_manifest_last():
    script = redis_replace_command("/data")[2]
    swap = script.index(
        "mv /data/appendonlydir/appendonly.aof.manifest.tmp /data/appendonlydir/appendonly.aof.manifest"
    )
    assert script.index("cat > /data/appendonlydir/$base.tmp") < script.index("sync") < swap
    assert script.index("-delete") > swap  # the old files go only after the new manifest names the new base
    assert "users.acl" not in script and "rm -rf" not in script
