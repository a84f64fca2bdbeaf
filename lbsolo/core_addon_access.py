"""Who reaches an add-on and with what: expose/unexpose, credentials:rotate, promote, shell.

- expose publishes the add-on's port on this machine (127.0.0.1 unless the caller says
  `public`): with Docker that is a new container on the same volume, so the database restarts
  once (its apps reconnect); unexpose takes the port away the same way.
- rotate gives Postgres and MariaDB a second user with the old one's rights (Redis: a second
  password), rolls every attached app onto a URL with it (each a zero-downtime release, which
  ends only once the old replicas are drained and stopped), and only then removes the old
  user (password). Its progress is saved on the record after each step (`next_*` while apps
  move, `retiring_*` while the old one goes), so a daemon killed in the middle finishes it on
  its next start; an app whose release fails stops it with both credentials working.
- promote makes an add-on the app's primary URL var (DATABASE_URL), in one release.
- shell runs the kind's client in the add-on's container, its input and output streamed.

The kinds' scripts are addon_kinds.py's; the container work goes through the engine's Services
part. This module owns no HTTP, terminal or Docker detail, and never prints.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import queue
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

from lbsolo import addon_kinds as kinds
from lbsolo.addon_kinds import Credentials, Kind, kind_of, new_password
from lbsolo.build import LogBuffer
from lbsolo.core_context import CoreContext
from lbsolo.core_rollout import DeployJob
from lbsolo.engine import Services
from lbsolo.errors import Conflict, DeployFailed, EngineError, InvalidInput, LbsoloError, NotFound
from lbsolo.models_addons import Addon, AddonStatus

log = logging.getLogger("lbsolo.core")

SetConfig = Callable[..., Awaitable[DeployJob | None]]
WaitReady = Callable[[Addon], Awaitable[None]]

NEXT, RETIRING = ("next_user", "next_password"), ("retiring_user", "retiring_password")


# ---- the decisions, pure
def check_exposure(address: str, port: int | None, public: bool) -> tuple[str, int | None]:
    """The address and port to publish on; InvalidInput for anything else.

    Only a loopback address is private to this machine: any other (0.0.0.0 above all) lets
    other machines try the database's password, so it needs `public`.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise InvalidInput(
            f"{address!r} is not an IP address: use 127.0.0.1 (the default), or 0.0.0.0 with --public"
        ) from None
    if not ip.is_loopback and not public:
        raise InvalidInput(
            f"{address} can be reached from other machines: add --public if that is what you want (else use 127.0.0.1)"
        )
    if port is not None and (isinstance(port, bool) or not 1 <= port <= 65535):
        raise InvalidInput(f"port {port} is out of range: use 1 to 65535 (or leave it out for a free one)")
    return str(ip), port


def promotion(
    app: str, name: str, primary: str, held: dict[str, str], config: Iterable[str]
) -> tuple[dict[str, str], list[str]]:
    """Which add-on gets which var of `app` when `name` becomes its `primary`, and which var is unset.

    `held` maps each add-on attached to the app to its var. The add-on that held the primary
    takes the promoted one's old var (nothing is lost); a primary var the user set by hand is
    not overwritten.
    """
    mine = held.get(name)
    if mine is None:
        raise NotFound(f"{name} is not attached to {app}: attach it first (lbsolo addons:attach {name} --app {app})")
    if mine == primary:
        raise Conflict(f"{name} already is {app}'s {primary}")
    holder = next((a for a, var in held.items() if var == primary), None)
    if holder is not None:
        return {name: primary, holder: mine}, []
    if primary in set(config):
        raise Conflict(f"{app}'s {primary} was set by hand, not by an add-on: unset it first, then promote")
    return {name: primary}, [mine]


