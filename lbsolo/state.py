"""lbsolo's state: a TinyDB document store, written only by the daemon.

The storage below replaces the database file atomically (write a temporary file, fsync,
rename, fsync the directory), so a `kill -9` at any moment leaves either the old or the new
file, both readable. A write that fails (a full disk) raises StorageError (DiskFull) and
leaves both the file and what the daemon reads unchanged. This is the only module that imports tinydb.

The file carries a schema version (table `_meta`). Opening a file of an earlier version migrates
it, one step per version, after copying it aside (`state.json.schema-<N>.bak`); a file of a later
version (a newer lbsolo) is refused, never guessed at. A change of the layout adds a step to
MIGRATIONS, with a test from a fixture of the version before.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import operator
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from lbsolo.cron_plan import CronJob, CronRun
from lbsolo.drains import Drain
from lbsolo.errors import Conflict, InvalidInput, NotFound, StorageError
from lbsolo.models import App, Build, Release, StaticRoute
from lbsolo.models_addons import Addon

Data = dict[str, dict[str, Any]]  # TinyDB's document layout: table -> document id -> document


def _stamp(data: Data) -> Data:
    """0 -> 1: files from before the version existed have today's layout; only the stamp is new."""
    return data


def _addons(data: Data) -> Data:
    """1 -> 2: the add-ons table (databases lbsolo runs for apps), empty."""
    data.setdefault("addons", {})
    return data


def _cron(data: Data) -> Data:
    """2 -> 3: the scheduled jobs added by cron:add and the runs of every job, empty."""
    data.setdefault("cron_jobs", {})
    data.setdefault("cron_runs", {})
    return data


def _token_roles(data: Data) -> Data:
    """3 -> 4: extra tokens get a role and the apps they are limited to: every token from before
    roles could do everything, so it stays an admin over every app."""
    for row in (data.get("tokens") or {}).values():
        row.setdefault("role", "admin")
        row.setdefault("apps", [])
    return data


def _drains(data: Data) -> Data:
    """4 -> 5: the apps' log drains (drains:add), empty."""
    data.setdefault("drains", {})
    return data


#: MIGRATIONS[n] turns a file of schema n into schema n + 1. Pure: data in, data out.
MIGRATIONS: list[Any] = [_stamp, _addons, _cron, _token_roles, _drains]
SCHEMA = len(MIGRATIONS)
META = "_meta"


def schema_of(data: Data) -> int:
    """The schema version a file's data says it has (0: written before versions existed)."""
    rows = list((data.get(META) or {}).values())
    return int(rows[0].get("schema", 0)) if rows else 0


def migrate(data: Data) -> Data:
    """Bring `data` to SCHEMA, one step per version; a later version is refused."""
    version = schema_of(data)
    if version > SCHEMA:
        raise InvalidInput(
            f"lbsolo's state is of schema {version}, written by a newer lbsolo; this one reads up to {SCHEMA}: "
            "run the newer lbsolo (or restore a backup made for this version)"
        )
    for step in MIGRATIONS[version:]:
        data = step(data)
    data[META] = {"1": {"schema": SCHEMA}}
    return data


