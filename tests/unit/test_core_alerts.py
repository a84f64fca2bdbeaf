"""The alerts' loop (lbsolo.core_alerts) over a real state and bus with a fake engine and proxy: events
and looks open incidents once, saved before they are sent; a new daemon over the same state
neither forgets nor re-sends them; the rules' settings are checked and kept."""

from __future__ import annotations

import asyncio

import pytest

from lbsolo.alerts_smtp import MailChannel
from lbsolo.config import Settings
from lbsolo.core_alerts import Alerts
from lbsolo.core_context import CoreContext
from lbsolo.core_plan import RestartHistory
from lbsolo.errors import InvalidInput
from lbsolo.events import Event, EventBus
from lbsolo.models import Release
from lbsolo.proxy_routes import Route, Target
from lbsolo.run_logs import LogStore
from lbsolo.state import State


class FakeEngine:
    instance = "test"

    def __init__(self) -> None:
        self.down = False

    def follow_logs(self, *_a, **_k):
        return iter(())

    def ping(self) -> str:
        if self.down:
            raise OSError("Cannot connect to the Docker daemon")
        return "27.0"

    def info(self) -> dict:
        return {"DockerRootDir": "/"}


class FakeIngress:
    """The proxy's per-app counters, set by the test."""

    def __init__(self) -> None:
        self.counters: dict[str, dict] = {}

    def metrics(self) -> dict[str, dict]:
        return self.counters


class Mailbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def __call__(self, target, subject: str, text: str) -> None:
        self.sent.append((subject, text))


def counters(requests: int, errors: int) -> dict:
    return {
        "requests": requests,
        "responses": {"5xx": errors},
        "latency_seconds": {"buckets": [[0.005, requests], ["+Inf", requests]]},
    }


def make(tmp_path, state: State, engine: FakeEngine, ingress: FakeIngress, mailbox: Mailbox, bus: EventBus):
    s = Settings(home=tmp_path, alerts_interval=0.05)
    ctx = CoreContext(s, state, engine, ingress, bus, LogStore(s.logs_dir))  # type: ignore[arg-type]
    mail = MailChannel("smtp://127.0.0.1:25?from=a@b.c&to=ops@b.c", send=mailbox)
    return Alerts(ctx, mail=mail)


async def settle(check, timeout: float = 3.0):
    for _ in range(int(timeout / 0.01)):
        if found := check():
            return found
        await asyncio.sleep(0.01)
    raise AssertionError("not in time")


def test_an_event_incident_is_sent_once_and_survives_a_restart_without_being_sent_again(tmp_path, run):
    async def scenario() -> None:
        state, engine, ingress, mailbox = State(tmp_path / "state.json"), FakeEngine(), FakeIngress(), Mailbox()
        bus = EventBus()
        seen: list = []
        bus.add_listener(lambda e: seen.append(e) if e.kind.startswith("alert.") else None)
        alerts = make(tmp_path, state, engine, ingress, mailbox, bus)
        bus.add_listener(alerts.on_event)
        task = asyncio.create_task(alerts.run_forever())
        bus.emit("deploy.failed", "shop", "shop: the build failed (exit 1)")
        bus.emit("deploy.failed", "shop", "shop: the build failed again")
        await settle(lambda: mailbox.sent)
        await asyncio.sleep(0.2)
        assert [(e.kind, e.app) for e in seen] == [("alert.opened", "shop")]
        assert seen[0].data["rule"] == "deploy_failed" and "the build failed (exit 1)" in seen[0].message
        assert [s for s, _ in mailbox.sent] == ["[lbsolo] ALERT shop: deploy failed"]
        [row] = state.list_incidents()
        assert row["rule"] == "deploy_failed" and row["resolved_at"] is None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        # A new daemon over the same state: the open incident is known, not sent again.
        again = make(tmp_path, state, engine, ingress, mailbox, bus)
        bus.add_listener(again.on_event)
        task = asyncio.create_task(again.run_forever())
        bus.emit("deploy.failed", "shop", "shop: still failing")
        await asyncio.sleep(0.3)
        assert len(mailbox.sent) == 1 and len(seen) == 1
        bus.emit("deploy.succeeded", "shop", "shop v2 is serving")
        await settle(lambda: len(mailbox.sent) == 2)
        assert [e.kind for e in seen] == ["alert.opened", "alert.resolved"]
        assert mailbox.sent[1][0] == "[lbsolo] RESOLVED shop: deploy failed"
        listing = await again.listing()
        assert listing["open"] == [] and listing["resolved"][0]["resolution"] == "the condition cleared"
        assert listing["channels"][0]["sent"] == 1  # this daemon sent the resolution
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        state.close()

    run(scenario)


