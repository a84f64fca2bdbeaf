"""What an add-on upgrade may do, decided before anything runs; and the write fence it puts up.

- A new version of the same major (postgres 15 -> 15.8, mariadb 10.11 -> 10.11.9) reads the
  data files as they are: the container is recreated on the same volume ("in place").
- A new major cannot: Postgres refuses a data directory of another major, and the peers'
  users lost databases to exactly that image bump. It is done only when asked (`--via-dump`):
  dump, a new add-on of the new version restored from it, counts compared, attachments moved,
  the old one kept stopped until destroyed.
- Going back a major is refused either way: no kind loads a newer major's dump.

While the dump runs and the apps move, the old database is fenced read-only for its apps
(Postgres: the database's default transactions, sessions ended so they reconnect under it;
MariaDB: the server's read_only; Redis: the default user's write commands), so a write made
after the dump fails loudly instead of vanishing with the old add-on. The fence comes down
if the upgrade stops before the switch.

Pure: no engine, no state; core_addon_upgrade.py runs what these return.
"""

from __future__ import annotations

import re
from enum import StrEnum

from lbsolo.addon_dumps import major_tuple
from lbsolo.addon_kinds import Credentials, Kind, db_identifier
from lbsolo.errors import Conflict, InvalidInput


class UpgradeWay(StrEnum):
    IN_PLACE = "in-place"
    VIA_DUMP = "via-dump"


class UpgradeStep(StrEnum):
    """Where a major upgrade is; saved on the old add-on's record after each step."""

    DUMPING = "dumping"  # fenced, dumping: stopping here takes the fence down and removes the new add-on
    RESTORING = "restoring"  # the new add-on made and being loaded: likewise
    SWITCHING = "switching"  # the new add-on verified: apps move to it; stopping here finishes the move


def way(k: Kind, current: str, target: str, *, via_dump: bool) -> UpgradeWay:
    """How `current` becomes `target`, or why it cannot (InvalidInput / Conflict)."""
    target = k.check_version(target)
    if target == current:
        raise Conflict(f"it already runs {k.name} {current}")
    old, new = major_tuple(k.major(current)), major_tuple(k.major(target))
    if new < old:
        raise InvalidInput(
            f"{k.name} {target} is older than {current}: a dump of a newer major does not load into an older one"
        )
    if new == old:
        if via_dump:
            raise InvalidInput(f"{current} -> {target} is the same major: it upgrades in place, without --via-dump")
        return UpgradeWay.IN_PLACE
    if not via_dump:
        raise Conflict(
            f"{k.name} {current} -> {target} is a major upgrade: {target} cannot read {current}'s data files. "
            f"Run it with --via-dump (dump, restore into a new add-on, verify, move the apps)"
        )
    return UpgradeWay.VIA_DUMP


def upgraded_name(name: str, k: Kind, target: str) -> str:
    """The new add-on's default name: shop-db -> shop-db-17 (mariadb 11.4: shop-db-11-4); a name
    that already ends in the old major's suffix has it replaced (shop-db-15 -> shop-db-17)."""
    suffix = k.major(target).replace(".", "-")
    base = re.sub(r"-[0-9]+(-[0-9]+)?$", "", name) or name
    return f"{base}-{suffix}"


def _pg_end_sessions(db: str) -> str:
    """End the database's other client sessions that began before this script: each once idle
    (a query under way finishes first), the rest after 10 s; then wait until they are gone."""
    theirs = f"datname = '{db}' AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND backend_start < t0"
    return f"""DO $lbsolo$
DECLARE
    t0 timestamptz := clock_timestamp();
    left_ int;
BEGIN
    FOR i IN 1..150 LOOP
        PERFORM pg_stat_clear_snapshot();
        IF i <= 100 THEN
            PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE {theirs} AND state <> 'active';
        ELSE
            PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE {theirs};
        END IF;
        PERFORM pg_stat_clear_snapshot();
        SELECT count(*) INTO left_ FROM pg_stat_activity WHERE {theirs};
        EXIT WHEN left_ = 0;
        PERFORM pg_sleep(0.1);
    END LOOP;
    IF left_ > 0 THEN
        RAISE EXCEPTION '% sessions of % did not end', left_, '{db}';
    END IF;
END $lbsolo$;
"""


def fence(k: Kind, creds: Credentials) -> str:
    """The admin script that makes the add-on read-only for its apps (admin_command's stdin)."""
    if k.name == "postgres":
        db = db_identifier(creds.database)
        # New sessions start read-only; the ones from before end (see _pg_end_sessions).
        return f'ALTER DATABASE "{db}" SET default_transaction_read_only = on;\n' + _pg_end_sessions(db)
    if k.name == "mariadb":
        # Waits for open transactions to end, but not for ever (the upgrade then fails, undone).
        return "SET SESSION lock_wait_timeout = 10;\nSET GLOBAL read_only = ON;\n"
    return "ACL SETUSER default -@write\n"


def unfence(k: Kind, creds: Credentials) -> str:
    """The admin script that takes the fence down. Postgres sessions opened under the fence
    would stay read-only: they are ended too (once idle), and reconnect writable."""
    if k.name == "postgres":
        db = db_identifier(creds.database)
        return (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE;\n"
            f'ALTER DATABASE "{db}" RESET default_transaction_read_only;\n' + _pg_end_sessions(db)
        )
    if k.name == "mariadb":
        return "SET GLOBAL read_only = OFF;\n"
    return "ACL SETUSER default +@write\n"
