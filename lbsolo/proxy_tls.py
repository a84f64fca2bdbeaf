"""TLS for the proxy: certificate selection by SNI.

For the lbsolo domain, the local CA (lbsolo.proxy_tls_ca, re-exported here) issues one certificate
for `<domain>` and `*.<domain>`, made once before the listener opens and served to every name one
label under the domain: a handshake never mints on the event loop. User-supplied certificates
for custom domains are picked by SNI first.

Where certificates come from is one seam, `CertificateSource`: `CertStore` asks its sources, in
order, for a host it has no certificate for. `LocalCASource` (the local CA, for the lbsolo domain)
is one source. Certificates another part obtained (ACME, in the core) are pushed into a
`PushedSource` given to the store as `obtained`: those come right after the user's, before the
domain certificate (an app's `<app>.<domain>` on a public domain gets its ACME certificate, not
the local CA's wildcard), and `CertStore.refresh` makes the next handshake use a renewed one.
No I/O beyond the CA directory; of lbsolo, only the token bucket of `dns_ratelimit` is used.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from lbsolo.dns_ratelimit import RateLimit, RateLimiter
from lbsolo.proxy_tls_ca import LOOPBACK_IPS, LocalCA, served_names
from lbsolo.proxy_tls_ca import is_address as _is_address
from lbsolo.proxy_tls_ca import norm as _norm
from lbsolo.proxy_tls_ca import under as _under

__all__ = [
    "ALPN_PROTOCOLS",
    "CertStore",
    "CertificateSource",
    "LocalCA",
    "LocalCASource",
    "PushedSource",
    "served_names",
]

# What the HTTPS listener offers by ALPN, in order of preference: HTTP/2 (lbsolo.proxy_h2), then
# HTTP/1.1 (and what a client that offers nothing gets). Every context a handshake may switch to
# offers the same (`_offer`).
ALPN_PROTOCOLS = ("h2", "http/1.1")


class CertificateSource(Protocol):
    """Issues certificates for hosts that have no user-supplied one; where ACME plugs in.

    `issue` runs inside the TLS handshake, on the event loop: it must answer at once, from memory
    or a local file. A source that has to ask someone (an ACME CA) or work for it (mint a key)
    answers None for now, gets the certificate in the background, and calls `CertStore.remove(host)`
    after each renewal, so the next handshake asks again. A source that does not serve a host
    answers None and the next source is asked.
    """

    def issue(self, host: str) -> tuple[bytes, bytes] | None:
        """(certificate chain, private key) in PEM for `host`, or None."""
        ...


_MINTED_MAX = 64  # minted certificates not yet handed to the store


class LocalCASource:
    """The local CA as a certificate source: the lbsolo domain and its subdomains, nothing else.

    The domain and the names one label under it share one certificate (`<domain>`, `*.<domain>`),
    minted on the first ask: `CertStore.server_context` asks before the listener opens. A name
    deeper under the domain, which a wildcard does not cover, is minted in a worker thread at no
    more than `rate` a second (bursts of `burst`): until it is ready the answer is None.
    """

    def __init__(self, ca: LocalCA, domain: str, *, rate: float = 4.0, burst: int = 8) -> None:
        self.ca = ca
        self.domain = _norm(domain)
        self._domain_pem: tuple[bytes, bytes] | None = None
        self._limit = RateLimiter(RateLimit(qps=rate, burst=burst, exempt_loopback=False, max_clients=1))
        self._lock = threading.Lock()
        self._minted: dict[str, tuple[bytes, bytes]] = {}
        self._pending: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None

    def issue(self, host: str) -> tuple[bytes, bytes] | None:
        # A certificate for a name outside the domain would be trusted only by machines that
        # trust this CA anyway, and would hide a missing real certificate: refuse instead.
        if not _under(host, self.domain):
            return None
        if host == self.domain or "." not in host[: -len(self.domain) - 1]:
            if self._domain_pem is None:
                self._domain_pem = self.ca.issue(self.domain, "*." + self.domain, *LOOPBACK_IPS)
            return self._domain_pem
        with self._lock:
            pem = self._minted.pop(host, None)
            if pem is not None or host in self._pending or not self._limit.allow("mint"):
                return pem
            self._pending.add(host)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lbsolo-tls-mint")
        self._pool.submit(self._mint, host)
        return None

    def _mint(self, host: str) -> None:
        try:
            pem = self.ca.issue(host)
        finally:
            with self._lock:
                self._pending.discard(host)
        with self._lock:
            while len(self._minted) >= _MINTED_MAX:  # never asked for again: oldest first
                del self._minted[next(iter(self._minted))]
            self._minted[host] = pem

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait for the background mints asked so far (for tests)."""
        if self._pool is not None:
            self._pool.submit(lambda: None).result(timeout)


class PushedSource:
    """Certificates obtained elsewhere (an ACME CA, by the core), pushed in by host; answers from memory.

    `put` and `drop` may be called from any thread; the handshake reads one dict entry.
    """

    def __init__(self) -> None:
        self._pems: dict[str, tuple[bytes, bytes]] = {}

    def put(self, host: str, chain_pem: bytes, key_pem: bytes) -> None:
        self._pems[_norm(host)] = (chain_pem, key_pem)

    def drop(self, host: str) -> None:
        self._pems.pop(_norm(host), None)

    def hosts(self) -> list[str]:
        return sorted(self._pems)

    def issue(self, host: str) -> tuple[bytes, bytes] | None:
        return self._pems.get(host)


