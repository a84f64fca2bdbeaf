"""Secret values stay masked, old releases and rollbacks included (issue 11, item 5).

Each release records which of its keys are secret, and is masked with that record: masking an
old release with the app's current list showed a value once its key was unset, and a rollback
brought the value back without its secret mark. The whole flow runs through the real API and UI
(in-process, over a Platform with fake engine and builder); then every API response, UI page,
event, log record and build log is searched for the values.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import logging
import re
import tarfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from lbsolo.api.rest import create_api
from lbsolo.api.tokens import TokenStore
from lbsolo.build import BuildJob, LogBuffer, SourceSpec
from lbsolo.config import Settings
from lbsolo.core import Platform
from lbsolo.models import MASK, App, Build, BuildStatus, Release, ReleaseStatus, masked_config, release_secrets
from lbsolo.notify import WebhookNotifier
from lbsolo.run_stats import StatsSampler
from lbsolo.state import State
from tests.unit.test_rollout import FakeEngine, FakeIngress, _http_server

TOKEN = "admin-token-for-the-secrets-test"
SECRET_A = "s3cret-alpha-7f3e9q"  # under a key no name hint would mask
SECRET_B = "s3cret-bravo-k2m8xw"
SECRET_C = "s3cret-charlie-p4d1"  # set through the UI's form


class Engine(FakeEngine):
    """The rollout test's fake engine, with what a deploy's image clean-up asks of it."""

    def prune_build_leftovers(self) -> int:
        return 0

    def remove_image(self, image: str) -> bool:
        return False


class FakeBuilder:
    """Accepts any source: records what it was given and 'builds' it at once."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.sources: list[dict[str, bytes]] = []  # file name -> content of each context

    def busy(self) -> bool:
        return False  # its builds end as they are submitted

    def submit(self, app: str, context: Path, output: LogBuffer, build_args: dict[str, str] | None = None) -> BuildJob:
        with tarfile.open(context) as tar:
            self.sources.append(
                {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
            )
        build = Build(id=uuid.uuid4().hex[:12], app=app, status=BuildStatus.SUCCEEDED, image="sha256:" + "b" * 64)
        self.state.save_build(build)
        job = BuildJob(build=build, context=context, tag=f"lbsolo/{app}:build", output=output)
        output.append("Step 1/1 : FROM scratch")
        job.done.set_result((build.image or "", SourceSpec(health={"path": "/", "interval": 0.1})))
        return job

    def cancel(self, app: str, build_id: str | None = None) -> list[str]:
        return []


def source_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"FROM scratch\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class World:
    """A Platform over fakes, the real API (UI included) in front of it, and an HTTP server its replicas 'are'."""

    def __init__(self, tmp_path: Path, port: int, **settings: Any) -> None:
        self.settings = Settings.load(home=tmp_path / "home", deploy_timeout=2, drain_timeout=0.5, **settings)
        self.state = State(self.settings.state_path)
        self.engine = Engine(collections.defaultdict(lambda: port))
        self.builder = FakeBuilder(self.state)
        self.platform = Platform(self.settings, self.state, self.engine, self.builder, FakeIngress(self.engine))  # type: ignore[arg-type]
        bus = self.platform.bus
        self.api = create_api(
            self.platform,
            TOKEN,
            "http://api.test",
            bus=bus,
            notifier=WebhookNotifier(self.state, bus, backoff=(), timeout=1),
            sampler=StatsSampler(lambda: {}, interval=5),
            tokens=TokenStore(self.state),
        )
        self.seen: list[str] = []  # every response body

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.api),
            base_url="http://api.test",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=20,
        )

    async def call(self, c: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
        r = await c.request(method, path, **kw)
        self.seen.append(f"{method} {path} -> {r.status_code}\n{r.text}")
        return r

    async def job(self, c: httpx.AsyncClient, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """A release-making call: its NDJSON stream to the end; the result."""
        r = await self.call(c, method, path, **kw)
        assert r.status_code == 200, r.text
        result = json.loads(r.text.strip().splitlines()[-1])["result"]
        assert result["ok"], r.text
        await asyncio.sleep(0)  # the job's task ends right after its last line
        return result


#: Reads whose point is the secret values, for the admin alone (scopes.ADMIN_READS, tested there):
#: the app as Kubernetes objects, whose Secret holds them.
CARRIES_SECRETS = {"/api/apps/{name}/export/k8s"}


def flat_routes(routes: list[Any]) -> list[Any]:
    """Routes with their paths, included routers opened up (newer FastAPI keeps them as one entry)."""
    out = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out.extend(flat_routes(inner.routes) if inner is not None else [route])
    return out


async def get_everything(world: World, c: httpx.AsyncClient, apps: list[str]) -> None:
    """GET every route of the API and UI that answers without more parameters than an app and a build."""
    builds = [b.id for a in apps for b in world.state.list_builds(a)]
    for route in flat_routes(world.api.routes):
        path = getattr(route, "path", "")
        if "GET" not in (getattr(route, "methods", None) or ()) or path.endswith("/stream") or path in CARRIES_SECRETS:
            continue
        params = set(re.findall(r"{(\w+)(?::\w+)?}", path))
        if not params <= {"name", "build_id"}:
            continue
        for name in apps if "name" in params else [""]:
            for build in [*builds, "latest"] if "build_id" in params else [""]:
                await world.call(c, "GET", path.replace("{name}", name).replace("{build_id}", build))


def test_secrets_never_show_after_unset_rollback_and_promote(tmp_path, caplog, run):
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        server, port = await _http_server()
        world = World(tmp_path, port)
        try:
            async with world.client() as c:
                for name in ("shop", "staging"):
                    assert (await world.call(c, "POST", "/api/apps", json={"name": name})).status_code == 201
                    await world.job(c, "POST", f"/api/apps/{name}/deploy", content=source_tar())  # v1
                change = {"set": {"DATABASE_URL": SECRET_A}, "secret": True}
                await world.job(c, "PATCH", "/api/apps/shop/config", json=change)  # v2
                await world.job(c, "PATCH", "/api/apps/shop/config", json={"set": {"PLAIN": "visible"}})  # v3
                await world.job(c, "PATCH", "/api/apps/shop/config", json={"unset": ["DATABASE_URL"]})  # v4
                releases = (await world.call(c, "GET", "/api/apps/shop/releases")).json()
                assert releases[2]["config"] == {"DATABASE_URL": MASK, "PLAIN": "visible"}  # once shown as set
                await world.job(c, "POST", "/api/apps/shop/rollback", json={"version": 3})  # v5: the value is back
                assert (await world.call(c, "GET", "/api/apps/shop/config")).json()["DATABASE_URL"] == MASK
                await world.job(c, "PATCH", "/api/apps/shop/config", json={"set": {"PLAIN": "again"}})  # v6
                await world.job(c, "POST", "/api/apps/shop/rollback", json={})  # v7 = v5's config

                await world.job(
                    c, "PATCH", "/api/apps/staging/config", json={"set": {"UPSTREAM": SECRET_B}, "secret": True}
                )
                await world.job(c, "POST", "/api/apps/shop/promote", params={"to": "staging"})
                await world.job(c, "PATCH", "/api/apps/staging/config", json={"unset": ["UPSTREAM"]})
                await world.job(c, "POST", "/api/apps/staging/rollback", json={})  # UPSTREAM is back, masked

                # the UI: log in with the token, set a secret through its form, then read every page
                login = await world.call(c, "POST", "/ui/login", data={"token": TOKEN, "next": "/ui/"})
                assert login.status_code == 303, login.text
                page = await world.call(c, "GET", "/ui/apps/shop")
                csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
                assert csrf, page.text
                form = {"csrf": csrf.group(1), "key": "LEGACY_DSN", "value": SECRET_C, "secret": "on"}
                await world.call(c, "POST", "/ui/apps/shop/config", data=form)
                with_it = world.state.get_app("shop").release
                unset = {"csrf": csrf.group(1), "key": "LEGACY_DSN"}
                await world.call(c, "POST", "/ui/apps/shop/config/unset", data=unset)
                back = {"csrf": csrf.group(1), "version": f"v{with_it}"}
                await world.call(c, "POST", "/ui/apps/shop/rollback", data=back)
                for task in list(world.platform.jobs):
                    await task

                shop = world.state.get_app("shop")
                assert {"DATABASE_URL", "LEGACY_DSN"} <= set(shop.secrets)
                assert world.state.get_app("staging").secrets == ["UPSTREAM"]
                await get_everything(world, c, ["shop", "staging"])
                r = await world.call(c, "GET", "/api/events", params={"n": 1000})
                assert r.status_code == 200 and r.json()
        finally:
            server.close()
            await server.wait_closed()
            world.platform.collector.prune()
            world.state.close()

        seen = "\n".join(world.seen)
        for answered in ("GET /ui/apps/shop -> 200", "GET /api/apps/staging/releases -> 200", "/log -> 200"):
            assert answered in seen
        events = json.dumps([e.to_dict() for e in world.platform.bus.recent(10_000)], default=str)
        records = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
        build_logs = "\n".join(p.read_text() for p in (world.settings.logs_dir / "builds").glob("*.log"))
        assert "Step 1/1" in build_logs
        stored_logs = "\n".join(p.read_text() for p in world.settings.logs_dir.rglob("*") if p.is_file())
        for secret in (SECRET_A, SECRET_B, SECRET_C):
            for where, text in [
                ("an API or UI response", seen),
                ("an event", events),
                ("a log record", records),
                ("a stored log", stored_logs),
            ]:
                assert secret not in text, f"{secret} shows in {where}"

    run(main)


def test_a_release_is_masked_with_its_own_record():
    app = App("shop", config={"PLAIN": "x"}, secrets=[])  # DATABASE_URL was unset since
    old = Release("shop", 2, "sha256:a", config={"DATABASE_URL": SECRET_A, "PLAIN": "x"}, secrets=["DATABASE_URL"])
    assert release_secrets(old, app, [old]) == {"DATABASE_URL"}
    assert masked_config(old.config, release_secrets(old, app, [old]))["DATABASE_URL"] == MASK


def test_a_release_stored_without_a_record_masks_every_key_ever_secret():
    stored = {"app": "shop", "version": 1, "image": "sha256:a", "config": {"A": "1", "B": "2", "C": "3", "D": "4"}}
    legacy = Release.from_dict(stored)
    assert legacy.secrets is None
    later = Release("shop", 2, "sha256:a", config={"B": "2"}, secrets=["B"])
    app = App("shop", config={"A": "1"}, secrets=["A"])
    # A is secret now, B was recorded secret in a later release: both masked; C and D never were
    assert release_secrets(legacy, app, [legacy, later]) == {"A", "B"}
    assert Release.from_dict(later.to_dict()).secrets == ["B"]
    assert Release.from_dict({**stored, "secrets": []}).secrets == []


def test_rollback_to_a_release_stored_without_a_record_keeps_its_keys_masked(tmp_path, run):
    async def main() -> None:
        server, port = await _http_server()
        world = World(tmp_path, port)
        try:
            p, state = world.platform, world.state
            await p.create_app("shop")
            state.save_app(App("shop", release=2, config={}, secrets=[]))
            state.save_release(
                Release.from_dict(
                    {
                        "app": "shop",
                        "version": 1,
                        "image": "sha256:a",
                        "config": {"DSN": SECRET_A},
                        "status": "superseded",
                    }
                )
            )
            state.save_release(
                Release("shop", 2, "sha256:a", config={"DSN": "x"}, secrets=["DSN"], status=ReleaseStatus.ACTIVE)
            )
            assert [r["config"]["DSN"] for r in await p.releases("shop")] == [MASK, MASK]
            job = await p.rollback("shop", 1)
            await job.task
            assert job.result["ok"], job.result
            assert state.get_app("shop").secrets == ["DSN"]
            assert (await p.config("shop"))["DSN"] == MASK
            assert state.get_release("shop", 3).secrets == ["DSN"]
        finally:
            server.close()
            await server.wait_closed()
            world.state.close()

    run(main)


@pytest.mark.parametrize("key", ["DATABASE_URL", "UPSTREAM"])
def test_masking_does_not_depend_on_the_key_name(key):
    release = Release("a", 1, "sha256:a", config={key: "v"}, secrets=[key])
    assert masked_config(release.config, release.secrets or [])[key] == MASK
