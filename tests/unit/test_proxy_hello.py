"""The HTTPS listener's ClientHello first look (lbsolo.proxy_hello): parsed from real ClientHellos,
then over real sockets, on asyncio's loop and uvloop's: a name no route serves gets the
unrecognized_name alert (it arrives), an address, no name, or a routed name without a certificate
yet gets the default certificate, a TLS-ALPN-01 validation
gets the challenge certificate and nothing else does, a trickled ClientHello is waited for
without spinning, a silent client is dropped at the handshake timeout."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from lbsolo.proxy import ProxyServer, Route, Target
from lbsolo.proxy_hello import ACME_TLS_ALPN, Hello, NotTLS, parse_client_hello
from lbsolo.proxy_tls import CertStore, LocalCA

DOMAIN = "lbsolo.localhost"


def _client_hello(server_name: str | None, alpn: list[str] | None) -> bytes:
    """The bytes a real client (Python's ssl, OpenSSL) sends first."""
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    if server_name is None:
        ctx.check_hostname = False
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_real_client_hello_gives_its_server_name_and_alpn_offer():
    data = _client_hello("Shop.Example.com", [ACME_TLS_ALPN])
    assert parse_client_hello(data) == Hello("shop.example.com", (ACME_TLS_ALPN,))
    assert parse_client_hello(_client_hello("a.b", ["h2", "http/1.1"])) == Hello("a.b", ("h2", "http/1.1"))
    assert parse_client_hello(_client_hello("127.0.0.1", None)) == Hello(None, ())  # no SNI for an address
    for cut in (0, 3, 5, len(data) // 2, len(data) - 1):
        assert parse_client_hello(data[:cut]) is None  # more to come
    for junk in (b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", b"\x16\x03\x01\xff\xff"):
        with pytest.raises(NotTLS):
            parse_client_hello(junk)
    # A ClientHello cut short inside its own length: malformed, never an IndexError.
    body = bytearray(data)
    body[5 + 4 + 34] = 0xFF  # a session id longer than the message
    with pytest.raises(NotTLS):
        parse_client_hello(bytes(body))


@contextlib.asynccontextmanager
async def listener(tmp_path: Path, timeout: float = 10.0):
    ca = LocalCA(tmp_path / "ca", domain=DOMAIN)
    store = CertStore(DOMAIN, ca, routed=lambda name: proxy.serves_host(name))
    user = LocalCA(tmp_path / "user-ca", "someone else's CA")
    store.add("shop.example.com", *user.issue("shop.example.com"))
    proxy = ProxyServer(port=0, domain=DOMAIN, https_port=0, tls=store.server_context(), tls_knows=store.knows,
                        header_timeout=timeout)  # fmt: skip
    target = (Target("127.0.0.1", 9),)
    proxy.set_routes({"hello": Route(app="hello", targets=target, domains=("shop.example.com", "new.example.com/api"))})
    await proxy.start()
    try:
        yield proxy, ca, user
    finally:
        await _close_all()
        await proxy.stop(1)


_open: list[asyncio.StreamWriter] = []


async def _handshake(port: int, name: str, alpn: list[str] | None = None) -> tuple[ssl.SSLObject, asyncio.StreamReader]:
    """A finished handshake (closed at the scenario's end, `_close_all`)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    _open.append(writer)
    return writer.get_extra_info("ssl_object"), reader


async def _close_all() -> None:
    while _open:
        writer = _open.pop()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _subject(tls: ssl.SSLObject) -> str:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def _on_both_loops(scenario) -> None:
    asyncio.run(scenario())
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(scenario())


def test_an_unknown_name_gets_the_alert_and_an_address_or_no_name_the_default_certificate(tmp_path: Path):
    async def scenario():
        async with listener(tmp_path) as (proxy, _ca, _user):
            with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
                await _handshake(proxy.https_port, "nope.example.org")
            tls, _ = await _handshake(proxy.https_port, "app.lbsolo.localhost")
            assert _subject(tls) == "CN=lbsolo.localhost"
            tls, _ = await _handshake(proxy.https_port, "shop.example.com")
            assert _subject(tls) == "CN=shop.example.com"
            # A name a route serves, no certificate yet (an ACME order in flight): the default meanwhile.
            tls, _ = await _handshake(proxy.https_port, "new.example.com")
            assert _subject(tls) == "CN=lbsolo.localhost"
            if shutil.which("openssl"):  # what the issue saw: an address as SNI, an unknown name
                port = proxy.https_port

                def s_client(name: str) -> str:
                    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name]
                    done = subprocess.run(cmd, input=b"", capture_output=True, timeout=10)
                    return (done.stdout + done.stderr).decode(errors="replace")

                by_address = await asyncio.to_thread(s_client, "127.0.0.1")
                assert "CN = lbsolo.localhost" in by_address and "unexpected eof" not in by_address.lower()
                unknown = await asyncio.to_thread(s_client, "nope.example.org")
                assert "unrecognized name" in unknown and "unexpected eof" not in unknown.lower()

    _on_both_loops(scenario)


def test_tls_alpn_01_gets_the_challenge_certificate_and_every_other_handshake_is_unchanged(tmp_path: Path):
    chain, key = LocalCA(tmp_path / "challenge", "challenge stand-in").issue("shop.example.com")
    challenge_der = ssl.PEM_cert_to_DER_cert(
        chain.decode().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )

    async def scenario():
        async with listener(tmp_path) as (proxy, _ca, _user):
            proxy.put_alpn_challenge("Shop.Example.com", chain, key)
            port = proxy.https_port
            tls, reader = await _handshake(port, "shop.example.com", [ACME_TLS_ALPN])
            assert tls.selected_alpn_protocol() == ACME_TLS_ALPN
            assert tls.getpeercert(binary_form=True) == challenge_der
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the handshake
            # Browsers (h2, http/1.1) for the same name, and acme-tls/1 for a name with no challenge:
            # the usual certificates.
            tls, _ = await _handshake(port, "shop.example.com", ["h2", "http/1.1"])
            assert tls.selected_alpn_protocol() == "h2" and tls.getpeercert(binary_form=True) != challenge_der
            tls, _ = await _handshake(port, "app.lbsolo.localhost", [ACME_TLS_ALPN])
            assert tls.selected_alpn_protocol() is None and _subject(tls) == "CN=lbsolo.localhost"
            proxy.drop_alpn_challenge("shop.example.com")
            tls, _ = await _handshake(port, "shop.example.com", [ACME_TLS_ALPN])
            assert tls.selected_alpn_protocol() is None

    _on_both_loops(scenario)


def test_a_trickled_client_hello_is_waited_for_without_spinning_and_a_silent_client_is_dropped(tmp_path: Path):
    hello = _client_hello("app.lbsolo.localhost", ["http/1.1"])

    async def scenario():
        async with listener(tmp_path, timeout=1.0) as (proxy, _ca, _user):
            port = proxy.https_port

            def trickle() -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(hello[:7])
                    time.sleep(0.4)
                    s.sendall(hello[7:])
                    return s.recv(5)  # the server's first record: a ServerHello (handshake, 0x16)

            cpu = time.process_time()
            assert (await asyncio.to_thread(trickle))[:1] == b"\x16"
            assert time.process_time() - cpu < 0.2  # polled on a timer while the rest was missing

            def silent() -> tuple[bytes, float]:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    start = time.monotonic()
                    return s.recv(5), time.monotonic() - start

            data, waited = await asyncio.to_thread(silent)
            assert data == b"" and 0.8 < waited < 3.0
            assert not proxy._tls_server.waiting  # type: ignore[union-attr]

    _on_both_loops(scenario)