class ShellSession:
    """One addons:shell: input fed in by the API as its request body arrives, output read as it comes.

    The engine's exec runs on a thread; its output crosses into the loop through a bounded
    queue (a slow reader holds the exec back, memory stays bounded). close() ends it all.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._input: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._output: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(maxsize=64)
        self._hang_up: Callable[[], None] | None = None
        self.closed = False
        self.exit_code: int | None = None
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None

    def feed(self, data: bytes) -> None:
        if data and not self.closed:
            self._input.put(data)

    def end_input(self) -> None:
        self._input.put(None)

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        """(stream, bytes) pieces until the process ends."""
        while (item := await self._output.get()) is not None:
            yield item

    def close(self) -> None:
        self.closed = True
        self.end_input()
        if self._hang_up is not None:
            self._hang_up()
        while not self._output.empty():  # frees a writer blocked on a full queue
            self._output.get_nowait()

    # on the engine's thread
    def stdin(self) -> Iterator[bytes]:
        while (piece := self._input.get()) is not None:
            yield piece

    def started(self, hang_up: Callable[[], None]) -> None:
        self._hang_up = hang_up
        if self.closed:
            hang_up()

    def emit(self, stream: int, data: bytes) -> None:
        future = asyncio.run_coroutine_threadsafe(self._output.put((stream, data)), self._loop)
        while not self.closed:
            try:
                future.result(timeout=1)
                return
            except concurrent.futures.TimeoutError:
                continue
        future.cancel()

    async def finish(self) -> None:
        while True:
            try:
                self._output.put_nowait(None)
                return
            except asyncio.QueueFull:
                if self.closed:
                    self._output.get_nowait()
                else:
                    await asyncio.sleep(0.05)


class AddonAccess:
    """The access use cases of add-ons, composed by core_addons.Addons (which passes its own
    readiness wait: a replaced container is waited for as a new one is)."""

    def __init__(self, ctx: CoreContext, services: Services, set_config: SetConfig, wait_ready: WaitReady) -> None:
        self.ctx = ctx
        self.services = services
        self.set_config = set_config
        self.wait_ready = wait_ready

    async def _running(self, name: str, doing: str) -> Addon:
        addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
        refuse_while_upgrading(addon, doing)
        if addon.status != AddonStatus.RUNNING:
            raise Conflict(f"{name} is {addon.status}, not running: cannot {doing} it")
        record = await asyncio.to_thread(self.services.find_service, name)
        if record is None or not record["running"] or record["state"] == "paused":  # paused: no exec
            state = "missing" if record is None else record["state"]
            raise Conflict(f"{name}'s container is {state}: cannot {doing} it now")
        return addon

    @staticmethod
    def credentials(addon: Addon) -> Credentials:
        return Credentials.from_dict(addon.credentials)

    # ---- expose
    async def expose(
        self, name: str, *, address: str = "127.0.0.1", port: int | None = None, public: bool = False
    ) -> dict[str, Any]:
        """Publish the add-on's port on this machine; the database restarts once."""
        address, port = check_exposure(address, port, public)
        async with self.ctx.lock(name):
            addon = await self._running(name, "expose")
            k = kind_of(addon.kind)
            same = addon.exposed.get("address") == address
            if addon.exposed and same and port in (None, addon.exposed.get("port")):
                return self.exposure(addon)  # already so: no restart
            if not (same and port == addon.exposed.get("port")):  # (its own port is taken, by itself)
                where = await asyncio.to_thread(self.services.host_port_state, address, port or 0)
                if where == "in use":
                    raise Conflict(f"port {port} on {address} is in use: pick another with --port")
                if where == "not here":
                    raise InvalidInput(f"{address} is not an address of this machine")
            addon.exposed = await self.recreate(addon, (k.port, address, port))
            await asyncio.to_thread(self.ctx.state.save_addon, addon)
            return self.exposure(addon)

    async def unexpose(self, name: str) -> dict[str, Any]:
        async with self.ctx.lock(name):
            addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
            if not addon.exposed:
                raise Conflict(f"{name} is not exposed")
            await self._running(name, "unexpose")
            await self.recreate(addon, None)
            addon.exposed = {}
            await asyncio.to_thread(self.ctx.state.save_addon, addon)
            return self.exposure(addon)

    def exposure(self, addon: Addon) -> dict[str, Any]:
        """Where the add-on is published: its URL there (password masked), and whether other machines reach it."""
        out: dict[str, Any] = {"name": addon.name, "exposed": dict(addon.exposed)}
        if addon.exposed:
            ip = ipaddress.ip_address(addon.exposed["address"])
            host = f"[{ip}]" if ip.version == 6 else str(ip)
            creds = self.credentials(addon)
            masked = Credentials(creds.user, "********", creds.database)
            out["exposed_url"] = kind_of(addon.kind).url(masked, host, addon.exposed["port"])
            out["public"] = not ip.is_loopback
        return out

    async def recreate(self, addon: Addon, publish: tuple[int, str, int | None] | None) -> dict[str, Any]:
        k = kind_of(addon.kind)
        creds = self.credentials(addon)
        volume = await asyncio.to_thread(self.services.ensure_service_volume, addon.name)
        _, published = await asyncio.to_thread(
            lambda: self.services.replace_service(
                addon.name,
                kind=addon.kind,
                image=k.image(addon.version),
                env=k.environment(creds),
                command=k.command(creds),
                volume=(volume, k.data_path),
                publish=publish,
                files=k.files(creds),
            )
        )
        await self.wait_ready(addon)
        return published

    # ---- rotate
    async def rotate(self, name: str) -> DeployJob:
        """Rotate the add-on's credentials; runs in the background, output streamed."""
        await self._running(name, "rotate the credentials of")
        job = DeployJob(app=name, output=LogBuffer())

        async def body() -> None:
            out = job.output
            try:
                async with self.ctx.lock(name):
                    fresh = await self._running(name, "rotate the credentials of")
                    job.result = await self._rotate(fresh, out)
            except LbsoloError as e:
                out.append(f" !     {e.message}")
                job.result = {"ok": False, "app": name, "error": {"code": e.code, "message": e.message}}
            except Exception as e:
                log.exception("rotating the credentials of %s crashed", name)
                out.append(f" !     internal error: {e}")
                job.result = {"ok": False, "app": name, "error": {"code": "error", "message": str(e)}}
            finally:
                out.close()

        job.task = self.ctx.spawn(body(), f"addon-rotate-{name}")
        return job

    async def _rotate(self, addon: Addon, out: LogBuffer) -> dict[str, Any]:
        k = kind_of(addon.kind)
        c = addon.credentials
        what = "password" if addon.kind == "redis" else "user"
        if RETIRING[0] not in c:
            old = self.credentials(addon)
            if NEXT[0] not in c:
                c[NEXT[0]], c[NEXT[1]] = k.next_user(addon.name, old.user), new_password()
                await asyncio.to_thread(self.ctx.state.save_addon, addon)
            new = Credentials(c[NEXT[0]], c[NEXT[1]], old.database)
            out.append(
                f"-----> Adding a second {what} to {addon.name}" + ("" if what == "password" else f": {new.user}")
            )
            await self._add(addon, k, old, new)
            for app, var in sorted(addon.attachments.items()):
                await self._move(addon, app, var, k.url(new, addon.name), out)
            if addon.kind == "mariadb":
                await self.admin(addon, [old, new], kinds.my_switch_root(new.password))
            addon.credentials = {**new.to_dict(), RETIRING[0]: old.user, RETIRING[1]: old.password}
            await asyncio.to_thread(self.ctx.state.save_addon, addon)
        current = self.credentials(addon)
        old_user, old_password = addon.credentials[RETIRING[0]], addon.credentials[RETIRING[1]]
        out.append(f"-----> Removing the old {what}" + ("" if what == "password" else f" {old_user}"))
        await self._retire(addon, current, old_user, old_password)
        addon.credentials = current.to_dict()
        await asyncio.to_thread(self.ctx.state.save_addon, addon)
        moved = sorted(addon.attachments)
        out.append(f"-----> {addon.name}'s credentials are rotated" + (f" ({', '.join(moved)} moved)" if moved else ""))
        return {"ok": True, "app": addon.name, "addon": addon.name, "user": current.user, "apps": moved}

    async def _move(self, addon: Addon, app: str, var: str, url: str, out: LogBuffer) -> None:
        try:
            target = await self.ctx.app(app)
        except NotFound:
            return  # the app is gone; its attachment with it
        if target.config.get(var) == url:
            return  # moved before a restart
        out.append(f"-----> Moving {app} onto the new credentials ({var}, a new release)")
        job = await self.set_config(app, {var: url}, [], secret=True)
        if job is None:
            return
        async for line in job.output.follow():
            out.append(line)
        if job.task is not None:
            await job.task
        if not job.result.get("ok"):
            why = str((job.result.get("error") or {}).get("message", "failed")).splitlines()[0]
            raise DeployFailed(
                f"{app} did not move: {why}. Both credentials still work; "
                f"run addons:credentials:rotate {addon.name} again to finish"
            )

    async def _add(self, addon: Addon, k: Kind, old: Credentials, new: Credentials) -> None:
        if addon.kind == "postgres":
            await self.admin(addon, [old, new], kinds.pg_add_user(old.user, new))
        elif addon.kind == "mariadb":
            grants = await self.admin(addon, [old, new], kinds.my_grants_query(old.user))
            await self.admin(addon, [old, new], kinds.my_add_user(old.user, new, grants.splitlines()))
        else:
            said = await self.admin(addon, [old, new], kinds.redis_add_password(new.password))
            if "ACL file" in said:  # made before lbsolo kept Redis users in one: the new password must not stay
                await self.admin(addon, [old], kinds.redis_retire_password(new.password))
                raise Conflict(
                    f"{addon.name} keeps no ACL file, so a new password would not survive a restart: "
                    f"`lbsolo addons:expose {addon.name}` once (a restart that adds one), then rotate"
                )
            redis_errors(said, addon.name)

    async def _retire(self, addon: Addon, current: Credentials, old_user: str, old_password: str) -> None:
        if addon.kind == "postgres":
            databases = (await self.admin(addon, [current], kinds.PG_DATABASES)).split()
            await self.admin(addon, [current], kinds.pg_retire_user(old_user, current.user, databases))
        elif addon.kind == "mariadb":
            await self.admin(addon, [current], kinds.my_retire_user(old_user))
        else:
            said = await self.admin(addon, [current], kinds.redis_retire_password(old_password))
            redis_errors(said, addon.name, allowed="does not exist")

    async def admin(self, addon: Addon, logins: list[Credentials], script: str) -> str:
        """Run a script through the kind's client as its administrator, and what it printed; the
        first of `logins` let in is used (MariaDB's root password follows a rotation a step late)."""
        k = kind_of(addon.kind)
        refused = ""
        for creds in logins:
            sink = bytearray()
            code, stderr = await asyncio.to_thread(
                lambda c=creds, into=sink: self.services.exec_service(
                    addon.name, k.admin_command(c), stdin=[script.encode()], stdout_sink=into.extend, timeout=60
                )
            )
            said = sink.decode("utf-8", "replace")
            if any(d in stderr or d in said for d in _DENIED):
                refused = (stderr.strip() or said.strip())[-300:]
                continue
            if code != 0:
                raise EngineError(f"{addon.name}: {(stderr.strip() or said.strip())[-400:]}")
            return said
        raise EngineError(f"{addon.name}: its administrator was not let in: {refused}")

    # ---- promote
    async def promote(self, name: str, app: str) -> DeployJob | None:
        """Make `name` the app's primary URL var (DATABASE_URL; REDIS_URL for Redis), in one release."""
        addon = await asyncio.to_thread(self.ctx.state.get_addon, name)
        primary = kind_of(addon.kind).url_var
        others = [a for a in await asyncio.to_thread(self.ctx.state.list_addons) if app in a.attachments]
        names = sorted({name, *(a.name for a in others if a.attachments[app] == primary)})
        locks = [self.ctx.lock(n) for n in names]  # in name order: two promotions never wait on each other
        for lock in locks:
            await lock.acquire()
        try:
            attached = {a.name: a for a in await asyncio.to_thread(self.ctx.state.list_addons) if app in a.attachments}
            target = await self.ctx.app(app)
            held = {n: a.attachments[app] for n, a in attached.items()}
            moves, unset = promotion(app, name, primary, held, target.config)
            if not set(moves) <= set(names):
                raise Conflict(f"the add-ons of {app} changed meanwhile: promote again")
            values = {}
            for holder, var in moves.items():
                a = attached[holder]
                a.attachments[app] = var
                values[var] = kind_of(a.kind).url(self.credentials(a), a.name)
                await asyncio.to_thread(self.ctx.state.save_addon, a)
            return await self.set_config(app, values, unset, secret=True)
        finally:
            for lock in reversed(locks):
                lock.release()

    # ---- shell
    async def shell(self, name: str, *, tty: bool = False, size: tuple[int, int] | None = None) -> ShellSession:
        """Start the kind's client in the add-on's container; the caller feeds and reads the session."""
        addon = await self._running(name, "open a shell in")
        command = ["sh", "-c", kind_of(addon.kind).shell_command(self.credentials(addon))]
        session = ShellSession(asyncio.get_running_loop())

        async def run() -> None:
            try:
                session.exit_code = await asyncio.to_thread(
                    lambda: self.services.exec_service_session(
                        name,
                        command,
                        stdin=session.stdin(),
                        on_output=session.emit,
                        tty=tty,
                        size=size,
                        on_start=session.started,
                    )
                )
            except LbsoloError as e:
                session.error = e.message
            finally:
                await session.finish()

        session.task = self.ctx.spawn(run(), f"addon-shell-{name}")
        return session

    # ---- on start
    async def resume(self, addon: Addon) -> None:
        """What a killed daemon left: a container set aside mid-expose, a rotation half done."""
        done = await asyncio.to_thread(self.services.recover_replaced_service, addon.name)
        if done:
            log.warning("add-on %s was being recreated when lbsolo stopped: %s", addon.name, done)
            port = kind_of(addon.kind).port
            actual = await asyncio.to_thread(self.services.published_port, addon.name, port)
            if actual != addon.exposed:
                addon.exposed = actual
                await asyncio.to_thread(self.ctx.state.save_addon, addon)
        if NEXT[0] in addon.credentials or RETIRING[0] in addon.credentials:
            log.warning("add-on %s was rotating its credentials when lbsolo stopped: finishing", addon.name)
            self.ctx.spawn(self._finish_rotation(addon.name), f"addon-rotate-{addon.name}")

    async def _finish_rotation(self, name: str) -> None:
        out = LogBuffer()
        try:
            async with self.ctx.lock(name):
                addon = await self._running(name, "rotate the credentials of")
                await self._rotate(addon, out)
        except LbsoloError as e:
            log.warning("add-on %s: the rotation could not finish: %s", name, e.message)
        finally:
            out.close()


_DENIED = ("Access denied", "password authentication failed", "WRONGPASS", "NOAUTH", "not permitted to log in")


def refuse_while_upgrading(addon: Addon, doing: str) -> None:
    """An add-on in the middle of a major upgrade (old or new) takes no other change: its apps
    are moving, its data is being copied."""
    if addon.upgrade.get("step"):
        raise Conflict(f"{addon.name} is being upgraded to {addon.upgrade.get('to')}: cannot {doing} it now")
    if addon.upgrade.get("from"):
        raise Conflict(f"{addon.name} is being made by {addon.upgrade['from']}'s upgrade: cannot {doing} it now")


def redis_errors(said: str, name: str, allowed: str = "") -> None:
    for line in said.splitlines():
        if line.startswith(("ERR", "WRONGPASS", "NOAUTH", "NOPERM")) and not (allowed and allowed in line):
            raise EngineError(f"{name}: {line[:300]}")
