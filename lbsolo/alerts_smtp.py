"""Alert email over SMTP: LBSOLO_SMTP_URL read and checked, and a channel that sends in the background.

    smtp://USER:PASSWORD@HOST[:587]?from=alerts@example.com&to=ops@example.com,dev@example.com
    smtps://USER:PASSWORD@HOST[:465]?from=…&to=…        (TLS from the first byte)

`smtp://` upgrades with STARTTLS whenever the server offers it (`?starttls=require`: refuse a
server that does not). A password is never sent over a connection without TLS, except to a
loopback host (a relay on this machine). Certificates are checked against the system's CAs and
those of LBSOLO_SMTP_CA_BUNDLE. User and password may be percent-encoded; `from` defaults to the
user when it is an address.

`MailChannel.offer` queues a message and returns at once; one task sends them in order, each in a
thread (smtplib blocks), and a failed send is retried with backoff (a bounded number of times,
then dropped and counted). What went wrong is kept on the channel's status for `lbsolo alerts`
and the UI, in a short form that never holds the password. smtplib and email are imported only
when a message is sent. It must not raise into its caller, nor block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from lbsolo.errors import InvalidInput

log = logging.getLogger("lbsolo.alerts")

MAX_WAITING = 100  # messages queued; past it the oldest is dropped (and counted)
ATTEMPTS = 8  # tries per message before it is dropped


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    tls: bool  # smtps: TLS from the start
    sender: str
    recipients: tuple[str, ...]
    user: str = ""
    password: str = field(default="", repr=False)
    require_starttls: bool = False

    @property
    def server(self) -> str:
        return f"{'smtps' if self.tls else 'smtp'}://{self.host}:{self.port}"


def _address(text: str, what: str) -> str:
    text = text.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or any(c in text for c in " \r\n<>,;"):
        raise InvalidInput(f"LBSOLO_SMTP_URL: {what} {text!r} is not an email address")
    return text


def parse_smtp_url(url: str) -> SmtpTarget:
    """The target an LBSOLO_SMTP_URL names; InvalidInput saying what is wrong (never echoing the password)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise InvalidInput("LBSOLO_SMTP_URL is not a valid URL (a bad port?)") from None
    if parts.scheme not in ("smtp", "smtps"):
        raise InvalidInput(
            "LBSOLO_SMTP_URL must start with smtp:// or smtps://, e.g. smtp://user:pass@host:587?from=…&to=…"
        )
    if not parts.hostname:
        raise InvalidInput("LBSOLO_SMTP_URL names no host: smtp://user:pass@host:587?from=…&to=…")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"from", "to", "starttls"}
    if unknown:
        raise InvalidInput(f"LBSOLO_SMTP_URL: unknown parameter(s) {', '.join(sorted(unknown))} (from, to, starttls)")
    user = unquote(parts.username or "")
    to = [a for v in query.get("to", []) for a in v.split(",") if a.strip()]
    if not to:
        raise InvalidInput("LBSOLO_SMTP_URL needs ?to=ADDRESS (several: comma-separated)")
    sender = (query.get("from") or [""])[0] or (user if "@" in user else "")
    if not sender:
        raise InvalidInput("LBSOLO_SMTP_URL needs ?from=ADDRESS (the user is not an address)")
    starttls = (query.get("starttls") or ["auto"])[0].lower()
    if starttls not in ("auto", "require"):
        raise InvalidInput("LBSOLO_SMTP_URL: starttls is auto (the default) or require")
    tls = parts.scheme == "smtps"
    return SmtpTarget(
        host=parts.hostname,
        port=port or (465 if tls else 587),
        tls=tls,
        sender=_address(sender, "from"),
        recipients=tuple(_address(a, "to") for a in to),
        user=user,
        password=unquote(parts.password or ""),
        require_starttls=starttls == "require",
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_said(code: int, text: bytes | str) -> str:
    said = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(said.split())}"[:200]


def reason(error: BaseException, target: SmtpTarget) -> str:
    """A short, clear reason for a failed send; never the password."""
    import smtplib
    import ssl

    where = f"{target.host}:{target.port}"
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return f"authentication refused by {where}: {_server_said(error.smtp_code, error.smtp_error)}"
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        refused = [f"{rcpt} ({_server_said(*answer)})" for rcpt, answer in error.recipients.items()]
        return f"recipient refused by {where}: {'; '.join(refused)}"[:300]
    if isinstance(error, smtplib.SMTPSenderRefused):
        return f"sender {target.sender} refused by {where}: {_server_said(error.smtp_code, error.smtp_error)}"
    if isinstance(error, smtplib.SMTPResponseException):
        return f"{where} answered {_server_said(error.smtp_code, error.smtp_error)}"
    if isinstance(error, smtplib.SMTPNotSupportedError | PlainTextRefused):
        return str(error)[:300]
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(error, socket.gaierror):
        return f"host {target.host} not resolved"
    if isinstance(error, TimeoutError | socket.timeout):
        return f"{where} timed out"
    if isinstance(error, ssl.SSLError):
        return f"TLS with {where} failed: {getattr(error, 'reason', None) or 'handshake error'}"
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return f"{where} closed the connection"
    if isinstance(error, OSError):
        return f"cannot reach {where}: {error.strerror or type(error).__name__}"
    return f"sending to {where} failed ({type(error).__name__})"