def test_looks_open_and_resolve_observed_incidents(tmp_path, run):
    async def scenario() -> None:
        state, engine, ingress, mailbox = State(tmp_path / "state.json"), FakeEngine(), FakeIngress(), Mailbox()
        alerts = make(tmp_path, state, engine, ingress, mailbox, EventBus())
        await alerts.set_rule("http_5xx", threshold=50, window=60)
        await alerts.set_rule("engine_unreachable", window=0)
        await alerts.set_rule("crash_loop", threshold=2)
        await alerts.set_rule("disk", threshold=0.0001)  # any disk in use is over it
        alerts.ctx.restarts["loop"] = RestartHistory(3, 1.0)
        alerts.ctx.routes["shop"] = Route(app="shop")  # no targets: nothing to health-check
        engine.down = True
        ingress.counters = {"gone": counters(50, 50)}  # a destroyed app's counters stay in the proxy
        await alerts.look()
        ingress.counters = {"shop": counters(30, 20), "gone": counters(90, 90)}
        await alerts.look()
        opened = {i.rule: i for i in alerts.incidents.values() if i.open}
        assert set(opened) == {"http_5xx", "engine_unreachable", "crash_loop", "disk"}
        assert opened["http_5xx"].message.startswith("shop: 67% of 30 responses were 5xx")
        assert "Cannot connect to the Docker daemon" in opened["engine_unreachable"].message
        assert opened["crash_loop"].app == "loop" and opened["disk"].key == "/"
        assert "the engine's data (images, volumes) and lbsolo's home" in opened["disk"].message

        engine.down = False
        del alerts.ctx.restarts["loop"]
        await alerts.set_rule("disk", reset=True, enabled=False)  # this machine's disk may be fuller than 85%
        ingress.counters = {"shop": counters(1000, 20)}  # 0 new errors in the window's newest part
        await alerts.set_rule("http_5xx", window=1)
        await asyncio.sleep(1.1)
        await alerts.look()
        assert [i for i in alerts.incidents.values() if i.open] == []
        assert len(mailbox.sent) == 0  # the channel's task is not running here: queued only
        assert alerts.mail.status()["waiting"] == 8
        state.close()

    run(scenario)


def test_rule_settings_are_checked_and_kept(tmp_path, run):
    async def scenario() -> None:
        state = State(tmp_path / "state.json")
        alerts = make(tmp_path, state, FakeEngine(), FakeIngress(), Mailbox(), EventBus())
        out = await alerts.set_rule("latency_p95", threshold=0.5, window="2m")
        assert (out["threshold"], out["window"], out["enabled"]) == (0.5, 120.0, True)
        with pytest.raises(InvalidInput, match="invalid threshold 500 for disk"):
            await alerts.set_rule("disk", threshold=500)
        assert state.get_setting("alerts") == {"rules": {"latency_p95": {"threshold": 0.5, "window": 120.0}}}
        fresh = make(tmp_path, state, FakeEngine(), FakeIngress(), Mailbox(), EventBus())
        assert {r["rule"]: r for r in (await fresh.listing())["rules"]}["latency_p95"]["window"] == 120.0
        state.close()

    run(scenario)


