"""The preflight before an ACME order: what the CA would check, checked first at no cost.

The name must resolve (through the resolver `LBSOLO_ACME_RESOLVER`) to this server's addresses,
and the challenge the order will use must reach this proxy through the name: for HTTP-01 a
self-check token fetched from http://<name>:<acme_http_port>/.well-known/acme-challenge/, for
TLS-ALPN-01 a handshake with <name>:<acme_tls_port> offering `acme-tls/1` that must get the
self-check certificate put on the listener for it. A failure raises `PreflightFailed`, saying why.

What it must not do: talk to the CA, or leave a self-check token or certificate behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from typing import Protocol

from lbsolo.acme_plan import Challenge
from lbsolo.config import Settings
from lbsolo.dns_forward import lookup_addresses, parse_upstream
from lbsolo.errors import LbsoloError

__all__ = ["ChallengeBoard", "Preflight", "PreflightFailed"]

_TIMEOUT = 5.0
_ACME_TLS_ALPN = "acme-tls/1"


class PreflightFailed(LbsoloError):
    """The name does not point here, or the challenge does not reach this proxy through it."""

    code = "preflight_failed"


class ChallengeBoard(Protocol):
    """Where challenges are put for the proxy to answer (the `ProxyServer`): HTTP-01 tokens, and
    TLS-ALPN-01 certificates (only in a daemon with an HTTPS listener)."""

    def put_challenge(self, token: str, key_authorization: str) -> None: ...

    def drop_challenge(self, token: str) -> None: ...

    def put_alpn_challenge(self, domain: str, cert_pem: bytes, key_pem: bytes) -> None: ...

    def drop_alpn_challenge(self, domain: str) -> None: ...


class Preflight:
    """`await preflight(domain, challenge)` raises PreflightFailed unless an order would pass."""

    def __init__(self, settings: Settings, board: ChallengeBoard) -> None:
        self.settings = settings
        self.board = board

    async def __call__(self, domain: str, challenge: Challenge = Challenge.HTTP01) -> None:
        addresses = await self._resolve(domain)
        here = set(self.settings.dns_ipv4) | set(self.settings.dns_ipv6)
        if not addresses:
            here_text = ", ".join(sorted(here))
            raise PreflightFailed(f"{domain} does not resolve: point its A/AAAA record at this server ({here_text})")
        ours = sorted(addresses & here)
        if not ours:
            raise PreflightFailed(
                f"{domain} resolves to {', '.join(sorted(addresses))}, not to this server ({', '.join(sorted(here))})"
            )
        if challenge == Challenge.TLS_ALPN01:
            await self._tls_check(domain, ours[0])
        else:
            await self._http_check(domain, ours[0])

    async def _resolve(self, domain: str) -> set[str]:
        resolver = self.settings.acme_resolver.strip()
        try:
            if resolver:
                return await lookup_addresses(domain, parse_upstream(resolver), _TIMEOUT)
            infos = await asyncio.get_running_loop().getaddrinfo(domain, None)
            return {str(i[4][0]) for i in infos}
        except (OSError, TimeoutError, ValueError) as e:
            raise PreflightFailed(f"{domain} could not be resolved ({e or type(e).__name__})") from e

    async def _http_check(self, domain: str, address: str) -> None:
        board = self.board
        token = secrets.token_urlsafe(24)
        value = f"{token}.lbsolo-self-check"
        port = self.settings.acme_http_port
        board.put_challenge(token, value)
        where = f"http://{domain}:{port}/.well-known/acme-challenge/"
        try:
            async with asyncio.timeout(_TIMEOUT):
                reader, writer = await asyncio.open_connection(address, port)
                try:
                    writer.write(
                        f"GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: {domain}\r\n"
                        "Connection: close\r\nUser-Agent: lbsolo-preflight\r\n\r\n".encode()
                    )
                    answer = await reader.read(64 * 1024)
                    while len(answer) < 64 * 1024 and (more := await reader.read(64 * 1024)):
                        answer += more
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
        except (OSError, TimeoutError) as e:
            raise PreflightFailed(f"the self-check through {where} failed: {e or type(e).__name__}") from e
        finally:
            board.drop_challenge(token)
        head, _, body = answer.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1:2]
        if status != [b"200"] or body.strip() != value.encode():
            line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace") or "no answer"
            raise PreflightFailed(f"the self-check through {where} did not reach this proxy ({line})")

    async def _tls_check(self, domain: str, address: str) -> None:
        from lbsolo.acme_client import alpn_certificate  # cryptography: only when ACME runs

        board = self.board
        marker = f"{secrets.token_urlsafe(24)}.lbsolo-self-check"
        cert_pem, key_pem = await asyncio.to_thread(alpn_certificate, domain, marker)
        expected = ssl.PEM_cert_to_DER_cert(cert_pem.decode())
        port = self.settings.acme_tls_port
        where = f"{domain}:{port} (TLS-ALPN-01)"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # a self-signed certificate is the answer
        ctx.set_alpn_protocols([_ACME_TLS_ALPN])
        board.put_alpn_challenge(domain, cert_pem, key_pem)
        try:
            async with asyncio.timeout(_TIMEOUT):
                _, writer = await asyncio.open_connection(address, port, ssl=ctx, server_hostname=domain)
                tls = writer.get_extra_info("ssl_object")
                got = tls.getpeercert(binary_form=True) if tls is not None else None
                chosen = tls.selected_alpn_protocol() if tls is not None else None
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        except (OSError, TimeoutError) as e:
            raise PreflightFailed(f"the self-check through {where} failed: {e or type(e).__name__}") from e
        finally:
            board.drop_alpn_challenge(domain)
        if got != expected or chosen != _ACME_TLS_ALPN:
            raise PreflightFailed(f"the self-check through {where} did not reach this proxy's HTTPS listener")
