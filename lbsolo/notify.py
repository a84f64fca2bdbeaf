"""Outbound webhooks: events from the bus POSTed to URLs users registered, signed and retried.

A webhook is global (every app) or belongs to one app, and may list the event kinds it wants
(`deploy.failed`, or `deploy.*`). The body is lbsolo's JSON or a Slack-compatible `{"text"}`;
either way it is signed: `X-Lbsolo-Signature: sha256=<hex HMAC-SHA256 of the body, keyed by the
webhook's secret>`. A failed delivery (no answer, 5xx, 408, 429) is retried with exponential
backoff; every attempt is recorded in a bounded in-memory list per webhook for the API and UI,
with a short reason ("connection refused", "timed out", "HTTP 500"), never the raw error.
Webhooks themselves are stored in the state; deliveries are not (they are a recent history).

A webhook URL is whatever a user typed, so delivery must not become a way into the machine:
each attempt resolves the host itself, refuses loopback, link-local, cloud-metadata and
unspecified addresses (`address_allowed`) unless the admin allows them (settings.
webhook_allow_private), and connects to exactly the address it checked (the Host header and
TLS name stay the URL's), so a DNS answer that changes between check and connect (rebinding)
cannot redirect it. Redirects are not followed, and proxy settings from the environment are
not used (a proxy would resolve the name itself, past the check).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lbsolo import __version__
from lbsolo.errors import InvalidInput, NotFound
from lbsolo.events import Event, EventBus, EventKind
from lbsolo.models import now, validate_app_name
from lbsolo.state import State

if TYPE_CHECKING:
    import httpx  # imported on the first delivery: an idle daemon does not hold httpx, httpcore and h2

log = logging.getLogger("lbsolo.notify")

BACKOFF = (1.0, 2.0, 4.0, 8.0)  # seconds before the 2nd..5th attempt
TIMEOUT = 5.0
HISTORY = 50  # delivery attempts kept per webhook
MAX_PENDING = 1000  # deliveries in flight (retries included) before new ones are dropped
SIGNATURE_HEADER = "X-Lbsolo-Signature"
# Cloud instance metadata (AWS, GCP, Azure, ...: 169.254.169.254 is link-local anyway; AWS's IPv6 one is not).
METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
THIS_HOST = ipaddress.ip_network("0.0.0.0/8")  # "this network": connecting to 0.x reaches this machine

Resolver = Callable[[str, int], Awaitable[list[str]]]


def address_allowed(address: str) -> bool:
    """Whether a webhook may be delivered to this IP: not loopback, link-local, cloud metadata or unspecified."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) names no other host
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip in METADATA or (isinstance(ip, ipaddress.IPv4Address) and ip in THIS_HOST):
        return False
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)


async def resolve(host: str, port: int) -> list[str]:
    """The addresses a host name stands for now, in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class AddressNotAllowed(Exception):
    """Every address of a webhook's host is one deliveries may not reach."""


async def pin(url: str, resolver: Resolver, allow_private: bool) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """Where to send a delivery: the URL with its host replaced by a resolved, allowed address, plus
    the Host header and the TLS server name that keep the URL's own name."""
    import httpx

    target = httpx.URL(url)
    port = target.port or (443 if target.scheme == "https" else 80)
    addresses = await resolver(target.host, port)
    allowed = [a for a in addresses if allow_private or address_allowed(a)]
    if not allowed:
        raise AddressNotAllowed(target.host)
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return target.copy_with(host=allowed[0]), {"Host": target.netloc.decode("ascii")}, extensions


def failure_reason(error: BaseException) -> str:
    """A short, safe reason for a failed attempt: no addresses, paths or library text."""
    import httpx

    if isinstance(error, AddressNotAllowed):
        return "address not allowed"
    if isinstance(error, socket.gaierror):
        return "name not resolved"
    if isinstance(error, httpx.TimeoutException | TimeoutError):
        return "timed out"
    causes = []
    cause: BaseException | None = error
    while cause is not None and len(causes) < 10:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection refused"
    if any(isinstance(c, ssl.SSLError) for c in causes):
        return "TLS error"
    if isinstance(error, httpx.ConnectError):
        return "connection failed"
    if isinstance(error, httpx.RemoteProtocolError):
        return "bad response"
    return "request failed"


