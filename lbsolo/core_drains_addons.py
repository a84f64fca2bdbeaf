"""Add-on logs in the log drains: an add-on's container output goes to the drains of the apps it is
attached to, as `addon.<name>` lines (Heroku's `app[heroku-postgres]`).

An add-on is followed only while some app it is attached to has a drain: every
`drains_addon_poll` seconds the feed compares what is wanted (the state's attachments, the
drains running) with what it follows, starts a follower for a new one and stops those no longer
wanted. A follower that ends (the container stopped or was replaced) is started again at the
next look, from just after the last line it passed on, so a restart of the add-on loses nothing
and repeats nothing. Each line is handed to the LogStore's taps (the drains), never stored: the
add-on's own log stays the engine's (`addons:logs`).

It must not change add-ons or drains, and must never wait for a drain: handing a line on is the
drains' O(1) offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from lbsolo.core_context import CoreContext
from lbsolo.errors import LbsoloError
from lbsolo.run_logs import LogLine

log = logging.getLogger("lbsolo.core")

#: An add-on's new log lines from `since` on, as core_addon_observe.AddonObserve.follow_logs gives them.
Follow = Callable[..., AsyncIterator[dict[str, Any]]]


def wanted(attachments: dict[str, Collection[str]], drained: Collection[str]) -> dict[str, list[str]]:
    """Add-on -> the apps with drains it is attached to; add-ons none of whose apps drain are left out."""
    out = {}
    for addon, apps in attachments.items():
        receiving = sorted(set(apps) & set(drained))
        if receiving:
            out[addon] = receiving
    return out


class AddonLogFeed:
    """Followers of the add-ons whose apps have drains, kept in step with the state."""

    def __init__(self, ctx: CoreContext, follow: Follow, drained: Callable[[], Collection[str]]) -> None:
        self.ctx = ctx
        self._follow = follow
        self._drained = drained  # the apps that have a running drain
        self.routes: dict[str, list[str]] = {}  # add-on -> the apps its lines go to
        self.followers: dict[str, asyncio.Task[None]] = {}
        self._last: dict[str, float] = {}  # add-on -> time of the last line passed on

    async def run_forever(self) -> None:
        try:
            while True:
                await self.sync()
                await asyncio.sleep(self.ctx.settings.drains_addon_poll)
        finally:
            for task in self.followers.values():
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*self.followers.values(), return_exceptions=True)

    async def sync(self) -> None:
        """Follow what is wanted now, and nothing else."""
        drained = self._drained()
        if not drained and not self.followers:
            return  # no drains: not even a state read
        addons = await asyncio.to_thread(self.ctx.state.list_addons)
        self.routes = wanted({a.name: a.attachments.keys() for a in addons}, drained)
        now = time.time()
        for name in self.routes:
            task = self.followers.get(name)
            if task is None or task.done():
                # From just after the last line passed on; a new one from a little before this look,
                # so what it printed since it was attached is not lost.
                since = self._last.get(name, now - self.ctx.settings.drains_addon_poll)
                self.followers[name] = asyncio.get_running_loop().create_task(
                    self._pass_on(name, since), name=f"lbsolo-addon-drain-{name}"
                )
        for name in [n for n in self.followers if n not in self.routes]:
            self.followers.pop(name).cancel()
            self._last.pop(name, None)

    async def _pass_on(self, name: str, since: float) -> None:
        try:
            async for row in self._follow(name, since=since):
                ts = float(row["ts"])
                if ts <= since:
                    continue  # the engine's `since` is inclusive: the line at it was passed on already
                self._last[name] = ts
                for app in self.routes.get(name, ()):
                    self.ctx.logs.tap(LogLine(ts, app, "", f"addon.{name}", str(row.get("replica") or ""), row["line"]))
        except LbsoloError as e:  # no container (stopped, being replaced): the next look tries again
            log.debug("the logs of add-on %s are not followed for now: %s", name, e.message)
