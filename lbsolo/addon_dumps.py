"""What lbsolo knows about dumping and restoring each kind of add-on, and about a dump file.

Per kind: the command that writes a dump to stdout (Postgres `pg_dump -Fc`, Redis an RDB made
by BGSAVE, MariaDB `mariadb-dump --single-transaction`), the command that restores one read from
stdin, the command that counts what a database holds (Postgres and MariaDB: rows per table;
Redis: keys per database), and how a verification checks a restored copy against the counts
taken at dump time. A dump's first bytes say its kind and the server major it came from
(`sniff`), so a foreign or newer file is refused before it touches anything; the manifest is the
JSON beside each backup. Pure: no engine, no files, no clock; core_addon_backups.py runs these.
"""

from __future__ import annotations

import re
import shlex
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from lbsolo.addon_kinds import Credentials, Kind
from lbsolo.errors import InvalidInput

BACKUP_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z(-[a-z0-9]{1,12})?$")
SNIFF_BYTES = 4096  # enough of a dump's start for `sniff`
REDIS_SCRATCH_PORT = 6390
EXTENSIONS = {"postgres": "dump", "redis": "rdb", "mariadb": "sql"}
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
MAX_KEEP = 1000


def check_backup_id(backup_id: str) -> str:
    if not isinstance(backup_id, str) or not BACKUP_ID.match(backup_id):
        raise InvalidInput(f"invalid backup id {backup_id!r}: see lbsolo addons:backups NAME")
    return backup_id


def new_backup_id(now: float, taken: Collection[str]) -> str:
    """A backup id from the time (UTC, to the second), with a suffix if that second is taken."""
    base = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def dump_extension(kind: str) -> str:
    try:
        return EXTENSIONS[kind]
    except KeyError:
        raise InvalidInput(f"unknown add-on kind {kind!r}") from None


def major_tuple(major: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in major.split("."))
    except ValueError:
        return (0,)


def _pg_env(creds: Credentials) -> str:
    return f"PGPASSWORD={shlex.quote(creds.password)}"


def _sh(script: str) -> list[str]:
    return ["sh", "-c", script]


# ---- commands, run in the add-on's container (or a scratch one of the same image)


def dump_command(kind: Kind, creds: Credentials) -> list[str]:
    """Writes the whole database to stdout; exits non-zero if it could not."""
    if kind.name == "postgres":
        return _sh(
            f"{_pg_env(creds)} exec pg_dump -h 127.0.0.1 -U {creds.user} -d {creds.database} -Fc --no-owner --no-acl"
        )
    if kind.name == "mariadb":
        pw = shlex.quote(creds.password)
        return _sh(
            f"exec mariadb-dump -h 127.0.0.1 -u root --password={pw} --single-transaction --routines --triggers "
            f"--hex-blob {creds.database}"
        )
    # Redis: a fresh RDB by BGSAVE (a clean file: `redis-cli --rdb -` leaves a diskless sync's
    # end marker on stdout), waited for by its save counter, then read out of the data directory.
    cli = f"REDISCLI_AUTH={shlex.quote(creds.password)} redis-cli -h 127.0.0.1"
    # A save whose file is gone before it is read (seen once under load) is made again, twice at most.
    return _sh(
        f"set -e; saves() {{ {cli} info persistence | tr -d '\\r' | sed -n 's/^rdb_saves://p'; }}; "
        "for attempt in 1 2 3; do "
        f"n=$(saves); {cli} bgsave >/dev/null; i=0; "
        f'while [ "$(saves)" = "$n" ]; do i=$((i+1)); [ $i -lt 6000 ] || exit 3; sleep 0.1; done; '
        f"{cli} info persistence | tr -d '\\r' | grep -q '^rdb_last_bgsave_status:ok' || exit 4; "
        f"[ -f {kind.data_path}/dump.rdb ] && exec cat {kind.data_path}/dump.rdb; done; "
        f"echo 'the RDB file was gone after each save' >&2; exit 5"
    )


def restore_command(kind: Kind, creds: Credentials) -> list[str]:
    """Reads a dump on stdin into the running database (Postgres: in one transaction).

    Redis has none: its data is replaced with the server stopped (`redis_replace_command`).
    """
    if kind.name == "postgres":
        return _sh(
            f"{_pg_env(creds)} exec pg_restore -h 127.0.0.1 -U {creds.user} -d {creds.database} --clean --if-exists "
            "--no-owner --no-acl --single-transaction --exit-on-error"
        )
    if kind.name == "mariadb":
        pw = shlex.quote(creds.password)
        return _sh(f"exec mariadb -h 127.0.0.1 -u root --password={pw} {creds.database}")
    raise InvalidInput("a Redis dump is restored with the server stopped")