def validate_url(url: str) -> str:
    """An absolute http(s) URL with a host, else InvalidInput."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise InvalidInput(f"invalid webhook URL {url!r}: {e}") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"invalid webhook URL {url!r}: use an absolute http:// or https:// URL")
    if len(url) > 2048 or any(c in url for c in " \r\n\t"):
        raise InvalidInput("invalid webhook URL: too long or contains whitespace")
    return url


def validate_kinds(kinds: Sequence[str] | None) -> list[str] | None:
    if kinds is None:
        return None
    out = []
    for kind in kinds:
        k = kind.strip()
        if not k or len(k) > 64 or not all(c.isalnum() or c in "._*-" for c in k):
            raise InvalidInput(f"invalid event kind {kind!r}: e.g. deploy.failed or deploy.*")
        out.append(k)
    return sorted(set(out)) or None


@dataclass(frozen=True)
class Webhook:
    id: str
    url: str
    app: str | None = None  # None: every app's events (and ones of no app)
    secret: str = ""
    kinds: list[str] | None = None  # None: every kind
    slack: bool = False
    created_at: float = field(default_factory=now)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Webhook:
        return cls(
            id=d["id"],
            url=d["url"],
            app=d.get("app"),
            secret=d.get("secret", ""),
            kinds=d.get("kinds"),
            slack=bool(d.get("slack", False)),
            created_at=float(d.get("created_at", 0.0)),
        )

    def public(self) -> dict[str, Any]:
        """As listed: the secret is only ever shown when the webhook is created."""
        d = self.to_dict()
        d["secret"] = "********" if self.secret else ""
        return d

    def wants(self, event: Event) -> bool:
        if self.app is not None and event.app != self.app:
            return False
        if self.kinds is None or event.kind == EventKind.WEBHOOK_PING:
            return True
        return any(event.kind == k or (k.endswith("*") and event.kind.startswith(k[:-1])) for k in self.kinds)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute the HMAC and compare in constant time."""
    return bool(header) and hmac.compare_digest(sign(secret, body), header or "")


def slack_text(event: Event) -> str:
    where = f"*{event.app}*: " if event.app else ""
    return f"[lbsolo] {where}{event.message or event.kind} (`{event.kind}`)"


