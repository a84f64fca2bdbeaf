"""What a VPS user sees over HTTPS (issue 14, part 3): HSTS opt-in per app (sent over TLS only, the
proxy over real sockets), the HTTPS redirect turned on by a first certificate unless chosen, and
the checks on bad input before anything changes."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from lbsolo.core_plan import HSTS_MAX_AGE_LIMIT, hsts_line, validate_hsts_max_age
from lbsolo.errors import InvalidInput
from lbsolo.events import Event
from lbsolo.proxy import ProxyServer, Route, Target
from lbsolo.proxy_tls import CertStore, LocalCA
from tests.unit.proxy_harness import App, read_response
from tests.unit.test_rollout import _platform

DOMAIN = "lbsolo.localhost"
HSTS = hsts_line(31536000, True)


def test_the_hsts_line_and_its_max_age_bounds():
    assert hsts_line(0, True) == b""
    assert HSTS == b"Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n"
    assert hsts_line(60, False) == b"Strict-Transport-Security: max-age=60\r\n"
    assert validate_hsts_max_age(HSTS_MAX_AGE_LIMIT) == HSTS_MAX_AGE_LIMIT
    for bad in (0, -1, HSTS_MAX_AGE_LIMIT + 1, True, "60", 1.5):
        with pytest.raises(InvalidInput, match="from 1 to 63072000"):
            validate_hsts_max_age(bad)


@contextlib.asynccontextmanager
async def _stack(tmp_path: Path):
    ca = LocalCA(tmp_path / "ca")
    store = CertStore(DOMAIN, ca)
    app = await App().start()
    proxy = ProxyServer(port=0, domain=DOMAIN, https_port=0, tls=store.server_context())
    target = (Target("127.0.0.1", app.port),)
    proxy.set_routes(
        {
            "strict": Route(app="strict", targets=target, hsts=HSTS),
            "idle": Route(app="idle", hsts=HSTS),  # not running: the proxy's own 503
            "plain": Route(app="plain", targets=target),
        }
    )
    await proxy.start()
    try:
        yield proxy, ca
    finally:
        await proxy.stop(1)
        await app.close()


async def _get(port: int, host: str, path: str = "/", cafile: Path | None = None):
    ctx = None
    if cafile is not None:
        ctx = ssl.create_default_context(cafile=str(cafile))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host if ctx else None)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return await read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def test_hsts_goes_on_responses_over_https_only_and_only_for_the_apps_that_asked(run, tmp_path: Path):
    async def scenario():
        async with _stack(tmp_path) as (proxy, ca):
            value = "max-age=31536000; includeSubDomains"
            tls = proxy.https_port
            for path in ("/", "/chunked"):  # the whole-response fast path and the parser path
                r = await _get(tls, f"strict.{DOMAIN}", path, ca.cert_path)
                assert r.status == 200 and r.header("Strict-Transport-Security") == value, path
                r = await _get(proxy.port, f"strict.{DOMAIN}", path)  # plain HTTP: never (RFC 6797)
                assert r.status == 200 and r.header("Strict-Transport-Security") is None, path
            r = await _get(tls, f"idle.{DOMAIN}", "/", ca.cert_path)
            assert r.status == 503 and r.header("Strict-Transport-Security") == value
            r = await _get(proxy.port, f"idle.{DOMAIN}")
            assert r.status == 503 and r.header("Strict-Transport-Security") is None
            r = await _get(tls, f"plain.{DOMAIN}", "/", ca.cert_path)
            assert r.status == 200 and r.header("Strict-Transport-Security") is None

    run(scenario)


def test_core_turns_hsts_on_and_off_and_refuses_bad_input_changing_nothing(run, tmp_path: Path):
    async def main() -> None:
        platform, _, ingress, state = await _platform(tmp_path, {})
        with pytest.raises(InvalidInput, match=r"no HTTPS listener.*--https-port"):
            await platform.set_https("web1", None, hsts=True)
        ctx = platform.routing.ctx
        ctx.settings = replace(ctx.settings, proxy_https_port=8443)
        out = await platform.set_https("web1", None, hsts=True)
        assert (out["hsts"], out["hsts_max_age"], out["hsts_subdomains"]) == (True, 31536000, False)
        assert ingress.routes["web1"].hsts == b"Strict-Transport-Security: max-age=31536000\r\n"
        assert not out["redirect_chosen"]  # HSTS alone is no choice about the redirect
        await platform.set_https("web1", None, hsts_max_age=600, hsts_subdomains=True)
        assert ingress.routes["web1"].hsts == b"Strict-Transport-Security: max-age=600; includeSubDomains\r\n"
        await platform.reconcile()
        assert ingress.routes["web1"].hsts.startswith(b"Strict-Transport-Security: max-age=600")  # desired state too
        for bad in (0, -5, HSTS_MAX_AGE_LIMIT + 1):
            with pytest.raises(InvalidInput, match="HSTS max-age"):
                await platform.set_https("web1", True, hsts=True, hsts_max_age=bad)
        with pytest.raises(InvalidInput, match="--no-hsts takes"):
            await platform.set_https("web1", True, hsts=False, hsts_max_age=60)
        app = state.get_app("web1")
        assert (app.hsts_max_age, app.https_redirect, app.redirect_chosen) == (600, False, False)  # unchanged
        await platform.set_https("web1", None, hsts=False)
        assert ingress.routes["web1"].hsts == b"" and state.get_app("web1").hsts_max_age == 0
        with pytest.raises(InvalidInput, match="HSTS is off for web1"):
            await platform.set_https("web1", None, hsts_max_age=60)

    run(main)


def test_a_first_certificate_turns_the_redirect_on_unless_the_owner_chose(run, tmp_path: Path):
    async def main() -> None:
        platform, _, ingress, state = await _platform(tmp_path, {})
        await platform.create_app("kept")
        await platform.set_domains("web1", ["shop.example.org"], [])
        await platform.set_domains("kept", ["kept.example.org", "dev.test"], [])
        await platform.set_https("kept", False)  # said --no-redirect once: never overridden
        routing = platform.routing
        assert await routing.redirect_after_certificate("dev.test") is None  # not a public name
        assert await routing.redirect_after_certificate("kept.example.org") is None
        assert not ingress.routes["kept"].https_redirect and state.get_app("kept").redirect_chosen
        assert await routing.redirect_after_certificate("shop.example.org") == "web1"
        assert ingress.routes["web1"].https_redirect and state.get_app("web1").https_redirect
        assert not state.get_app("web1").redirect_chosen  # still the default, not a choice
        # Through the bus, as the daemon wires it: only a domain's first certificate counts.
        await platform.set_https("web1", False)
        routing.on_event(Event(1, 0.0, "cert.issued", None, "", {"domain": "shop.example.org", "first": True}))
        await asyncio.sleep(0.05)
        assert not ingress.routes["web1"].https_redirect  # chosen by hand since

    run(main)
