"""A small SMTP server on a loopback port for the alert email tests (unit and integration).

It speaks enough of RFC 5321 for smtplib: EHLO/HELO, AUTH PLAIN and LOGIN (checked against one
user and password), MAIL, RCPT, DATA (dot-unstuffed), RSET, NOOP, QUIT, and STARTTLS when given a
server TLS context (`tls`; each message records whether it came over TLS).
`mode` makes it refuse as a broken or strict server would: "auth" (535 to any login), "rcpt"
(550 to every recipient), "data" (554 after the message). Each accepted message is parsed with
the standard library's email parser and kept in `messages`. Runs in a thread; no aiosmtpd needed.
"""

from __future__ import annotations

import base64
import contextlib
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage
    user: str
    tls: bool = False


@dataclass
class SmtpReceiver:
    port: int = 0
    host: str = "127.0.0.1"  # where it listens (0.0.0.0: every address, the URL still names loopback)
    user: str = "alerts"
    password: str = "s3cret-pass"
    mode: str = "accept"
    messages: list[Received] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)  # users that logged in, refused or not
    tls: ssl.SSLContext | None = None  # offer STARTTLS with this (server) context
    plain_passwords: int = 0  # logins that came without TLS
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, password: str | None = None, to: str = "ops@example.com", host: str = "127.0.0.1") -> str:
        pw = self.password if password is None else password
        return f"smtp://{self.user}:{pw}@{host}:{self.port}?from=lbsolo@example.com&to={to}"

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.messages)


class _Handler(socketserver.StreamRequestHandler):
    server: Any

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        box: SmtpReceiver = self.server.box
        self.reply("220 test.smtp ready")
        sender, recipients, user = "", [], ""
        secure = False
        while raw := self.rfile.readline(65536):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            arg = line[len(verb) :].strip()
            if verb == "EHLO":
                offer = b"250-STARTTLS\r\n" if box.tls is not None and not secure else b""
                self.wfile.write(b"250-test.smtp\r\n" + offer + b"250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")
                self.wfile.flush()
            elif verb == "STARTTLS" and box.tls is not None and not secure:
                self.reply("220 go ahead")
                self.request = box.tls.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
                try:
                    self.request.do_handshake()
                except (ssl.SSLError, OSError):
                    return  # the client refused our certificate
                self.rfile, self.wfile = self.request.makefile("rb"), self.request.makefile("wb")
                secure, sender, recipients, user = True, "", [], ""
            elif verb == "HELO":
                self.reply("250 test.smtp")
            elif verb == "AUTH":
                if not secure:
                    with box.lock:
                        box.plain_passwords += 1
                user = self._auth(box, arg)
                if not user:
                    continue
            elif verb == "MAIL":
                sender, recipients = arg.split(":", 1)[1].strip().strip("<>"), []
                self.reply("250 ok")
            elif verb == "RCPT":
                if box.mode == "rcpt":
                    self.reply("550 5.1.1 mailbox unavailable")
                else:
                    recipients.append(arg.split(":", 1)[1].strip().strip("<>"))
                    self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go ahead")
                data = b""
                while (chunk := self.rfile.readline(65536)) not in (b".\r\n", b".\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                if box.mode == "data":
                    self.reply("554 5.7.1 message refused")
                    continue
                parsed = message_from_bytes(data, policy=policy.default)
                with box.lock:
                    box.messages.append(Received(sender, recipients, parsed, user, secure))  # type: ignore[arg-type]
                self.reply("250 queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 ok")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")

    def finish(self) -> None:
        super().finish()
        if isinstance(self.request, ssl.SSLSocket):  # the server closes only the socket it accepted
            self.request.close()

    def _auth(self, box: SmtpReceiver, arg: str) -> str:
        parts = arg.split()
        mech = parts[0].upper() if parts else ""
        if mech == "PLAIN":
            token = parts[1] if len(parts) > 1 else ""
            if not token:
                self.reply("334 ")
                token = self.rfile.readline().decode().strip()
            _, user, password = base64.b64decode(token).decode().split("\0")
        elif mech == "LOGIN":
            if len(parts) > 1:  # smtplib sends the user with the command
                user = base64.b64decode(parts[1]).decode()
            else:
                self.reply("334 VXNlcm5hbWU6")
                user = base64.b64decode(self.rfile.readline().strip()).decode()
            self.reply("334 UGFzc3dvcmQ6")
            password = base64.b64decode(self.rfile.readline().strip()).decode()
        else:
            self.reply("504 unrecognised authentication type")
            return ""
        with box.lock:
            box.logins.append(user)
        if box.mode == "auth" or (user, password) != (box.user, box.password):
            self.reply("535 5.7.8 authentication credentials invalid")
            return ""
        self.reply("235 2.7.0 authenticated")
        return user


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def smtp_receiver(**kw: Any) -> Iterator[SmtpReceiver]:
    box = SmtpReceiver(**kw)
    server = _Server((box.host, box.port), _Handler)
    server.box = box  # type: ignore[attr-defined]
    box.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