def _offer(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Make `ctx` offer the listener's protocols (ALPN_PROTOCOLS)."""
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    return ctx


def _context(cert_pem: bytes, key_pem: bytes, directory: Path) -> ssl.SSLContext:
    """A server context for one certificate (the ssl module loads chains from files only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _offer(ctx)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".pem") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key_pem + cert_pem)
        f.flush()
        ctx.load_cert_chain(f.name)
    return ctx


_ISSUED_MAX = 512  # certificates from sources kept per store


class CertStore:
    """Chooses the certificate for each TLS handshake by SNI.

    Order: a user certificate for the exact host, then one for its wildcard (`*.example.com`);
    then an `obtained` one (ACME's, kept until `refresh`); for the domain and the names one label
    under it, the domain certificate; then one from the first `CertificateSource` that has one
    (kept until `remove`). A deeper name under the domain
    that no source has yet, or a name `routed` says a route serves, gets the domain certificate
    meanwhile; any other name, none (the listener's unrecognized_name alert). By
    default the only source is the local CA, for the lbsolo domain and its subdomains.
    """

    def __init__(
        self,
        domain: str,
        ca: LocalCA | None = None,
        directory: Path | str | None = None,
        *,
        sources: Sequence[CertificateSource] | None = None,
        routed: Callable[[str], bool] | None = None,
        obtained: PushedSource | None = None,
    ) -> None:
        self.domain = _norm(domain)
        self.ca = ca
        self._dir = Path(directory) if directory is not None else (ca.directory if ca else Path(tempfile.gettempdir()))
        self._user: dict[str, ssl.SSLContext] = {}
        self._issued: dict[str, ssl.SSLContext] = {}
        self._domain_ctx: ssl.SSLContext | None = None
        if sources is None:
            sources = [LocalCASource(ca, self.domain)] if ca is not None else []
        self.sources: tuple[CertificateSource, ...] = tuple(sources)
        self._routed = routed  # whether a route serves a name: it gets the domain certificate meanwhile
        self.obtained = obtained
        self._obtained: dict[str, ssl.SSLContext] = {}  # contexts of obtained certificates, one per name

    def add(self, host: str, cert_pem: bytes, key_pem: bytes) -> None:
        """Use this certificate (chain, PEM) and key for `host` (`*.example.com` for a wildcard)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._user[_norm(host)] = _context(cert_pem, key_pem, self._dir)

    def remove(self, host: str) -> None:
        """Forget the host's certificate (user-supplied or issued); the next handshake asks the sources again."""
        name = _norm(host)
        self._user.pop(name, None)
        self._issued.pop(name, None)
        if name == self.domain:
            self._domain_ctx = None

    def refresh(self, host: str) -> None:
        """Forget what a source gave for `host` (not a user certificate, which keeps priority): the
        next handshake asks the sources again and gets the new certificate."""
        self._issued.pop(_norm(host), None)
        self._obtained.pop(_norm(host), None)

    def _domain_context(self) -> ssl.SSLContext | None:
        """The certificate of the domain and `*.<domain>`, from the first source that has it."""
        if self._domain_ctx is None:
            for source in self.sources:
                pem = source.issue(self.domain)
                if pem is not None:
                    self._dir.mkdir(parents=True, exist_ok=True)
                    self._domain_ctx = _context(*pem, self._dir)
                    break
        return self._domain_ctx

    def knows(self, server_name: str) -> bool:
        """Whether a handshake naming `server_name` gets a certificate (else: the alert, proxy_hello)."""
        return self.context_for(server_name) is not None

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        name = _norm(server_name or self.domain)
        if _is_address(name):  # an address is no name (RFC 6066), but some clients send one: the default
            name = self.domain
        ctx = self._user.get(name)
        if ctx is None and "." in name:
            ctx = self._user.get("*." + name.partition(".")[2])
        if ctx is not None:
            return ctx
        ctx = self._obtained.get(name)
        if ctx is None and self.obtained is not None and (pem := self.obtained.issue(name)) is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            ctx = self._obtained[name] = _context(*pem, self._dir)
        if ctx is not None:
            return ctx
        under = _under(name, self.domain)
        if under and (name == self.domain or "." not in name[: -len(self.domain) - 1]):
            return self._domain_context()  # covered by the wildcard: nothing per name
        issued = self._issued
        ctx = issued.pop(name, None)
        if ctx is not None:
            issued[name] = ctx  # most recently used last
            return ctx
        for source in self.sources:
            pem = source.issue(name)
            if pem is not None:
                self._dir.mkdir(parents=True, exist_ok=True)
                # Clients choose the SNI name: keep a bounded number, forgetting the least recently used.
                while len(issued) >= _ISSUED_MAX:
                    del issued[next(iter(issued))]
                ctx = issued[name] = _context(*pem, self._dir)
                return ctx
        # Not remembered: a source that answered None now (a mint, an ACME order) may answer later.
        # Under the domain, or for a routed name, the domain certificate stands in meanwhile.
        routed = self._routed
        return self._domain_context() if under or (routed is not None and routed(name)) else None

    def server_context(self) -> ssl.SSLContext:
        """The listener's context: picks a certificate per handshake from the SNI name.

        Makes the domain certificate if it is not made yet: call it off the event loop.
        """
        default = self.context_for(None) or _offer(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        store = self

        def pick(sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
            ctx = store.context_for(server_name)
            if ctx is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            if ctx is not sock.context:  # most handshakes stay on the listener's (the domain's)
                sock.context = ctx
            return None

        default.sni_callback = pick  # type: ignore[assignment]
        return default
