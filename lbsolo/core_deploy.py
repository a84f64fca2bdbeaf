"""Turning source into releases: uploads, git clones and push webhooks, builds, the test phase,
image retention.

A part of the core that Platform composes over the CoreContext; it must not run the reconcile loop
or roll releases out itself (Rollouts does).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lbsolo.build import Builder, LogBuffer, SourceSpec
from lbsolo.build_git import clone, clone_policy, fetch_ref, redact
from lbsolo.build_source import pack
from lbsolo.core_context import CoreContext
from lbsolo.core_plan import (
    images_to_remove,
)
from lbsolo.core_rollout import DeployJob, Rollouts
from lbsolo.errors import Conflict, DeployFailed, LbsoloError, NotFound
from lbsolo.events import EventKind
from lbsolo.models import (
    Build,
)

log = logging.getLogger("lbsolo.core")


class Deploys:
    """Turning source into releases: uploads, git clones and push webhooks, builds, the test phase, image retention."""

    def __init__(self, ctx: CoreContext, builder: Builder, rollouts: Rollouts) -> None:
        self.ctx = ctx
        self.builder = builder
        self.rollouts = rollouts

    async def deploy(self, name: str, context: Path, build_args: dict[str, str] | None = None) -> DeployJob:
        app = await self.ctx.app(name)
        job = DeployJob(app=app.name, output=LogBuffer(on_line=self.ctx.log_tap(app.name, "build")))
        build_job = self.builder.submit(app.name, context, job.output, build_args)
        job.output.append(f"-----> Building {app.name} (build {build_job.build.id})")
        self.ctx.bus.emit(EventKind.DEPLOY_STARTED, app.name, f"deploy of {app.name} started", build=build_job.build.id)
        job.task = self.ctx.spawn(self._deploy(job, build_job.done, build_job.build.id), f"deploy-{app.name}")
        return job

    async def deploy_git(self, name: str, url: str, ref: str | None) -> DeployJob:
        """Deploy a git URL at a branch, tag or commit; the first one becomes the app's repository.

        Only https, ssh and git URLs, unless the admin allows local ones (settings.git_allow_local).
        """
        clone_policy(url, self.ctx.settings.git_allow_local)
        job, _ = await self._deploy_clone(name, url, ref)
        await self.set_repo(name, url, replace_existing=False)  # once it cloned: a typo is not kept
        return job

    async def deploy_pushed(self, name: str, ref: str) -> DeployJob:
        """A push webhook's deploy: the app's own repository (set by its owner) at the pushed ref."""
        app = await self.ctx.app(name)
        if not app.repo:
            raise Conflict(
                f"{name} has no repository to deploy from: set it with `lbsolo hooks:url {name} --repo URL` "
                "(push webhooks never take the URL from their payload)"
            )
        return (await self._deploy_clone(name, app.repo, ref))[0]

    async def set_repo(self, name: str, url: str, *, replace_existing: bool = True) -> str:
        """Store the git URL push webhooks deploy; returns it redacted, as it may be shown."""
        clone_policy(url, self.ctx.settings.git_allow_local)
        async with self.ctx.lock(name):
            app = await self.ctx.app(name)
            if replace_existing or not app.repo:
                app.repo = url
                await self.ctx.save(app)
        return redact(app.repo)

    async def hook(self, name: str) -> dict[str, str]:
        """The app's push webhook: its secret, and the repository it deploys (credentials redacted)."""
        secret = await self.hook_secret(name)
        return {"secret": secret, "repo": redact((await self.ctx.app(name)).repo)}

    async def deploy_ref(self, name: str, url: str, ref: str) -> tuple[DeployJob, str]:
        """Deploy a full ref (a pull request's `refs/pull/N/head`) or a commit of `url` to an app:
        the job and the commit. A preview's build (core_previews.py); `url` is its parent's repository."""
        return await self._deploy_clone(name, url, ref)

    async def _deploy_clone(self, name: str, url: str, ref: str | None) -> tuple[DeployJob, str]:
        self.ctx.settings.uploads_dir.mkdir(parents=True, exist_ok=True)
        allow_local = self.ctx.settings.git_allow_local
        with tempfile.TemporaryDirectory(prefix="git-", dir=self.ctx.settings.uploads_dir) as tmp:
            src, home = Path(tmp) / "src", Path(tmp) / "home"
            if ref is not None and ref.startswith("refs/"):  # a pull request's ref: fetched, not cloned
                commit = await fetch_ref(url, ref, src, home=home, allow_local=allow_local)
            else:
                commit = await clone(url, ref, src, home=home, allow_local=allow_local)
            archive = Path(tmp).with_suffix(".tar")

            def pack_to_file() -> None:
                with pack(Path(tmp) / "src", self.ctx.settings.max_upload_bytes) as packed, archive.open("wb") as f:
                    shutil.copyfileobj(packed, f)

            await asyncio.to_thread(pack_to_file)
        job = await self.deploy(name, archive)
        job.output.append(f"       source: {redact(url)} at {commit[:12]}")
        return job, commit

    async def hook_secret(self, name: str, create: bool = True) -> str:
        """The app's inbound webhook secret; made on first request."""
        # Reading takes no lock: unauthenticated webhook calls must not count as changes of the app.
        app = await self.ctx.app(name)
        if not app.hook_secret and not create:
            raise NotFound(f"{name} has no webhook yet (see: lbsolo hooks:url {name})")
        if not app.hook_secret:
            async with self.ctx.lock(name):  # saved like any change of the app, never over one
                app = await self.ctx.app(name)
                if not app.hook_secret:
                    app.hook_secret = secrets.token_urlsafe(24)
                    await self.ctx.save(app)
        return app.hook_secret

    async def _deploy(self, job: DeployJob, built: asyncio.Future[tuple[str, SourceSpec]], build_id: str) -> None:
        out = job.output
        released = False
        try:
            try:
                image_id, spec = await built
            except LbsoloError as e:
                raise DeployFailed(f"build failed, nothing was released: {e.message}") from e
            out.append(f"-----> Built image {image_id.removeprefix('sha256:')[:12]}")
            kinds = ", ".join(sorted(spec.processes)) or "web (the image's CMD)"
            out.append(f"       processes: {kinds}")
            if spec.processes.get("test"):
                await self._test_phase(job.app, image_id, spec.processes["test"], out)
            release = await self.rollouts.release(
                job.app, out, description="deploy", image=image_id, processes=spec.processes, health=spec.health,
                cron=spec.cron,
            )
            job.result = self.rollouts.ok(job.app, release)
            self.rollouts.emit_result(job)
            released = True
        except LbsoloError as e:
            out.append(f" !     {e.message}")
            job.result = {"ok": False, "app": job.app, "error": {"code": e.code, "message": e.message}}
            self.rollouts.emit_result(job)
        except Exception as e:
            log.exception("deploy of %s crashed", job.app)
            job.result = {"ok": False, "app": job.app, "error": {"code": "error", "message": str(e)}}
            self.rollouts.emit_result(job)
        finally:
            out.close()
            await asyncio.to_thread(self._store_build_log, build_id, out.lines)
        if released:
            # A task of its own: the client's deploy is over once the release serves (its stream
            # ends with the job's task), and with a few hundred apps' images the engine takes a
            # while to list and prune them (0.15 s at 200 apps, a sixth of the deploy).
            self.ctx.spawn(self._clean_images(job.app), f"gc-{job.app}")

    async def _clean_images(self, app: str) -> None:
        try:
            cleaned = await self.gc(app)
            if cleaned["removed"]:
                log.info("%s: removed %d old image(s)", app, len(cleaned["removed"]))
        except LbsoloError as e:
            log.warning("image clean-up of %s failed: %s", app, e.message)

    def _store_build_log(self, build_id: str, lines: list[str]) -> None:
        directory = self.ctx.settings.logs_dir / "builds"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"{build_id}.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
        except OSError as e:  # a full disk: the deploy's outcome stands, only its stored log is lost
            log.warning("cannot store the log of build %s: %s", build_id, e.strerror or e)

    async def cancel_builds(self, name: str, build_id: str | None = None) -> list[str]:
        await self.ctx.app(name)
        return self.builder.cancel(name, build_id)

    async def builds(self, name: str) -> list[Build]:
        await self.ctx.app(name)
        return await asyncio.to_thread(self.ctx.state.list_builds, name)

    async def build_log(self, name: str, build_id: str | None) -> list[str]:
        builds = await self.builds(name)
        if not builds:
            raise NotFound(f"{name} has no builds")
        build = builds[-1] if build_id is None else next((b for b in builds if b.id.startswith(build_id)), None)
        if build is None:
            raise NotFound(f"{name} has no build {build_id}")
        path = self.ctx.settings.logs_dir / "builds" / f"{build.id}.log"
        if not path.exists():
            return [f"(build {build.id} is {build.status}; its log is not stored yet)"]
        return (await asyncio.to_thread(path.read_text, encoding="utf-8")).splitlines()

    async def _test_phase(self, app_name: str, image: str, command: str, out: LogBuffer) -> None:
        """The Procfile's `test:` command, in the new image with the app's config, before any release."""
        app = await self.ctx.app(app_name)
        out.append(f"-----> Test phase: {command}")
        network = await self.ctx.ensure_network(app_name)
        loop = asyncio.get_running_loop()
        env = {**app.config, "LBSOLO_APP": app_name, "LBSOLO_PROCESS": "test"}
        code = await asyncio.to_thread(
            self.ctx.engine.run_once,
            app=app_name,
            image=image,
            command=command,
            env=env,
            network=network,
            on_output=lambda line: loop.call_soon_threadsafe(out.append, f"       | {line}"),
            timeout=self.ctx.settings.build_timeout,
        )
        if code != 0:
            raise DeployFailed(f"the test phase failed (exit {code}); nothing was released")
        out.append("       tests passed")

    async def gc(self, name: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Remove images older than the last `keep_releases` releases of each app, and build leftovers."""
        apps = [await self.ctx.app(name)] if name else await asyncio.to_thread(self.ctx.state.list_apps)
        removed: list[dict[str, Any]] = []
        for app in apps:
            images = await asyncio.to_thread(self.ctx.engine.app_images, app.name)
            releases = await asyncio.to_thread(self.ctx.state.list_releases, app.name)
            doomed = set(
                images_to_remove(releases, app.release, [i["id"] for i in images], self.ctx.settings.keep_releases)
            )
            for image in images:
                if image["id"] in doomed and (
                    dry_run or await asyncio.to_thread(self.ctx.engine.remove_image, image["id"])
                ):
                    removed.append({"app": app.name, "id": image["id"], "size": image["size"], "tags": image["tags"]})
        # A build's intermediate layers look like leftovers until it ends: with any build queued or
        # running (another app's, while this deploy ends), the prune waits for a later gc.
        prune = not dry_run and not self.builder.busy()
        freed = await asyncio.to_thread(self.ctx.engine.prune_build_leftovers) if prune else 0
        return {"removed": removed, "bytes": sum(i["size"] for i in removed) + freed, "dry_run": dry_run}

    async def disk_usage(self) -> dict[str, int]:
        """Bytes of images per app (layers shared between images are counted once per image)."""
        usage: dict[str, int] = {}
        for image in await asyncio.to_thread(self.ctx.engine.app_images):
            usage[image["app"]] = usage.get(image["app"], 0) + image["size"]
        return usage