class PlainTextRefused(Exception):
    """The password would cross the network without TLS."""


def send_mail(target: SmtpTarget, subject: str, text: str, *, timeout: float = 10.0, ca_bundle: str = "") -> None:
    """Send one message (blocking: call it in a thread); raises what smtplib raises, or PlainTextRefused."""
    import smtplib
    import ssl
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    msg = EmailMessage()
    msg["From"] = target.sender
    msg["To"] = ", ".join(target.recipients)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=target.sender.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    context = ssl.create_default_context(cafile=ca_bundle or None)
    client: smtplib.SMTP
    if target.tls:
        client = smtplib.SMTP_SSL(target.host, target.port, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(target.host, target.port, timeout=timeout)
    with client:
        client.ehlo()
        if not target.tls:
            if client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
            elif target.require_starttls:
                raise PlainTextRefused(
                    f"{target.host}:{target.port} offers no STARTTLS (the URL asks starttls=require)"
                )
            elif target.password and not _loopback(target.host):
                raise PlainTextRefused(
                    f"{target.host}:{target.port} offers no STARTTLS: the password is not sent without TLS "
                    "(use smtps://, or a server with STARTTLS)"
                )
        if target.user:
            client.login(target.user, target.password)
        client.send_message(msg, from_addr=target.sender, to_addrs=list(target.recipients))


Sender = Callable[[SmtpTarget, str, str], None]


@dataclass
class _Message:
    subject: str
    text: str
    attempts: int = 0


class MailChannel:
    """Alert email: queued by `offer`, sent by `run` (the daemon's task), status in `status()`."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        backoff_base: float = 5.0,
        backoff_max: float = 300.0,
        ca_bundle: str = "",
        max_waiting: int = MAX_WAITING,
        attempts: int = ATTEMPTS,
        send: Sender | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target: SmtpTarget | None = None
        self.problem = ""  # why the URL is not used
        if url.strip():
            try:
                self.target = parse_smtp_url(url)
            except InvalidInput as e:
                self.problem = e.message
        self._send = send or (lambda t, s, b: send_mail(t, s, b, timeout=timeout, ca_bundle=ca_bundle))
        self.backoff_base, self.backoff_max, self.attempts = backoff_base, backoff_max, attempts
        self._clock = clock
        self._waiting: deque[_Message] = deque()
        self._max_waiting = max_waiting
        self._ready = asyncio.Event()
        self.sent = 0
        self.failed_attempts = 0
        self.dropped = 0
        self.failures = 0  # in a row
        self.last_error = ""
        self.last_error_at: float | None = None
        self.last_sent_at: float | None = None
        self.retry_at: float | None = None

    def offer(self, subject: str, text: str) -> None:
        """Queue a message; never blocks, never raises. Without a (valid) URL, nothing."""
        if self.target is None:
            return
        if len(self._waiting) >= self._max_waiting:
            self._waiting.popleft()
            self.dropped += 1
        self._waiting.append(_Message(subject, text))
        self._ready.set()

    def backoff(self) -> float:
        return float(min(self.backoff_max, self.backoff_base * 2 ** max(0, self.failures - 1)))

    async def run(self) -> None:
        """Send what is queued, in order, until cancelled."""
        if self.target is None:
            await asyncio.Event().wait()
        target = self.target
        assert target is not None
        while True:
            while not self._waiting:
                self._ready.clear()
                await self._ready.wait()
            msg = self._waiting[0]
            msg.attempts += 1
            try:
                await asyncio.to_thread(self._send, target, msg.subject, msg.text)
            except Exception as e:
                self.failures += 1
                self.failed_attempts += 1
                self.last_error, self.last_error_at = reason(e, target), self._clock()
                log.warning("alert email to %s failed (try %d): %s", target.server, msg.attempts, self.last_error)
                if msg.attempts >= self.attempts:
                    with contextlib.suppress(IndexError):
                        self._waiting.remove(msg)
                    self.dropped += 1
                wait = self.backoff()
                self.retry_at = self._clock() + wait
                await asyncio.sleep(wait)
                self.retry_at = None
                continue
            with contextlib.suppress(ValueError):
                self._waiting.remove(msg)
            self.sent += 1
            self.failures = 0
            self.last_sent_at = self._clock()

    def status(self) -> dict[str, Any]:
        t = self.target
        if t is None:
            state = "invalid" if self.problem else "off"
        else:
            state = "failing" if self.failures else "ok" if self.sent else "waiting"
        return {
            "channel": "email",
            "state": state,
            "problem": self.problem or None,
            "server": t.server if t else None,
            "to": list(t.recipients) if t else [],
            "sent": self.sent,
            "failed_attempts": self.failed_attempts,
            "dropped": self.dropped,
            "waiting": len(self._waiting),
            "last_error": self.last_error or None,
            "last_error_at": self.last_error_at,
            "last_sent_at": self.last_sent_at,
            "retry_at": self.retry_at,
        }