def redis_replace_command(data_path: str) -> list[str]:
    """In a scratch container on the (stopped) add-on's volume: the RDB on stdin becomes the base
    of the append-only file (with appendonly on, Redis 7 loads only that). The new base is written
    beside the old files, then a new manifest naming it alone is renamed over the old one: one
    atomic step, so a restore cut off anywhere leaves the old data or the new, never none."""
    d = f"{data_path}/appendonlydir"
    return _sh(
        f"set -e; mkdir -p {d}; n=$(date +%s); base=appendonly.aof.$n.base.rdb; "
        f"cat > {d}/$base.tmp; mv {d}/$base.tmp {d}/$base; "
        f'printf "file %s seq %s type b\\n" "$base" "$n" > {d}/appendonly.aof.manifest.tmp; '
        f"chown --reference={data_path} {d} {d}/$base {d}/appendonly.aof.manifest.tmp; sync; "
        f"mv {d}/appendonly.aof.manifest.tmp {d}/appendonly.aof.manifest; "
        f'find {d} -type f ! -name "$base" ! -name appendonly.aof.manifest -delete; rm -f {data_path}/dump.rdb'
    )


def list_command() -> list[str]:
    """Postgres: the archive's table of contents read from stdin (`pg_restore --list`)."""
    return _sh("exec pg_restore --list")


def counts_command(kind: Kind, creds: Credentials, *, port: int | None = None) -> list[str]:
    """Prints `name<TAB>count` lines: rows per table (Postgres, MariaDB), keys per database (Redis)."""
    if kind.name == "postgres":
        sql = (
            "select format('%I.%I', n.nspname, c.relname) || chr(9) || "
            "(xpath('/row/c/text()', query_to_xml(format('select count(*) as c from %I.%I', n.nspname, c.relname), "
            "false, true, '')))[1]::text from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema') "
            "and n.nspname not like 'pg_toast%' order by 1"
        )
        return _sh(
            f"{_pg_env(creds)} exec psql -h 127.0.0.1 -U {creds.user} -d {creds.database} -XAtqc {shlex.quote(sql)}"
        )
    if kind.name == "mariadb":
        pw = shlex.quote(creds.password)
        client = f"mariadb -h 127.0.0.1 -u root --password={pw} -N -B {creds.database}"
        gen = (
            "SET SESSION group_concat_max_len = 16777216; SELECT GROUP_CONCAT(CONCAT('SELECT ', QUOTE(table_name), "
            "', COUNT(*) FROM `', REPLACE(table_name, '`', '``'), '`') SEPARATOR ' UNION ALL ') "
            "FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'"
        )
        return _sh(f'set -e; q=$({client} -e {shlex.quote(gen)}); [ -z "$q" ] || [ "$q" = NULL ] || {client} -e "$q"')
    cli = f"REDISCLI_AUTH={shlex.quote(creds.password)} redis-cli -h 127.0.0.1 -p {port or kind.port}"
    return _sh(f"set -e; {cli} info keyspace | tr -d '\\r' | sed -n 's/^\\(db[0-9]*\\):keys=\\([0-9]*\\).*/\\1\t\\2/p'")


def redis_load_command(creds: Credentials) -> list[str]:
    """In a scratch Redis container: the RDB on stdin loaded by a second server on a spare port,
    waited for until it answers (a file it cannot load stops it: the command fails)."""
    p = REDIS_SCRATCH_PORT
    return _sh(
        "set -e; mkdir -p /tmp/verify; cat > /tmp/verify/dump.rdb; "
        f"redis-server --port {p} --dir /tmp/verify --dbfilename dump.rdb --appendonly no --save '' "
        f"--requirepass {shlex.quote(creds.password)} --daemonize yes --logfile /tmp/verify/log; i=0; "
        f"until REDISCLI_AUTH={shlex.quote(creds.password)} redis-cli -p {p} ping 2>/dev/null | grep -q PONG; do "
        "i=$((i+1)); if [ $i -ge 600 ]; then tail -3 /tmp/verify/log >&2; exit 1; fi; sleep 0.1; done"
    )


