"""ACME HTTP-01 on the proxy's HTTP listener, the preflight of core_certs, and ACME certificates in
the TLS store (user-supplied ones keep priority). Real loopback sockets; a fake state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lbsolo.acme_plan import CertRecord
from lbsolo.config import Settings
from lbsolo.core_certs import Certificates
from lbsolo.dns import DNSServer, Zone
from lbsolo.errors import LbsoloError
from lbsolo.events import EventBus
from lbsolo.proxy import ProxyServer, Route, Target
from lbsolo.proxy_tls import CertStore, LocalCA, LocalCASource, PushedSource
from tests.unit.proxy_harness import App, Conn

DOMAIN = "lbsolo.localhost"
PREFIX = "/.well-known/acme-challenge/"


async def _proxy(app: App, *, acme: bool = True) -> ProxyServer:
    proxy = ProxyServer(port=0, domain=DOMAIN, acme_challenges=acme)
    target = (Target("127.0.0.1", app.port),)
    proxy.set_routes(
        {
            "shop": Route(app="shop", targets=target, domains=("shop.example.com",), https_redirect=True),
            "idle": Route(app="idle", domains=("idle.example.com",)),  # not running: 503 for anything else
        }
    )
    await proxy.start()
    return proxy


def test_tokens_are_answered_by_the_proxy_on_any_routed_host_and_never_reach_the_app(run):
    async def scenario():
        app = await App().start()
        proxy = await _proxy(app)
        try:
            proxy.put_challenge("tok-1", "tok-1.thumbprint")
            c = await Conn.open(proxy.port)
            for host in ("shop.example.com", "SHOP.example.com:80", "idle.example.com", "shop.lbsolo.localhost"):
                r = await c.request(path=PREFIX + "tok-1", host=host)
                assert (r.status, r.body) == (200, b"tok-1.thumbprint"), host
                assert r.header("Connection") is None  # kept alive
            r = await c.request("HEAD", PREFIX + "tok-1", host="shop.example.com")
            assert r.status == 200 and r.header("Content-Length") == str(len(b"tok-1.thumbprint"))
            # An unknown token, another method, a token being withdrawn: 404 from the proxy itself.
            assert (await c.request(path=PREFIX + "nope", host="shop.example.com")).status == 404
            assert (await c.request("POST", PREFIX + "tok-1", host="shop.example.com", body=b"x")).status == 404
            proxy.drop_challenge("tok-1")
            assert (await c.request(path=PREFIX + "tok-1", host="shop.example.com")).status == 404
            # A host lbsolo does not serve gets its usual 404, whatever the path.
            r = await c.request(path=PREFIX + "tok-1", host="elsewhere.example.net")
            assert r.status == 404 and b"no app is served" in r.body
            # The app saw none of it; its other paths still reach it (after the redirect rule).
            assert app.seen == []
            r = await c.request(path="/.well-known/other", host="shop.lbsolo.localhost")
            assert r.status == 200 and [s.target for s in app.seen] == ["/.well-known/other"]
            await c.close()
        finally:
            await proxy.stop(1)
            await app.close()

    run(scenario)


def test_without_acme_the_path_goes_to_the_app_as_before(run):
    async def scenario():
        app = await App().start()
        proxy = await _proxy(app, acme=False)
        try:
            with pytest.raises(RuntimeError):
                proxy.put_challenge("t", "v")
            c = await Conn.open(proxy.port)
            r = await c.request(path=PREFIX + "abc", host="shop.lbsolo.localhost")
            assert r.status == 200 and [s.target for s in app.seen] == [PREFIX + "abc"]
            await c.close()
        finally:
            await proxy.stop(1)
            await app.close()

    run(scenario)


@dataclass
class _App:
    name: str
    domains: list[str] = field(default_factory=list)


class _State:
    def __init__(self, *domains: str) -> None:
        self.apps = [_App("shop", list(domains))]

    def list_apps(self) -> list[_App]:
        return self.apps

    def list_routes(self) -> list[_App]:
        return []


async def _dns(*names: str, ipv4: str = "127.0.0.1") -> DNSServer:
    dns = DNSServer(host="127.0.0.1", port=0, zone=Zone(domain=DOMAIN, ipv4=(ipv4,), domains=frozenset(names)))
    await dns.start()
    return dns


def _certs(tmp_path: Path, proxy: ProxyServer, dns_port: int, **settings) -> Certificates:
    values = {
        "home": tmp_path,
        "acme_email": "ops@example.com",
        "acme_resolver": f"127.0.0.1:{dns_port}",
        "acme_http_port": proxy.port,
        "proxy_host": "127.0.0.1",
        **settings,
    }
    s = Settings(**values)
    return Certificates(s, _State("shop.example.com", "far.example.com"), EventBus(), proxy)  # type: ignore[arg-type]


def test_the_preflight_passes_only_for_a_name_that_points_here_and_reaches_this_proxy(run, tmp_path: Path):
    async def scenario():
        app = await App().start()
        proxy = await _proxy(app)
        here = await _dns("shop.example.com")
        far = await _dns("far.example.com", ipv4="192.0.2.7")
        try:
            await _certs(tmp_path, proxy, here.port).preflight("shop.example.com")
            assert proxy.challenges == {}  # the self-check's token is gone
            with pytest.raises(LbsoloError, match="does not resolve"):
                await _certs(tmp_path, proxy, here.port).preflight("nowhere.example.com")
            with pytest.raises(LbsoloError, match=r"resolves to 192\.0\.2\.7, not to this server \(127\.0\.0\.1\)"):
                await _certs(tmp_path, proxy, far.port).preflight("far.example.com")
            # Resolves here, but what answers on the HTTP port is not this proxy.
            other = await asyncio.start_server(_answers_404, "127.0.0.1", 0)
            wrong = _certs(tmp_path, proxy, here.port, acme_http_port=other.sockets[0].getsockname()[1])
            with pytest.raises(LbsoloError, match="did not reach this proxy"):
                await wrong.preflight("shop.example.com")
            other.close()
            await other.wait_closed()
            assert app.seen == []
        finally:
            await here.stop()
            await far.stop()
            await proxy.stop(1)
            await app.close()

    run(scenario)


async def _answers_404(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


def test_a_failed_preflight_sends_no_order_and_backs_off(run, tmp_path: Path):
    class NoCA:
        def order(self, *args, **kw):
            raise AssertionError("no order may be sent when the preflight fails")

    async def scenario():
        app = await App().start()
        proxy = await _proxy(app)
        far = await _dns("far.example.com", ipv4="192.0.2.7")
        try:
            certs = _certs(tmp_path, proxy, far.port)
            certs._account = NoCA()  # type: ignore[assignment]
            out = await certs.issue("far.example.com")
            assert out["status"] == "waiting" and out["ca_attempts_last_hour"] == 0 and out["failures"] == 1
            assert "not to this server" in out["last_error"] and out["next_try"] >= out["last_attempt"] + 60
            saved = tmp_path / "acme" / "certs" / "far.example.com.json"
            assert saved.stat().st_mode & 0o777 == 0o600
            assert CertRecord.from_dict(json.loads(saved.read_text())).failures == 1
        finally:
            await far.stop()
            await proxy.stop(1)
            await app.close()

    run(scenario)


def test_an_acme_certificate_is_served_once_pushed_and_a_user_certificate_keeps_priority(tmp_path: Path):
    local = LocalCA(tmp_path / "local", domain=DOMAIN)
    acme_ca = LocalCA(tmp_path / "acme-ca", "Pretend ACME CA")
    user_ca = LocalCA(tmp_path / "user-ca", "User CA")
    pushed = PushedSource()
    store = CertStore(DOMAIN, local, tmp_path / "certs", sources=[LocalCASource(local, DOMAIN), pushed])
    assert store.context_for("shop.example.com") is None  # nothing yet: no certificate for a custom domain
    pushed.put("shop.example.com", *acme_ca.issue("shop.example.com"))
    store.refresh("shop.example.com")
    first = store.context_for("shop.example.com")
    assert first is not None and _issuer(first, tmp_path, acme_ca, "shop.example.com") == "Pretend ACME CA"
    # A renewal: the next handshake gets the new one.
    pushed.put("shop.example.com", *acme_ca.issue("shop.example.com"))
    store.refresh("shop.example.com")
    assert store.context_for("shop.example.com") is not first
    # A user certificate for the name wins over ACME's, before and after a refresh.
    store.add("shop.example.com", *user_ca.issue("shop.example.com"))
    store.refresh("shop.example.com")
    ctx = store.context_for("shop.example.com")
    assert ctx is not None and _issuer(ctx, tmp_path, user_ca, "shop.example.com") == "User CA"



def test_an_obtained_certificate_for_an_app_under_a_public_domain_wins_over_the_domain_wildcard(tmp_path: Path):
    """`<app>.<domain>` on a public lbsolo domain: the ACME certificate (the store's `obtained`)
    is served instead of the local CA's wildcard once it is in; other apps keep the wildcard."""
    domain = "apps.example.com"
    local = LocalCA(tmp_path / "local", domain=domain)
    acme_ca = LocalCA(tmp_path / "acme-ca", "Pretend ACME CA")
    user_ca = LocalCA(tmp_path / "user-ca", "User CA")
    pushed = PushedSource()
    store = CertStore(domain, local, tmp_path / "certs", sources=[LocalCASource(local, domain)], obtained=pushed)
    wildcard = store.context_for("shop." + domain)
    assert wildcard is not None and _issuer(wildcard, tmp_path, local, "shop." + domain) == "lbsolo local CA"
    pushed.put("shop." + domain, *acme_ca.issue("shop." + domain))
    store.refresh("shop." + domain)
    ctx = store.context_for("shop." + domain)
    assert ctx is not None and _issuer(ctx, tmp_path, acme_ca, "shop." + domain) == "Pretend ACME CA"
    assert store.context_for("blog." + domain) is wildcard
    store.add("shop." + domain, *user_ca.issue("shop." + domain))  # the user's still wins
    ctx = store.context_for("shop." + domain)
    assert ctx is not None and _issuer(ctx, tmp_path, user_ca, "shop." + domain) == "User CA"

def _issuer(ctx: ssl.SSLContext, tmp_path: Path, ca: LocalCA, host: str) -> str:
    """The issuer's common name of the certificate `ctx` serves, read through a real handshake in memory."""
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client.wrap_bio(c_in, c_out, server_hostname=host)
    srv = ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (cli, srv):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    cert = cli.getpeercert()
    assert cert is not None
    return dict(x[0] for x in cert["issuer"])["commonName"]
