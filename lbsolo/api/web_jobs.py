"""Deploys the web UI starts (the New app form's first deploy from a git URL), kept so the app
page can stream their build and rollout output while they run and after they end.

The deploy itself is core's (Platform.deploy_git: clone, build, release, roll out); this module
only runs it in the background, copies its output into a buffer of its own (the clone's errors
included, which happen before core hands back a job) and serves that buffer as server-sent
events. It must not import fastapi or jinja2, the engine, the state store or the CLI.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lbsolo.api.web_session import sse_event
from lbsolo.build import LogBuffer
from lbsolo.errors import LbsoloError

if TYPE_CHECKING:
    from lbsolo.core import Platform

KEEP = 20  # finished deploys whose output the UI still shows; older ones are dropped


@dataclass
class UiDeploy:
    app: str
    output: LogBuffer = field(default_factory=LogBuffer)
    result: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


class UiDeploys:
    """The UI's own deploys by app: at most one shown per app (the latest), a few kept after they end."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._by_app: dict[str, UiDeploy] = {}

    def get(self, app: str) -> UiDeploy | None:
        return self._by_app.get(app)

    def start_git(self, app: str, url: str, ref: str | None) -> UiDeploy:
        """Deploy `url` at `ref` to `app` in the background; the returned record fills as it runs."""
        deploy = UiDeploy(app)
        deploy.output.append(f"-----> Cloning the repository{f' at {ref}' if ref else ''}")
        deploy.task = asyncio.create_task(self._run(deploy, url, ref), name=f"ui-deploy-{app}")
        self._by_app.pop(app, None)
        self._by_app[app] = deploy
        while len(self._by_app) > KEEP:
            oldest = next((k for k, d in self._by_app.items() if d.done), None)
            if oldest is None:
                break
            del self._by_app[oldest]
        return deploy

    async def _run(self, deploy: UiDeploy, url: str, ref: str | None) -> None:
        out = deploy.output
        try:
            job = await self.platform.deploy_git(deploy.app, url, ref)
            async for line in job.output.follow():
                out.append(line)
            if job.task is not None:
                await job.task
            deploy.result = dict(job.result)
        except LbsoloError as e:
            out.append(f" !     {e.message}")
            deploy.result = {"ok": False, "app": deploy.app, "error": {"code": e.code, "message": e.message}}
        except Exception as e:  # a crash shows in the page rather than vanishing with the task
            out.append(f" !     internal error: {e}")
            deploy.result = {"ok": False, "app": deploy.app, "error": {"code": "error", "message": str(e)}}
        finally:
            deploy.result = deploy.result or {"ok": False, "app": deploy.app, "error": {"message": "cancelled"}}
            out.close()

    async def events(self, app: str) -> AsyncIterator[bytes]:
        """The deploy's output from its first line as SSE `data: {"line": …}`, then `{"result": …}`."""
        deploy = self._by_app.get(app)
        if deploy is None:
            yield sse_event({"result": None})
            return
        async for line in deploy.output.follow():
            yield sse_event({"line": line})
        if deploy.task is not None:
            await asyncio.shield(deploy.task)
        yield sse_event({"result": deploy.result})