def payload(event: Event, slack: bool = False) -> bytes:
    if slack:
        body: dict[str, Any] = {"text": slack_text(event)}
    else:
        body = {
            "id": event.id,
            "event": event.kind,
            "app": event.app,
            "message": event.message,
            "data": event.data,
            "ts": event.ts,
        }
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver one event to one webhook."""

    webhook: str
    event: int
    kind: str
    attempt: int
    ts: float
    ok: bool
    status: int | None = None  # the receiver's HTTP status, if it answered
    error: str | None = None  # why there was no (good) answer
    duration_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WebhookNotifier:
    """Delivers bus events to the stored webhooks. `await start()` once in the loop; `aclose()` at shutdown."""

    def __init__(
        self,
        state: State,
        bus: EventBus,
        *,
        backoff: Sequence[float] = BACKOFF,
        timeout: float = TIMEOUT,
        history: int = HISTORY,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.time,
        allow_private: bool = False,
        resolver: Resolver = resolve,
    ) -> None:
        self.state = state
        self.bus = bus
        self.allow_private = allow_private
        self._resolve = resolver
        self.backoff = tuple(backoff)
        self.timeout = timeout
        self.max_pending = max_pending
        self._clock = clock
        self._history = history
        self._hooks: dict[str, Webhook] = {}
        self._deliveries: dict[str, deque[Delivery]] = {}
        self._tasks: set[asyncio.Task[bool]] = set()
        self._client: httpx.AsyncClient | None = None  # made on the first delivery once started
        self._started = False
        self._unlisten: Callable[[], None] | None = None

    # ---- lifecycle
    async def start(self) -> None:
        rows = await asyncio.to_thread(self.state.list_webhooks)
        self._hooks = {h.id: h for h in map(Webhook.from_dict, rows)}
        self._started = True
        if self._unlisten is None:
            self._unlisten = self.bus.add_listener(self._on_event)

    async def aclose(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._started = False

    async def run(self) -> None:
        """start(), then wait until cancelled; for the daemon's supervisor."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.aclose()

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the deliveries in flight (retries included); for tests and shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    # ---- webhooks
    async def create(
        self,
        url: str,
        app: str | None = None,
        kinds: Sequence[str] | None = None,
        slack: bool = False,
        secret: str | None = None,
    ) -> Webhook:
        """Store a new webhook; the returned one carries its secret (generated unless given)."""
        if app is not None:
            validate_app_name(app)
        if secret is not None and not 8 <= len(secret) <= 256:
            raise InvalidInput("a webhook secret must be 8 to 256 characters long")
        hook = Webhook(
            id=secrets.token_hex(6),
            url=validate_url(url),
            app=app,
            secret=secret or secrets.token_urlsafe(24),
            kinds=validate_kinds(kinds),
            slack=slack,
            created_at=self._clock(),
        )
        await asyncio.to_thread(self.state.add_webhook, hook.to_dict())
        self._hooks[hook.id] = hook
        return hook

    def webhooks(self, app: str | None = None) -> list[Webhook]:
        hooks = sorted(self._hooks.values(), key=lambda h: (h.created_at, h.id))
        return [h for h in hooks if app is None or h.app == app]

    def get(self, webhook_id: str) -> Webhook:
        hook = self._hooks.get(webhook_id)
        if hook is None:
            raise NotFound(f"no webhook {webhook_id!r}")
        return hook

    async def delete(self, webhook_id: str) -> None:
        self.get(webhook_id)
        await asyncio.to_thread(self.state.delete_webhook, webhook_id)
        self._hooks.pop(webhook_id, None)
        self._deliveries.pop(webhook_id, None)

    def deliveries(self, webhook_id: str) -> list[Delivery]:
        """Recent attempts, newest last."""
        self.get(webhook_id)
        return list(self._deliveries.get(webhook_id, ()))

    def ping(self, webhook_id: str) -> Event:
        """Send a test event to one webhook (whatever kinds it asked for)."""
        hook = self.get(webhook_id)
        event = self.bus.emit(EventKind.WEBHOOK_PING, hook.app, f"test delivery to webhook {hook.id}", webhook=hook.id)
        if self._unlisten is None:  # not started: deliver anyway, for whoever pings
            self._spawn(hook, event)
        return event

    # ---- delivery
    def _on_event(self, event: Event) -> None:
        for hook in list(self._hooks.values()):
            if event.kind == EventKind.WEBHOOK_PING and event.data.get("webhook") != hook.id:
                continue
            if hook.wants(event):
                self._spawn(hook, event)
        if event.kind == EventKind.APP_DESTROYED and event.app:
            # The app's own webhooks go with it (after this last event), so a new app of the same
            # name does not inherit them.
            for hook in [h for h in self._hooks.values() if h.app == event.app]:
                self._hooks.pop(hook.id, None)
                task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.state.delete_webhook, hook.id))
                task.add_done_callback(_log_failure)

    def _spawn(self, hook: Webhook, event: Event) -> None:
        if len(self._tasks) >= self.max_pending:
            self._record(
                Delivery(
                    hook.id, event.id, event.kind, 0, self._clock(), False, error="dropped: too many pending deliveries"
                )
            )
            return
        task = asyncio.get_running_loop().create_task(self.deliver(hook, event), name=f"webhook-{hook.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(self, delivery: Delivery) -> None:
        self._deliveries.setdefault(delivery.webhook, deque(maxlen=self._history)).append(delivery)

    async def deliver(self, hook: Webhook, event: Event) -> bool:
        """POST the event, retrying with backoff; True once the receiver answers 2xx."""
        body = payload(event, hook.slack)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(hook.secret, body),
            "X-Lbsolo-Event": event.kind,
            "X-Lbsolo-Delivery": f"{hook.id}-{event.id}",
        }
        import httpx

        if self._client is None and self._started:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=False,
                trust_env=False,
                # A pooled connection is keyed by address, not name: two webhooks on one address
                # must not share a TLS session made for the other's name.
                limits=httpx.Limits(max_keepalive_connections=0),
                headers={"User-Agent": f"lbsolo/{__version__}"},
            )
        client = self._client
        own_client = client is None
        if client is None:
            client = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        try:
            attempts = len(self.backoff) + 1
            for attempt in range(1, attempts + 1):
                started = time.monotonic()
                status: int | None = None
                error: str | None = None
                refused = False
                try:
                    url, host, extensions = await pin(hook.url, self._resolve, self.allow_private)
                    response = await client.post(url, content=body, headers={**headers, **host}, extensions=extensions)
                    status = response.status_code
                    if not 200 <= status < 300:
                        error = f"HTTP {status}"
                except (httpx.HTTPError, OSError, AddressNotAllowed) as e:
                    error = failure_reason(e)
                    refused = isinstance(e, AddressNotAllowed)
                ok = error is None
                self._record(
                    Delivery(
                        hook.id,
                        event.id,
                        event.kind,
                        attempt,
                        self._clock(),
                        ok,
                        status,
                        error,
                        round((time.monotonic() - started) * 1000, 1),
                    )
                )
                if ok:
                    return True
                if refused or (status is not None and not retryable(status)) or attempt == attempts:
                    break
                await asyncio.sleep(self.backoff[attempt - 1])
            log.warning("webhook %s: gave up on %s #%d (%s)", hook.id, event.kind, event.id, error)
            return False
        finally:
            if own_client:
                await client.aclose()


def _log_failure(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if task.exception() is not None:
            log.warning("webhook clean-up failed: %s", task.exception())
