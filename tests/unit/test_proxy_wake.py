"""A sleeping app's requests are held by the proxy while it wakes (proxy_wake), on real sockets."""

from __future__ import annotations

import asyncio

from lbsolo.proxy import Route, Target
from tests.unit.proxy_harness import Conn, stack

ASLEEP = Route(app="nap", release="v1", asleep=True)


def test_requests_for_a_sleeping_app_wait_for_its_targets_and_one_wake_is_asked(run):
    async def scenario():
        asked: list[str] = []
        async with stack(wake=asked.append) as (proxy, app):
            proxy.set_routes({"nap": ASLEEP})
            conns = [await Conn.open(proxy.port) for _ in range(3)]
            pending = [asyncio.ensure_future(c.request(path=f"/{i}", host="nap.lbsolo.localhost")) for i, c in
                       enumerate(conns)]  # fmt: skip
            await asyncio.sleep(0.2)
            assert not any(p.done() for p in pending)  # held, not refused
            assert asked == ["nap"]  # one wake for all of them
            # Another app's routes change meanwhile: still asleep, still held.
            proxy.set_routes({"nap": ASLEEP, "other": Route(app="other")})
            await asyncio.sleep(0.05)
            assert not any(p.done() for p in pending)
            proxy.set_routes({"nap": Route(app="nap", release="v1", targets=(Target("127.0.0.1", app.port),))})
            answers = await asyncio.gather(*pending)
            assert [r.status for r in answers] == [200, 200, 200]
            assert sorted(s.target for s in app.seen) == ["/0", "/1", "/2"]
            for c in conns:
                await c.close()

    run(scenario)


def test_a_failed_wake_answers_the_held_requests_503_at_once_and_a_late_one_times_out(run):
    async def scenario():
        asked: list[str] = []
        async with stack(wake=asked.append, wake_timeout=0.3) as (proxy, _app):
            proxy.set_routes({"nap": ASLEEP})
            c = await Conn.open(proxy.port)
            pending = asyncio.ensure_future(c.request(host="nap.lbsolo.localhost"))
            await asyncio.sleep(0.1)
            proxy.wake_failed("nap", "app nap could not wake up: health check failed")
            r = await pending
            assert r.status == 503 and "could not wake up" in r.body.decode()
            # The next request asks again; nobody answers: 503 once its wait is over.
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            r = await c.request(host="nap.lbsolo.localhost")
            assert r.status == 503 and "did not wake up in time" in r.body.decode()
            assert 0.25 < loop.time() - t0 < 2.5
            assert asked == ["nap", "nap"]
            await c.close()

    run(scenario)


def test_a_held_client_that_leaves_costs_nothing_and_a_stopped_app_gets_503(run):
    async def scenario():
        async with stack(wake=lambda app: None) as (proxy, app):
            proxy.set_routes({"nap": ASLEEP})
            gone = await Conn.open(proxy.port)
            left = asyncio.ensure_future(gone.request(host="nap.lbsolo.localhost"))
            await asyncio.sleep(0.1)
            left.cancel()
            await gone.close()
            c = await Conn.open(proxy.port)
            waiting = asyncio.ensure_future(c.request(host="nap.lbsolo.localhost"))
            await asyncio.sleep(0.1)
            proxy.set_routes({"nap": Route(app="nap")})  # stopped, not asleep: nothing to wait for
            r = await waiting
            assert r.status == 503 and "app nap is not running" in r.body.decode()
            assert app.seen == []
            await c.close()

    run(scenario)


def test_without_a_wake_callback_a_sleeping_route_is_503_like_a_stopped_one(run):
    async def scenario():
        async with stack() as (proxy, _app):
            proxy.set_routes({"nap": ASLEEP})
            c = await Conn.open(proxy.port)
            assert (await c.request(host="nap.lbsolo.localhost")).status == 503
            await c.close()

    run(scenario)


def test_last_requests_say_when_each_app_was_asked_for(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            loop = asyncio.get_running_loop()
            before = loop.time()
            assert (await c.request()).status == 200
            await asyncio.sleep(0.4)  # a fold
            assert "hello" in proxy.last_requests
            assert proxy.last_requests["hello"] >= before - 1
            await c.close()

    run(scenario)


def test_a_browser_waiting_long_gets_a_starting_page_that_reloads_and_an_api_client_keeps_waiting(run):
    """A page request (Accept: text/html) held past wake_page_after is answered 503 with
    Retry-After and a page that reloads itself; a JSON client's request waits on for the app;
    the reload is held again and served once the app has targets. One wake is asked all along."""

    async def scenario():
        asked: list[str] = []
        async with stack(wake=asked.append, wake_page_after=0.3) as (proxy, app):
            proxy.set_routes({"nap": ASLEEP})
            browser, api = await Conn.open(proxy.port), await Conn.open(proxy.port)
            html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
            page = asyncio.ensure_future(browser.request(host="nap.lbsolo.localhost", headers=html))
            as_json = {"Accept": "application/json"}
            call = asyncio.ensure_future(api.request(host="nap.lbsolo.localhost", headers=as_json))
            r = await asyncio.wait_for(page, 3)
            assert r.status == 503 and r.header("retry-after") == "2"
            assert '<meta http-equiv="refresh" content="2">' in r.body.decode()
            assert "nap is starting" in r.body.decode()
            assert not call.done()
            again = asyncio.ensure_future(browser.request(host="nap.lbsolo.localhost", headers=html))
            await asyncio.sleep(0.1)
            proxy.set_routes({"nap": Route(app="nap", release="v1", targets=(Target("127.0.0.1", app.port),))})
            assert (await asyncio.wait_for(again, 3)).status == 200
            assert (await asyncio.wait_for(call, 3)).status == 200
            assert asked == ["nap"]  # the API client was still held: the wake under way is not asked again
            for c in (browser, api):
                await c.close()

    run(scenario)
