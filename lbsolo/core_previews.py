"""Preview apps per pull request: made, updated and destroyed from pull request webhooks.

A pull request opened on an app's connected repository becomes an app of its own (`APP-pr-N`,
previews.preview_names) with the parent's config (its secrets only if the parent allows it, its
add-on URLs never), built from the connected repository's pull ref; each push to the pull request
deploys the new head there; closing or merging it destroys the preview's containers, images,
volumes, route and DNS name. Caps (per app and LBSOLO_MAX_PREVIEWS) refuse, with a recorded reason.

The webhook's answer is decided here at once, under one lock (so two events cannot both take the
last slot); the builds run in the background, one pull request's events in their order.

An app's preview settings and records are one document of the state's settings table
(`previews:<app>`), owned by this module. It must not parse payloads or check signatures (api/git.py
and previews.py do) and never fetch anything but the parent's own repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lbsolo.core_context import CoreContext
from lbsolo.core_deploy import Deploys
from lbsolo.core_preview_addons import PreviewAddons, finished
from lbsolo.errors import Conflict, LbsoloError, NotFound
from lbsolo.previews import (
    ACTIVE,
    PreviewEvent,
    PreviewRecord,
    PreviewSettings,
    PreviewStatus,
    PullRequest,
    Step,
    decide,
    preview_config,
    preview_formation,
    preview_names,
    same_repository,
    trim_records,
)

log = logging.getLogger("lbsolo.core")

CreateApp = Callable[[str], Awaitable[Any]]
DestroyApp = Callable[..., Awaitable[dict[str, Any]]]
Records = dict[int, PreviewRecord]


class Previews:
    """An app's previews: settings, listing, and what each pull request event does."""

    def __init__(
        self, ctx: CoreContext, deploys: Deploys, addons: PreviewAddons, create_app: CreateApp, destroy_app: DestroyApp
    ) -> None:
        self.ctx = ctx
        self.deploys = deploys
        self.addons = addons
        self.create_app = create_app
        self.destroy_app = destroy_app
        self._docs = asyncio.Lock()  # every read-change-write of the preview documents
        self._prs: dict[tuple[str, int], asyncio.Lock] = {}  # one pull request's work, in order

    # ---- the documents
    @staticmethod
    def _key(app: str) -> str:
        return f"previews:{app}"

    async def _load(self, app: str) -> tuple[PreviewSettings, Records]:
        doc = await asyncio.to_thread(self.ctx.state.get_setting, self._key(app))
        records = {int(k): PreviewRecord.from_dict(v) for k, v in (doc.get("prs") or {}).items()}
        return PreviewSettings.from_dict(doc.get("settings") or {}), records

    async def _store(self, app: str, settings: PreviewSettings, records: Records) -> None:
        prs = {str(n): r.to_dict() for n, r in sorted(trim_records(records).items())}
        doc = {"settings": settings.to_dict(), "prs": prs}
        await asyncio.to_thread(self.ctx.state.save_setting, self._key(app), doc)

    async def _update_record(self, parent: str, number: int, **changes: Any) -> PreviewRecord | None:
        async with self._docs:
            settings, records = await self._load(parent)
            record = records.get(number)
            if record is None:
                return None
            for key, value in changes.items():
                setattr(record, key, value)
            record.updated_at = time.time()
            await self._store(parent, settings, records)
            return record

    async def _record(self, app: str, number: int) -> PreviewRecord | None:
        return (await self._load(app))[1].get(number)

    def _active_all(self) -> int:
        """Previews building or running on the whole platform (in a thread: one read per app)."""
        state = self.ctx.state
        count = 0
        for app in state.list_apps():
            prs = (state.get_setting(self._key(app.name)).get("prs") or {}).values()
            count += sum(1 for r in prs if r.get("status") in ACTIVE)
        return count

    # ---- settings and listing
    async def settings(self, app: str) -> PreviewSettings:
        await self.ctx.app(app)
        return (await self._load(app))[0]

    async def set_settings(self, app: str, **changes: Any) -> dict[str, Any]:
        """Change an app's preview settings (the given ones); InvalidInput changes nothing."""
        await self.ctx.app(app)
        async with self._docs:
            settings, records = await self._load(app)
            merged = {**settings.to_dict(), **{k: v for k, v in changes.items() if v is not None}}
            settings = PreviewSettings(**merged)
            await self._store(app, settings, records)
        return await self.describe(app)

    async def describe(self, app: str, apps: set[str] | None = None) -> dict[str, Any]:
        """An app's preview settings and its previews, newest first, each with its URL (`apps`: the
        names of every app, if the caller has them)."""
        parent = await self.ctx.app(app)
        settings, records = await self._load(app)
        if apps is None:
            apps = {a.name for a in await asyncio.to_thread(self.ctx.state.list_apps)}
        rows = []
        for r in sorted(records.values(), key=lambda r: r.created_at, reverse=True):
            row = {**r.to_dict(), "parent": app, "url": self.ctx.settings.app_url(r.app) if r.app else None}
            if r.app and r.app not in apps:
                row["status"], row["error"] = "missing", f"{r.app} was destroyed by hand; the next push makes it again"
            rows.append(row)
        of = await asyncio.to_thread(self._preview_of, app)
        return {"app": app, "repo_connected": bool(parent.repo), "settings": settings.to_dict(), "previews": rows,
                "preview_of": of}  # fmt: skip

    def _preview_of(self, name: str) -> dict[str, Any] | None:
        """Blocking: the parent and pull request whose preview the app `name` is, if it is one."""
        for app in self.ctx.state.list_apps():
            for number, record in (self.ctx.state.get_setting(self._key(app.name)).get("prs") or {}).items():
                if record.get("app") == name:
                    return {"parent": app.name, "number": int(number)}
        return None

    async def listing(self) -> list[dict[str, Any]]:
        """Every app's previews (apps with none left out)."""
        out = []
        apps = await asyncio.to_thread(self.ctx.state.list_apps)
        names = {a.name for a in apps}
        for app in apps:
            if await asyncio.to_thread(self.ctx.state.get_setting, self._key(app.name)):
                out.extend((await self.describe(app.name, names))["previews"])
        return out

    # ---- a pull request event (the webhook's signature has been checked)
    async def on_pull_request(self, app: str, pr: PullRequest) -> dict[str, Any]:
        """Decide what a pull request event does and start it; the webhook's answer.

        Conflict when the app has no connected repository (as for pushes); an event about another
        repository than the connected one is ignored, with the reason.
        """
        parent = await self.ctx.app(app)
        answer: dict[str, Any] = {"previewing": False, "app": app, "number": pr.number, "fork": pr.fork}
        if not parent.repo:
            raise Conflict(
                f"{app} has no repository to build previews from: set it with `lbsolo hooks:url {app} --repo URL` "
                "(webhooks never take the URL from their payload)"
            )
        if not same_repository(parent.repo, pr.repository):
            named = pr.repository[:100] or "no repository"
            return {**answer, "reason": f"the event is about {named!r}, not {app}'s connected repository"}
        async with self._docs:
            settings, records = await self._load(app)
            record = records.get(pr.number)
            here = sum(1 for r in records.values() if r.status in ACTIVE)
            everywhere = await asyncio.to_thread(self._active_all)
            decision = decide(app, settings, record, pr, here, everywhere, self.ctx.settings.max_previews)
            if decision.step is Step.IGNORE:
                return {**answer, "reason": decision.reason}
            if decision.step in (Step.REFUSE, Step.CREATE):
                status = PreviewStatus.REFUSED if decision.step is Step.REFUSE else PreviewStatus.BUILDING
                records[pr.number] = PreviewRecord(
                    pr.number, status, head=pr.head, provider=str(pr.provider), fork=pr.fork, error=decision.reason,
                    created_at=record.created_at if record else time.time(),
                )  # fmt: skip
                await self._store(app, settings, records)
        if decision.step is Step.REFUSE:
            self.ctx.bus.emit(PreviewEvent.REFUSED, app, decision.reason, number=pr.number)
            return {**answer, "reason": decision.reason, "refused": True}
        self.ctx.spawn(self._work(app, pr, decision.step), f"preview-{app}-{pr.number}-{decision.step}")
        return {**answer, "previewing": True, "step": str(decision.step), "ref": pr.ref}

    async def _work(self, app: str, pr: PullRequest, step: Step) -> None:
        lock = self._prs.setdefault((app, pr.number), asyncio.Lock())
        async with lock:
            try:
                if step is Step.CREATE:
                    await self._create(app, pr)
                elif step is Step.UPDATE:
                    await self._update(app, pr)
                else:
                    await self._destroy(app, pr.number)
            except Exception:
                log.exception("the preview of %s #%d (%s) crashed", app, pr.number, step)

    async def _create(self, app: str, pr: PullRequest) -> None:
        record = await self._record(app, pr.number)
        if record is None or record.status is not PreviewStatus.BUILDING:
            return  # closed before its turn
        name = ""
        started = time.monotonic()
        try:
            parent = await self.ctx.app(app)
            settings = (await self._load(app))[0]
            name, notes = await self._make_app(app, pr.number, settings)
            await self._update_record(app, pr.number, app=name, error="; ".join(notes))
            if settings.with_addons:
                notes += await self.addons.clone(app, name)
                await self._update_record(app, pr.number, error="; ".join(notes))
            job, commit = await self.deploys.deploy_ref(name, parent.repo, pr.ref)
            await finished(job)
        except Exception as e:  # whatever went wrong, nothing half-made stays
            if not isinstance(e, LbsoloError):
                log.exception("the preview of %s #%d crashed", app, pr.number)
            if name:
                with contextlib.suppress(LbsoloError):
                    await self._remove_app(name)
            message = e.message if isinstance(e, LbsoloError) else f"internal error: {e}"
            why = f"the preview of #{pr.number} failed, nothing of it runs: {message}"
            await self._update_record(app, pr.number, status=PreviewStatus.FAILED, app="", error=why)
            self.ctx.bus.emit(PreviewEvent.FAILED, app, why, number=pr.number)
            return
        await self._update_record(app, pr.number, status=PreviewStatus.RUNNING, head=commit)
        self.ctx.bus.emit(
            PreviewEvent.CREATED, app, f"preview of #{pr.number} at {self.ctx.settings.app_url(name)}",
            number=pr.number, preview=name, commit=commit, seconds=round(time.monotonic() - started, 2),
        )  # fmt: skip

    async def _remove_app(self, name: str) -> dict[str, Any]:
        """A preview app and everything of it: its add-ons first (off its network), then the app
        with its containers, images, volumes, route and DNS name."""
        addons = await self.addons.remove(name)
        return {**await self.destroy_app(name, images=True, volumes=True), "addons": addons}

    async def _make_app(self, app: str, number: int, settings: PreviewSettings) -> tuple[str, list[str]]:
        """The preview app, made with what it takes of its parent; (its name, notes on what it lacks)."""
        parent = await self.ctx.app(app)
        addons = await asyncio.to_thread(self.ctx.state.list_addons)
        attached = [a.attachments[app] for a in addons if app in a.attachments]
        config, secret, left = preview_config(parent.config, parent.secrets, attached, settings.with_secrets)
        for name in preview_names(app, number):
            try:
                await self.create_app(name)
                break
            except Conflict:  # an app, add-on or static route has it: the next name
                continue
        else:
            raise Conflict(f"no free name for the preview of {app} #{number}")
        async with self.ctx.lock(name):
            preview = await self.ctx.app(name)
            preview.config, preview.secrets = config, secret
            preview.formation = preview_formation(parent.formation)
            preview.health, preview.resources = parent.health, parent.resources
            preview.volumes = dict(parent.volumes)  # volumes are per app: these are new and empty
            preview.request_buffering, preview.sleep_after = parent.request_buffering, parent.sleep_after
            await self.ctx.save(preview)
        notes = []
        if left:
            notes.append(f"config left out: {', '.join(left)} (secrets and add-on URLs)")
        if attached and not settings.with_addons:
            notes.append("no add-ons (previews:settings --with-addons clones them from their latest backup)")
        return name, notes

    async def _update(self, app: str, pr: PullRequest) -> None:
        record = await self._record(app, pr.number)
        if record is None or record.status not in ACTIVE or not record.app:
            return  # closed, or its first build failed (the next push tries again)
        try:
            parent = await self.ctx.app(app)
            job, commit = await self.deploys.deploy_ref(record.app, parent.repo, pr.ref)
            await finished(job)
        except LbsoloError as e:
            why = f"the update of #{pr.number} failed; the previous commit still serves: {e.message}"
            await self._update_record(app, pr.number, error=why)
            self.ctx.bus.emit(PreviewEvent.FAILED, app, why, number=pr.number, preview=record.app)
            return
        await self._update_record(app, pr.number, head=commit, error="")
        self.ctx.bus.emit(
            PreviewEvent.UPDATED, app, f"preview of #{pr.number} now runs {commit[:12]}",
            number=pr.number, preview=record.app, commit=commit,
        )  # fmt: skip

    async def _destroy(self, app: str, number: int) -> None:
        record = await self._record(app, number)
        if record is None:
            return
        removed: dict[str, Any] = {}
        if record.app:
            try:
                removed = await self._remove_app(record.app)
            except NotFound:
                pass  # destroyed by hand already
            except LbsoloError as e:
                why = f"removing the preview of #{number} failed: {e.message}"
                await self._update_record(app, number, error=why)
                self.ctx.bus.emit(PreviewEvent.FAILED, app, why, number=number, preview=record.app)
                return
        async with self._docs:
            settings, records = await self._load(app)
            records.pop(number, None)
            await self._store(app, settings, records)
        if record.app:  # a refused or failed one had nothing to remove: its record just goes
            self.ctx.bus.emit(
                PreviewEvent.DESTROYED, app, f"preview of #{number} removed", number=number, preview=record.app,
                **removed,
            )  # fmt: skip

    async def destroy(self, app: str, number: int) -> dict[str, Any]:
        """Remove one preview by hand (as its pull request's closing would); NotFound if there is none."""
        await self.ctx.app(app)
        record = await self._record(app, number)
        if record is None:
            raise NotFound(f"{app} has no preview of pull request #{number}")
        lock = self._prs.setdefault((app, number), asyncio.Lock())
        async with lock:
            await self._destroy(app, number)
        return {"app": app, "number": number, "preview": record.app, "removed": True}

    # ---- the daemon's life
    async def recover(self) -> int:
        """After a restart: previews whose first build a killed daemon left are failed (the next push
        retries them). How many."""
        failed = 0
        for app in await asyncio.to_thread(self.ctx.state.list_apps):
            for record in list((await self._load(app.name))[1].values()):
                if record.status is PreviewStatus.BUILDING:
                    if record.app:
                        with contextlib.suppress(LbsoloError):
                            await self._remove_app(record.app)
                    why = "the daemon restarted during the preview's first build; the next push retries it"
                    await self._update_record(app.name, record.number, status=PreviewStatus.FAILED, app="", error=why)
                    failed += 1
        return failed

    async def parent_destroyed(self, app: str) -> None:
        """An app was destroyed: its previews go with it, and its preview document is emptied."""
        doc = await asyncio.to_thread(self.ctx.state.get_setting, self._key(app))
        if not doc.get("settings") and not doc.get("prs"):
            return  # never had previews (a preview itself, most often): no write
        _, records = await self._load(app)
        for number in list(records):
            await self._destroy(app, number)
        async with self._docs:  # an app made later under this name starts with previews off
            await asyncio.to_thread(self.ctx.state.save_setting, self._key(app), {"settings": {}, "prs": {}})

