"""HTTPS: the local CA, per-host certificates, SNI choosing user certificates; over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import stat
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from lbsolo.proxy import ProxyServer, Route, Target
from lbsolo.proxy_tls import CertStore, LocalCA
from tests.unit.proxy_harness import App, read_response

DOMAIN = "lbsolo.localhost"


def test_the_local_ca_is_created_once_and_kept_private(tmp_path: Path):
    ca = LocalCA(tmp_path / "ca").load_or_create()
    assert stat.S_IMODE(ca.key_path.stat().st_mode) == 0o600
    again = LocalCA(tmp_path / "ca").load_or_create()
    assert again.cert_pem == ca.cert_pem
    assert str(ca.cert_path) in ca.trust_instructions()


def test_unknown_names_outside_the_domain_get_no_certificate(tmp_path: Path):
    store = CertStore(DOMAIN, LocalCA(tmp_path / "ca"))
    assert store.context_for("elsewhere.example") is None
    assert store.context_for("app.lbsolo.localhost") is store.context_for("APP.lbsolo.localhost.")


@contextlib.asynccontextmanager
async def https_stack(tmp_path: Path, store: CertStore):
    app = await App().start()
    proxy = ProxyServer(port=0, domain=DOMAIN, https_port=0, tls=store.server_context())
    target = (Target("127.0.0.1", app.port),)
    proxy.set_routes({"hello": Route(app="hello", targets=target, domains=("shop.test",))})
    await proxy.start()
    try:
        yield proxy, app
    finally:
        await proxy.stop(1)
        await app.close()


async def _get(port: int, server_name: str, cafile: Path) -> tuple[int, dict, str]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name)
    try:
        cert = writer.get_extra_info("peercert")
        writer.write(f"GET /secure HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        r = await read_response(reader)
        san = dict(cert["subjectAltName"])["DNS"]
        return r.status, r.json(), san
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def test_a_client_trusting_the_local_ca_gets_a_valid_certificate_and_sni_picks_user_ones(run, tmp_path: Path):
    ca = LocalCA(tmp_path / "ca")
    store = CertStore(DOMAIN, ca)
    other = LocalCA(tmp_path / "user-ca", name="someone else's CA")  # stands in for a real CA
    store.add("shop.test", *other.issue("shop.test"))

    async def scenario():
        async with https_stack(tmp_path, store) as (proxy, app):
            assert proxy.https_port
            status, doc, san = await _get(proxy.https_port, "hello.lbsolo.localhost", ca.cert_path)
            # One certificate for the domain and *.<domain> serves every app (dict() keeps the last SAN).
            assert (status, doc["target"], san) == (200, "/secure", "*.lbsolo.localhost")
            assert app.seen[-1].header("X-Forwarded-Proto") == "https"

            status, _doc, san = await _get(proxy.https_port, "shop.test", other.cert_path)
            assert (status, san) == (200, "shop.test")

            with pytest.raises(ssl.SSLError):  # the lbsolo CA did not issue shop.test's certificate
                await _get(proxy.https_port, "shop.test", ca.cert_path)

            # Plain HTTP keeps working beside it, and says so upstream.
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\nConnection: close\r\n\r\n")
            assert (await read_response(reader)).status == 200
            assert app.seen[-1].header("X-Forwarded-Proto") == "http"
            writer.close()
            await writer.wait_closed()

    run(scenario)
