"""Sleeping idle apps (`apps:sleep APP --after 30m`): stopped after a while without a request,
woken by the next one.

An app with `sleep_after` whose last request (the proxy's `last_requests`), last release and last
wake are all older than that is put to sleep: `asleep` is saved, so its desired formation is empty
and its route says it sleeps (core_context.desired), and the replicas drain and stop (converge).
DNS and routes stay. A request for it is held by the proxy (proxy_wake), which asks for a wake
through the queue the daemon gave both: `asleep` off, converge starts the formation, and the
route with its healthy replicas lets the held requests go on. A wake that fails puts it back to
sleep and has the held requests answered 503 with the reason at once.

Apps with worker processes or cron entries sleep only when asked to (`with_workers`): their work
does not come through the proxy, so no request would ever wake them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lbsolo.core_context import CoreContext
from lbsolo.errors import InvalidInput, LbsoloError
from lbsolo.events import EventKind
from lbsolo.models import WEB, App

log = logging.getLogger("lbsolo.core")

SLEEP_MIN = 1.0  # seconds: shorter would stop an app between two requests of one page
SLEEP_MAX = 30 * 86400.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_sleep_after(text: str) -> float:
    """'30m', '2h', '1d', '45s' or plain seconds, within SLEEP_MIN .. SLEEP_MAX."""
    m = _DURATION.match(text or "")
    if not m:
        raise InvalidInput(f"invalid duration {text!r}: use e.g. 30m, 2h, 1d or seconds")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not SLEEP_MIN <= seconds <= SLEEP_MAX:
        raise InvalidInput(f"--after must be between {SLEEP_MIN:.0f} s and {SLEEP_MAX / 86400:.0f} days")
    return seconds


def runs_without_requests(app: App, cron: list[Any]) -> bool:
    """Whether the app does work no request wakes: worker processes or cron entries."""
    return any(n > 0 for p, n in app.formation.items() if p != WEB) or bool(cron)


class Sleepers:
    """Puts idle apps to sleep and wakes them on the proxy's request."""

    def __init__(
        self,
        ctx: CoreContext,
        converge: Callable[[App], Awaitable[None]],
        wakes: asyncio.Queue[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self._converge = converge
        self._wakes = wakes  # the proxy puts app names in (a request held for a sleeping app)
        self._clock = clock
        self._started = clock()
        self._woken: dict[str, float] = {}  # app -> when it last woke (the clock's time)
        self._waking: set[str] = set()

    # ---- the use case
    async def set_sleep(self, name: str, after: float | None, with_workers: bool = False) -> dict[str, Any]:
        async with self.ctx.lock(name):
            app = await self.ctx.app(name)
            if after is not None and not with_workers:
                state = self.ctx.state
                release = await asyncio.to_thread(state.get_release, name, app.release) if app.release else None
                if runs_without_requests(app, release.cron if release else []):
                    raise InvalidInput(
                        f"{name} has worker processes or cron jobs, which no request wakes: "
                        "add --with-workers to let them sleep too"
                    )
            app.sleep_after = after
            self._woken[name] = self._clock()  # the idle time counts from now
            waking = after is None and app.asleep
            await self.ctx.save(app)
        if waking:
            await self.wake(name)
        return self.describe(await self.ctx.app(name))

    def describe(self, app: App) -> dict[str, Any]:
        last = self.ctx.ingress.last_requests().get(app.name)
        return {
            "name": app.name,
            "sleep_after": app.sleep_after,
            "asleep": app.asleep,
            "idle_seconds": None if last is None else round(max(0.0, self._clock() - last), 1),
        }

    # ---- the loop
    async def run_forever(self) -> None:
        """Wake what the proxy asks for; every few seconds, put idle apps to sleep."""
        every = max(0.5, min(5.0, self.ctx.settings.reconcile_interval))
        while True:
            try:
                name = await asyncio.wait_for(self._wakes.get(), every)
            except TimeoutError:
                await self.tick()
                continue
            if name not in self._waking:
                self._waking.add(name)
                task = self.ctx.spawn(self.wake(name), f"wake-{name}")
                task.add_done_callback(lambda _t, n=name: self._waking.discard(n))

    async def tick(self) -> list[str]:
        """Put to sleep each app idle past its `sleep_after`; returns their names."""
        slept = []
        for app in await asyncio.to_thread(self.ctx.state.list_apps):
            if self._due(app) and not self.ctx.lock(app.name).locked():
                try:
                    if await self._sleep(app.name):
                        slept.append(app.name)
                except LbsoloError as e:
                    log.warning("could not put %s to sleep: %s", app.name, e.message)
        return slept

    def _due(self, app: App) -> bool:
        if app.sleep_after is None or app.asleep or app.release is None:
            return False
        now = self._clock()
        last = max(
            self.ctx.ingress.last_requests().get(app.name, self._started),
            self._woken.get(app.name, self._started),
        )
        return now - last >= app.sleep_after

    async def _sleep(self, name: str) -> bool:
        async with self.ctx.lock(name):
            app = await self.ctx.app(name)
            if not self._due(app):  # a request, a wake or a change came meanwhile
                return False
            app.asleep = True
            await self.ctx.save(app)
            await self._converge(app)  # the formation is empty now: drained and stopped
        log.info("%s slept after %.0f s without a request", name, app.sleep_after or 0)
        self.ctx.bus.emit(EventKind.APP_SLEPT, name, f"{name} is asleep (no request for {app.sleep_after:.0f} s)")
        return True

    async def wake(self, name: str) -> None:
        """Start the app's formation; its route with healthy replicas lets held requests go on."""
        started = self._clock()
        async with self.ctx.lock(name):
            try:
                app = await self.ctx.app(name)
            except LbsoloError as e:  # destroyed meanwhile
                self.ctx.ingress.wake_failed(name, e.message)
                return
            self._woken[name] = self._clock()
            if not app.asleep:
                self.ctx.push()  # awake already: the current routes free whatever is held
                return
            app.asleep = False
            await self.ctx.save(app)
            try:
                await self._converge(app)
            except LbsoloError as e:
                app.asleep = True  # the next request tries again
                await self.ctx.save(app)
                with contextlib.suppress(LbsoloError):
                    await self._converge(app)  # what did start is stopped; the route says it sleeps
                message = f"app {name} could not wake up: {e.message.splitlines()[0]}"
                self.ctx.ingress.wake_failed(name, message)
                self.ctx.bus.emit(EventKind.APP_WAKE_FAILED, name, message)
                return
        took = self._clock() - started
        self.ctx.bus.emit(EventKind.APP_WOKE, name, f"{name} woke up in {took:.1f} s")