def parse_counts(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, count = line.rpartition("\t")
        if sep and count.strip().isdigit():
            out[name] = int(count)
    return out


def compare_counts(before: dict[str, int], after: dict[str, int], restored: dict[str, int]) -> list[str]:
    """What differs between a restored copy and the source at dump time (empty: it matches).

    Counts were read just before and just after the dump: a table written meanwhile may hold any
    count between the two readings.
    """
    problems = []
    for name in sorted(set(before) | set(after) | set(restored)):
        lo = min(before.get(name, 0), after.get(name, 0))
        hi = max(before.get(name, 0), after.get(name, 0))
        got = restored.get(name, 0)
        if not lo <= got <= hi:
            want = str(lo) if lo == hi else f"{lo}..{hi}"
            problems.append(f"{name}: {got} restored, {want} at dump time")
    return problems


# ---- a dump file's first bytes


@dataclass(frozen=True)
class Sniffed:
    kind: str
    major: str | None  # the server major it was dumped from, when the file says


def _pg_header(head: bytes) -> Sniffed:
    """pg_dump's custom format: magic, archive version, int and offset sizes, format, compression,
    the creation time, then the database name, the server version and pg_dump's version."""
    try:
        vmaj, vmin = head[5], head[6]
        int_size = head[8]
        pos = 11

        def read_int() -> int:
            nonlocal pos
            sign = head[pos]
            raw = head[pos + 1 : pos + 1 + int_size]
            if len(raw) < int_size:
                raise IndexError
            pos += 1 + int_size
            value = int.from_bytes(raw, "little")
            return -value if sign else value

        def read_str() -> str:
            nonlocal pos
            n = read_int()
            if n < 0:
                return ""
            raw = head[pos : pos + n]
            if len(raw) < n:
                raise IndexError
            pos += n
            return raw.decode("utf-8", "replace")

        if (vmaj, vmin) >= (1, 15):
            pos += 1  # compression algorithm, one byte
        else:
            read_int()  # compression level
        for _ in range(7):  # tm_sec .. tm_isdst
            read_int()
        read_str()  # database name
        server, dumper = read_str(), read_str()
    except (IndexError, struct.error):
        raise InvalidInput("the file is cut short: not a whole Postgres dump") from None
    majors = [m.group(1) for v in (server, dumper) if (m := re.match(r"(\d+)", v))]
    return Sniffed("postgres", max(majors, key=int) if majors else None)


def _redis_header(head: bytes) -> Sniffed:
    at = head.find(b"redis-ver")
    if at >= 0:
        start = at + len(b"redis-ver")
        if start < len(head) and head[start] >> 6 == 0:
            n = head[start] & 0x3F
            version = head[start + 1 : start + 1 + n].decode("ascii", "replace")
            if m := re.match(r"(\d+)\.", version):
                return Sniffed("redis", m.group(1))
    rdb = int(head[5:9]) if head[5:9].isdigit() else 0
    return Sniffed("redis", {10: "7", 11: "7", 12: "8"}.get(rdb))


def sniff(head: bytes) -> Sniffed:
    """A dump's kind and source major from its first bytes; InvalidInput if it is none lbsolo makes."""
    if head.startswith(b"PGDMP"):
        return _pg_header(head)
    if head.startswith(b"REDIS") and head[5:9].isdigit():
        return _redis_header(head)
    text = head[:SNIFF_BYTES].decode("utf-8", "replace")
    if text.startswith(("-- MariaDB dump", "-- MySQL dump", "/*M!999999")) or "-- MariaDB dump" in text[:200]:
        m = re.search(r"-- Server version\s+(\d+\.\d+)", text)
        return Sniffed("mariadb", m.group(1) if m else None)
    if head.startswith(b"\x1f\x8b"):
        raise InvalidInput("the file is gzip-compressed: decompress it first (gunzip)")
    if not head:
        raise InvalidInput("the file is empty")
    raise InvalidInput("the file is not a dump lbsolo can restore (pg_dump -Fc, a Redis RDB, or mariadb-dump SQL)")


def check_restorable(found: Sniffed, kind: Kind, version: str, what: str = "the dump") -> None:
    """Refuse a dump of another kind, or of a newer major than the add-on runs."""
    if found.kind != kind.name:
        raise InvalidInput(f"{what} is a {found.kind} dump; this add-on is {kind.name}")
    have = kind.major(version)
    if found.major is not None and major_tuple(found.major) > major_tuple(have):
        raise InvalidInput(
            f"{what} comes from {kind.name} {found.major}, newer than this add-on's {have}: "
            "restore it into an add-on of that version or later"
        )


def check_complete(kind: Kind, tail: bytes) -> None:
    """A dump's last bytes say whether it is whole: an RDB ends with its EOF opcode and checksum,
    a mariadb-dump with its 'Dump completed' line. (Postgres: pg_restore --list reads it all.)"""
    if kind.name == "redis" and (len(tail) < 9 or tail[-9] != 0xFF):
        raise InvalidInput("the file is cut short: not a whole Redis RDB")
    if kind.name == "mariadb" and b"-- Dump completed" not in tail[-200:]:
        raise InvalidInput("the file is cut short: not a whole mariadb-dump (no 'Dump completed' line)")


def manifest(
    *,
    backup_id: str,
    addon: str,
    kind: Kind,
    version: str,
    created: float,
    size: int,
    sha256: str,
    counts: dict[str, int],
    counts_after: dict[str, int],
    source: str = "backup",
) -> dict[str, Any]:
    """The JSON kept beside a backup file."""
    return {
        "id": backup_id,
        "addon": addon,
        "kind": kind.name,
        "version": version,
        "major": kind.major(version),
        "created": created,
        "size": size,
        "sha256": sha256,
        "counts": counts,
        "counts_after": counts_after,
        "source": source,
        "verified": None,  # None: not yet; then True, or False with verify_error
        "verify_error": None,
        "verified_at": None,
    }


# ---- schedules: cron expressions, read by croniter (imported here only, when a schedule is)


def check_schedule(schedule: str) -> str:
    """A cron expression of five fields (minute hour day month weekday), or @daily and its kin."""
    text = " ".join(str(schedule).split()) if isinstance(schedule, str) else ""
    if not (text in CRON_ALIASES or len(text.split(" ")) == 5):
        raise InvalidInput(
            f"invalid schedule {schedule!r}: five cron fields (minute hour day month weekday), "
            'e.g. "0 3 * * *", or @hourly, @daily, @weekly, @monthly'
        )
    from croniter import croniter

    if not croniter.is_valid(text):
        raise InvalidInput(f"invalid schedule {schedule!r}: not a cron expression croniter reads")
    return text


def check_keep(keep: int) -> int:
    if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= MAX_KEEP:
        raise InvalidInput(f"keep must be a number of backups from 1 to {MAX_KEEP}, got {keep!r}")
    return keep


def next_run(schedule: str, after: float, tz: tzinfo | None = None) -> float:
    """The first time after `after` (epoch seconds) the schedule names, in time zone `tz`
    (None: this machine's)."""
    from croniter import croniter

    start = datetime.fromtimestamp(after, tz) if tz is not None else datetime.fromtimestamp(after).astimezone()
    return float(croniter(schedule, start).get_next(float))


def previous_run(schedule: str, before: float, tz: tzinfo | None = None) -> float:
    """The last time at or before `before` (epoch seconds) the schedule names, in time zone `tz`."""
    from croniter import croniter

    start = datetime.fromtimestamp(before, tz) if tz is not None else datetime.fromtimestamp(before).astimezone()
    if croniter.match(schedule, start) and start.second == 0 and start.microsecond == 0:
        return before
    return float(croniter(schedule, start).get_prev(float))


def schedule_interval(schedule: str, at: float) -> float:
    """The gap between the schedule's two runs that follow `at`: how late is 'missed'."""
    first = next_run(schedule, at)
    return next_run(schedule, first) - first


def schedule_due(schedule: str, since: float, *later: float | None) -> float:
    """When a schedule's next run is due: its first time after the latest of `since` (when the
    schedule was set) and `later` (the last scheduled backup, the last attempt; None: none yet).
    In the past: missed while the daemon was down, due now, and run once however many were missed."""
    return next_run(schedule, max([since, *(t for t in later if t is not None)]))


def schedule_missed(schedule: str, due: float, now: float) -> bool:
    """Whether a due run is late by more than the schedule's interval: it was missed, not just due."""
    return now - due > schedule_interval(schedule, due)


def to_prune(scheduled: Iterable[dict[str, Any]], keep: int) -> list[str]:
    """Which scheduled backups go so that `keep` stay: the oldest, but never the newest verified
    one while none of those kept is verified (a run of failed backups keeps the last good one)."""
    newest_first = sorted(scheduled, key=lambda m: (float(m.get("created") or 0), str(m["id"])), reverse=True)
    kept, rest = newest_first[:keep], newest_first[keep:]
    if not any(m.get("verified") is True for m in kept):
        good = next((m for m in rest if m.get("verified") is True), None)
        rest = [m for m in rest if m is not good]
    return [str(m["id"]) for m in rest]