def test_the_health_look_checks_each_serving_replica_with_the_apps_host_and_path(tmp_path, run):
    async def scenario() -> None:
        state, engine, ingress, mailbox = State(tmp_path / "state.json"), FakeEngine(), FakeIngress(), Mailbox()
        alerts = make(tmp_path, state, engine, ingress, mailbox, EventBus())
        await alerts.set_rule("health_check", window=0)
        state.save_release(Release("shop", 1, "sha256:x", health={"path": "/up"}))
        answer = {"status": b"500 Internal Server Error"}
        seen: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.0 " + answer["status"] + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        alerts.ctx.routes["shop"] = Route(app="shop", release="v1", targets=(Target("127.0.0.1", port),))
        await alerts.look()
        [sick] = [i for i in alerts.incidents.values() if i.open and i.rule == "health_check"]
        assert sick.rule == "health_check" and "1 of 1 web replica(s) fail the health check (GET /up answered 500)" in (
            sick.message
        )
        assert seen[0].startswith(b"GET /up HTTP/1.0\r\nHost: shop.lbsolo.localhost\r\n")
        answer["status"] = b"200 OK"
        await alerts.look()
        assert not sick.open and sick.resolution == "the condition cleared"
        server.close()
        await server.wait_closed()
        state.close()

    run(scenario)


class FakeCerts:
    """The ACME certificates' listing: each domain with the end of the certificate it serves."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    async def list(self) -> list[dict]:
        return self.rows


def test_a_certificate_with_less_than_the_threshold_left_opens_and_its_renewal_resolves(tmp_path, run):
    async def scenario() -> None:
        state = State(tmp_path / "state.json")
        alerts = make(tmp_path, state, FakeEngine(), FakeIngress(), Mailbox(), EventBus())
        certs = alerts.certs = FakeCerts()
        now = alerts.clock()
        certs.rows = [
            {"domain": "shop.example.com", "not_after": now + 5 * 86400},
            {"domain": "new.example.com", "not_after": 0},  # none issued yet: nothing to say
            {"domain": "api.example.com", "not_after": now + 60 * 86400},
        ]
        await alerts.look()
        [soon] = [i for i in alerts.incidents.values() if i.open and i.rule == "cert_expiring"]
        assert soon.rule == "cert_expiring" and soon.key == "shop.example.com" and soon.app is None
        assert "certificate for shop.example.com expires in 5.0 days" in soon.message
        certs.rows[0]["not_after"] = now + 90 * 86400  # renewed
        await alerts.look()
        assert not soon.open
        state.close()

    run(scenario)


def test_just_after_a_start_an_open_crash_loop_or_5xx_incident_is_not_resolved_for_want_of_data(tmp_path, run):
    async def scenario() -> None:
        state = State(tmp_path / "state.json")
        before = make(tmp_path, state, FakeEngine(), FakeIngress(), Mailbox(), EventBus())
        before.ctx.restarts["loop"] = RestartHistory(6, 1.0)
        await before.look()
        [loop] = [i for i in before.incidents.values() if i.open and i.rule == "crash_loop"]
        # A new daemon: no restart history, no counters yet.
        after = make(tmp_path, state, FakeEngine(), FakeIngress(), Mailbox(), EventBus())
        task = asyncio.create_task(after.run_forever())
        await asyncio.sleep(0.3)  # several looks
        assert after.incidents[loop.id].open
        after._started = after.clock() - 61  # the warm-up is over: absent now means ended
        await settle(lambda: not after.incidents[loop.id].open)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        state.close()

    run(scenario)


def test_a_backup_incident_of_an_addon_that_is_gone_resolves(tmp_path, run):
    async def scenario() -> None:
        state = State(tmp_path / "state.json")
        alerts = make(tmp_path, state, FakeEngine(), FakeIngress(), Mailbox(), EventBus())
        alerts.on_event(Event(1, 1.0, "addon.backup.failed", "db1", "backup of db1 failed: disk full", {}))
        await alerts._events()
        [failed] = [i for i in alerts.incidents.values() if i.open]
        assert (failed.rule, failed.key, failed.app) == ("backup_failed", "addon:db1", None)
        await alerts.look()  # no add-on db1 in the state
        assert not failed.open
        state.close()

    run(scenario)
