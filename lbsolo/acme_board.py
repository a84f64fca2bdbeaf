"""How an ACME order's challenges reach the proxy: the `acme_client.Responder` of one order.

The order runs in a worker thread; the proxy's challenge tables (the `ChallengeBoard`) belong to
the event loop. `BoardResponder` puts each challenge on the board from the loop and returns once
it is there (the CA may look as soon as it is told), and takes them all back when the order ends.

What it must not do: talk to the CA, or touch the board from any thread but the loop's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from lbsolo.acme_preflight import ChallengeBoard

__all__ = ["BoardResponder"]


class BoardResponder:
    """An order's `acme_client.Responder`: hands its challenges to the board on the loop, from the
    order's thread, and returns once they are there (the CA may look as soon as it is told)."""

    def __init__(self, board: ChallengeBoard, loop: asyncio.AbstractEventLoop) -> None:
        self.board = board
        self.loop = loop
        self.tokens: list[str] = []
        self.domains: list[str] = []

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        # Callbacks run in order: the no-op's end comes after the put.
        self.loop.call_soon_threadsafe(fn, *args)
        asyncio.run_coroutine_threadsafe(_noop(), self.loop).result(10)

    def http01(self, token: str, key_authorization: str) -> None:
        self.tokens.append(token)
        self._on_loop(self.board.put_challenge, token, key_authorization)

    def tls_alpn01(self, domain: str, cert_pem: bytes, key_pem: bytes) -> None:
        self.domains.append(domain)
        self._on_loop(self.board.put_alpn_challenge, domain, cert_pem, key_pem)

    def withdraw(self) -> None:
        for token in self.tokens:
            self.loop.call_soon_threadsafe(self.board.drop_challenge, token)
        for domain in self.domains:
            self.loop.call_soon_threadsafe(self.board.drop_alpn_challenge, domain)


async def _noop() -> None:
    return None