class AtomicJSONStorage(Storage):
    """TinyDB storage that never leaves a half-written file behind.

    Reads are served from memory: the daemon is the only writer, so the file is read once.
    """

    def __init__(self, path: str | os.PathLike[str], **_: Any) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data: dict[str, dict[str, Any]] | None = None
        self._payload = b""  # what the file holds, as write() would make it
        self.writes = 0  # files written by this process (the scale benchmark and tests count them)
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(encoding="utf-8") as f:
                self._data = json.load(f)
            self._payload = json.dumps(self._data, separators=(",", ":"), sort_keys=True).encode()

    def read(self) -> dict[str, dict[str, Any]] | None:
        # TinyDB changes what read() returns before calling write(): each table and each document
        # it gets is a copy, so a failed write cannot leave memory ahead of disk. One level per
        # document is enough: TinyDB replaces a document's fields, never edits a value inside
        # one, and what lbsolo reads goes through rows(), which copies all the way down.
        if self._data is None:
            return None
        return {name: {i: dict(doc) for i, doc in docs.items()} for name, docs in self._data.items()}

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        """Replace the file with `data`; if that fails (a full disk), the old file and memory stay as they were.

        A write that changes nothing (TinyDB's upsert first tries an update that matches nothing)
        touches no file.
        """
        payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        if payload == self._payload:
            return
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise StorageError.writing("lbsolo's state", self.path, e) from e
            raise
        # `data` is TinyDB's copy from read(), which nothing else holds: it becomes the memory.
        self._data, self._payload = data, payload
        self.writes += 1
        # The new file is in place and readable: a failure to make the rename durable is not
        # worth failing a change that has already happened.
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def close(self) -> None:
        pass

    def rows(self, table: str, match: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """Copies of a table's documents (those `match` accepts), read from memory.

        A read copies only what it returns, not the whole database as TinyDB's own read does.
        """
        docs = (self._data or {}).get(table, {}).values()
        return [copy.deepcopy(d) for d in docs if match is None or match(d)]

    def exists(self, table: str, match: Callable[[dict[str, Any]], bool]) -> bool:
        return any(match(d) for d in (self._data or {}).get(table, {}).values())


class State:
    """Typed access to lbsolo's tables. Thread-safe; call it through asyncio.to_thread."""

    def __init__(self, path: Path) -> None:
        self._db = TinyDB(path, storage=AtomicJSONStorage)
        self._memory: AtomicJSONStorage = self._db.storage  # type: ignore[assignment]
        self._upgrade(Path(path))
        self._lock = threading.Lock()
        self._apps = self._db.table("apps")
        self._releases = self._db.table("releases")
        self._builds = self._db.table("builds")
        self._routes = self._db.table("routes")  # static routes
        self._addons = self._db.table("addons")

    def close(self) -> None:
        self._db.close()

    def _upgrade(self, path: Path) -> None:
        """Migrate the file to SCHEMA (after copying it aside), or stamp a new one."""
        storage: AtomicJSONStorage = self._db.storage  # type: ignore[assignment]
        data = storage.read() or {}
        version = schema_of(data)
        if version == SCHEMA and data:
            return
        if version < SCHEMA and any(data.get(t) for t in data if t != META):
            backup = path.with_name(f"{path.name}.schema-{version}.bak")
            try:
                backup.write_bytes(path.read_bytes())
                os.chmod(backup, 0o600)
            except OSError as e:
                raise StorageError.writing("a copy of lbsolo's state before its migration", backup, e) from e
        storage.write(migrate(data))

    def _upsert(self, table: str, doc: dict[str, Any], **key: Any) -> None:
        """Update the document whose fields equal `key`, or insert `doc`: one write either way
        (TinyDB's own upsert serialises the whole database twice to insert)."""
        if self._memory.exists(table, lambda d: all(d.get(k) == v for k, v in key.items())):
            q = Query()
            cond = functools.reduce(operator.and_, (q[k] == v for k, v in key.items()))
            self._db.table(table).update(doc, cond)
        else:
            self._db.table(table).insert(doc)

    # apps
    def list_apps(self) -> list[App]:
        with self._lock:
            rows = self._memory.rows("apps")
        return sorted((App.from_dict(d) for d in rows), key=lambda a: a.name)

    def find_app(self, name: str) -> App | None:
        with self._lock:
            rows = self._memory.rows("apps", lambda d: d.get("name") == name)
        return App.from_dict(rows[0]) if rows else None

    def get_app(self, name: str) -> App:
        app = self.find_app(name)
        if app is None:
            raise NotFound(f"unknown app {name!r} (create it with: lbsolo apps:create {name})")
        return app

    def create_app(self, app: App) -> App:
        with self._lock:
            if self._apps.contains(Query().name == app.name):
                raise Conflict(f"app {app.name!r} already exists")
            # Apps and static routes share <name>.<domain>; checked under the same lock as the insert.
            if self._routes.contains(Query().name == app.name):
                raise Conflict(f"{app.name!r} is a static route (remove it first: lbsolo routes:remove {app.name})")
            if self._addons.contains(Query().name == app.name):
                raise Conflict(f"{app.name!r} is an add-on; an app cannot take its name")
            self._apps.insert(app.to_dict())
        return app

    def save_app(self, app: App) -> None:
        with self._lock:
            self._upsert("apps", app.to_dict(), name=app.name)

    def delete_app(self, name: str) -> None:
        q = Query()
        with self._lock:
            self._apps.remove(q.name == name)
            self._releases.remove(q.app == name)
            self._builds.remove(q.app == name)
            self._db.table("cron_jobs").remove(q.app == name)
            self._db.table("cron_runs").remove(q.app == name)
            self._db.table("drains").remove(q.app == name)

    # releases
    def list_releases(self, app: str) -> list[Release]:
        with self._lock:
            rows = self._memory.rows("releases", lambda d: d.get("app") == app)
        return sorted((Release.from_dict(d) for d in rows), key=lambda r: r.version)

    def recent_releases(self, limit: int) -> list[Release]:
        """The newest releases of all apps, newest first (one read, whatever the number of apps)."""
        with self._lock:
            rows = self._memory.rows("releases")
        return sorted((Release.from_dict(d) for d in rows), key=lambda r: r.created_at, reverse=True)[:limit]

    def get_release(self, app: str, version: int) -> Release:
        with self._lock:
            rows = self._memory.rows("releases", lambda d: d.get("app") == app and d.get("version") == version)
        if not rows:
            raise NotFound(f"app {app!r} has no release v{version}")
        return Release.from_dict(rows[0])

    def next_version(self, app: str) -> int:
        return max((r.version for r in self.list_releases(app)), default=0) + 1

    def save_release(self, release: Release) -> None:
        with self._lock:
            self._upsert("releases", release.to_dict(), app=release.app, version=release.version)

    # static routes
    def list_routes(self) -> list[StaticRoute]:
        with self._lock:
            rows = self._memory.rows("routes")
        return sorted((StaticRoute.from_dict(d) for d in rows), key=lambda r: r.name)

    def add_route(self, route: StaticRoute) -> StaticRoute:
        q = Query()
        with self._lock:
            if self._apps.contains(q.name == route.name):
                raise Conflict(f"{route.name!r} is an app; a static route cannot take its name")
            if self._routes.contains(q.name == route.name):
                raise Conflict(f"static route {route.name!r} already exists")
            if self._addons.contains(q.name == route.name):
                raise Conflict(f"{route.name!r} is an add-on; a static route cannot take its name")
            self._routes.insert(route.to_dict())
        return route

    def delete_route(self, name: str) -> None:
        with self._lock:
            removed = self._routes.remove(Query().name == name)
        if not removed:
            raise NotFound(f"no static route {name!r}")

    # add-ons
    def list_addons(self) -> list[Addon]:
        with self._lock:
            rows = self._memory.rows("addons")
        return sorted((Addon.from_dict(d) for d in rows), key=lambda a: a.name)

    def find_addon(self, name: str) -> Addon | None:
        with self._lock:
            rows = self._memory.rows("addons", lambda d: d.get("name") == name)
        return Addon.from_dict(rows[0]) if rows else None

    def get_addon(self, name: str) -> Addon:
        addon = self.find_addon(name)
        if addon is None:
            raise NotFound(f"no add-on {name!r} (see: lbsolo addons)")
        return addon

    def create_addon(self, addon: Addon) -> Addon:
        """Insert a new add-on; its name must be free among apps, static routes and add-ons."""
        q = Query()
        with self._lock:
            if self._addons.contains(q.name == addon.name):
                raise Conflict(f"add-on {addon.name!r} already exists")
            if self._apps.contains(q.name == addon.name):
                raise Conflict(f"{addon.name!r} is an app; an add-on cannot take its name")
            if self._routes.contains(q.name == addon.name):
                raise Conflict(f"{addon.name!r} is a static route; an add-on cannot take its name")
            self._addons.insert(addon.to_dict())
        return addon

    def save_addon(self, addon: Addon) -> None:
        with self._lock:
            self._upsert("addons", addon.to_dict(), name=addon.name)

    def delete_addon(self, name: str) -> None:
        with self._lock:
            self._addons.remove(Query().name == name)

    # scheduled jobs (those of cron:add; lbsolo.toml's are on the releases) and every job's runs
    def list_cron_jobs(self, app: str | None = None) -> list[CronJob]:
        with self._lock:
            rows = self._memory.rows("cron_jobs", lambda d: app is None or d.get("app") == app)
        return sorted((CronJob.from_dict(d) for d in rows), key=lambda j: (j.app, j.created_at, j.id))

    def add_cron_job(self, job: CronJob) -> None:
        with self._lock:
            self._db.table("cron_jobs").insert(job.to_dict())

    def delete_cron_job(self, app: str, job_id: str) -> bool:
        q = Query()
        with self._lock:
            return bool(self._db.table("cron_jobs").remove((q.app == app) & (q.id == job_id)))

    def list_cron_runs(self, app: str | None = None, job: str | None = None) -> list[CronRun]:
        def match(d: dict[str, Any]) -> bool:
            return (app is None or d.get("app") == app) and (job is None or d.get("job") == job)

        with self._lock:
            rows = self._memory.rows("cron_runs", match)
        return sorted((CronRun.from_dict(d) for d in rows), key=lambda r: (r.started, r.id))

    def save_cron_run(self, run: CronRun) -> None:
        with self._lock:
            self._upsert("cron_runs", run.to_dict(), id=run.id)

    def add_cron_runs(self, runs: list[CronRun]) -> None:
        """New runs (each id new), in one write: a minute's fifty due jobs cost one, not fifty."""
        if runs:
            with self._lock:
                self._db.table("cron_runs").insert_multiple([r.to_dict() for r in runs])

    def delete_cron_runs(self, ids: list[str]) -> None:
        with self._lock:
            self._db.table("cron_runs").remove(Query().id.one_of(ids))

    # log drains
    def list_drains(self, app: str | None = None) -> list[Drain]:
        with self._lock:
            rows = self._memory.rows("drains", lambda d: app is None or d.get("app") == app)
        return sorted((Drain.from_dict(d) for d in rows), key=lambda d: (d.app, d.created_at, d.id))

    def add_drain(self, drain: Drain) -> None:
        with self._lock:
            self._db.table("drains").insert(drain.to_dict())

    def delete_drain(self, app: str, drain_id: str) -> bool:
        q = Query()
        with self._lock:
            return bool(self._db.table("drains").remove((q.app == app) & (q.id == drain_id)))

    # builds
    def save_build(self, build: Build) -> None:
        with self._lock:
            self._upsert("builds", build.to_dict(), id=build.id)

    def list_builds(self, app: str) -> list[Build]:
        with self._lock:
            rows = self._memory.rows("builds", lambda d: d.get("app") == app)
        return sorted((Build.from_dict(d) for d in rows), key=lambda b: b.created_at)

    def delete_builds(self, app: str, ids: list[str]) -> None:
        q = Query()
        with self._lock:
            self._builds.remove((q.app == app) & q.id.one_of(ids))

    # webhooks (plain dicts: the notifier owns their shape)
    def list_webhooks(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._memory.rows("webhooks")
        return sorted((dict(r) for r in rows), key=lambda r: (r.get("created_at", 0), r["id"]))

    def add_webhook(self, doc: dict[str, Any]) -> None:
        with self._lock:
            table = self._db.table("webhooks")
            if table.contains(Query().id == doc["id"]):
                raise Conflict(f"webhook {doc['id']} already exists")
            table.insert(dict(doc))

    def delete_webhook(self, webhook_id: str) -> bool:
        with self._lock:
            return bool(self._db.table("webhooks").remove(Query().id == webhook_id))

    # extra API tokens (plain dicts holding only a hash of each token)
    def list_tokens(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._memory.rows("tokens")
        return sorted((dict(r) for r in rows), key=lambda r: (r.get("created_at", 0), r["id"]))

    def add_token(self, doc: dict[str, Any]) -> None:
        q = Query()
        with self._lock:
            table = self._db.table("tokens")
            if table.contains((q.id == doc["id"]) | (q.name == doc["name"])):
                raise Conflict(f"a token named {doc['name']!r} already exists")
            table.insert(dict(doc))

    def delete_token(self, token_id: str) -> bool:
        with self._lock:
            return bool(self._db.table("tokens").remove(Query().id == token_id))

    def touch_token(self, token_id: str, ts: float) -> None:
        with self._lock:
            self._db.table("tokens").update({"last_used": ts}, Query().id == token_id)

    # the platform's own settings, one document each (plain dicts: their owner keeps their shape).
    # No migration: like webhooks and tokens, an absent table reads as empty.
    def get_setting(self, name: str) -> dict[str, Any]:
        with self._lock:
            rows = self._memory.rows("settings", lambda d: d.get("name") == name)
        return {k: v for k, v in rows[0].items() if k != "name"} if rows else {}

    def save_setting(self, name: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._upsert("settings", {**doc, "name": name}, name=name)

    # alert incidents (plain dicts: lbsolo.alerts owns their shape). No migration: like the
    # settings, an absent table reads as empty.
    def list_incidents(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._memory.rows("alerts")
        return sorted((dict(r) for r in rows), key=lambda r: (r.get("opened_at", 0), r["id"]))

    def save_incidents(self, docs: list[dict[str, Any]], forget: list[str]) -> None:
        """Insert or update incidents (by id) and forget the ids in `forget` (the history's bound)."""
        q = Query()
        with self._lock:
            for doc in docs:
                self._upsert("alerts", dict(doc), id=doc["id"])
            if forget:
                self._db.table("alerts").remove(q.id.one_of(forget))

    # ended web UI sessions: their ids, until they would have expired anyway
    def revoked_sessions(self) -> dict[str, int]:
        with self._lock:
            rows = self._memory.rows("revoked_sessions")
        return {r["id"]: int(r["expires"]) for r in rows}

    def revoke_session(self, session_id: str, expires: int, now: float) -> None:
        """Record an ended session; the ones expired by `now` are dropped in passing."""
        q = Query()
        with self._lock:
            table = self._db.table("revoked_sessions")
            table.remove(q.expires <= now)
            table.upsert({"id": session_id, "expires": expires}, q.id == session_id)
