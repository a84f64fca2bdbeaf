"""A test app that queries its databases on every request, with the standard library alone.

GET /q?var=DATABASE_URL connects afresh to the URL in that config var (postgres://, mysql://
or redis://), logs in, runs one query and answers 200 with its result, else 500 with why.
GET /try?url=... does the same for a URL given. /up is the health check (no database).
Just enough of each wire protocol for that: Postgres (SCRAM-SHA-256, md5 or cleartext login,
a simple query), MariaDB (mysql_native_password, COM_QUERY), Redis (AUTH, PING).
"""

import base64
import hashlib
import hmac
import os
import secrets
import socket
import struct
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Refused(Exception):
    pass


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            raise Refused("connection closed")
        data += piece
    return data


# ---- Postgres
def pg_message(sock):
    kind = recv_exact(sock, 1)
    (size,) = struct.unpack("!I", recv_exact(sock, 4))
    return kind, recv_exact(sock, size - 4)


def pg_send(sock, kind, payload):
    sock.sendall(kind + struct.pack("!I", len(payload) + 4) + payload)


def pg_error(payload):
    fields = dict((f[:1], f[1:].decode()) for f in payload.split(b"\0") if f)
    return Refused(fields.get(b"M", "error"))


def pg_query(u, sql):
    user, password = urllib.parse.unquote(u.username), urllib.parse.unquote(u.password or "")
    with socket.create_connection((u.hostname, u.port or 5432), timeout=5) as sock:
        params = b"user\0" + user.encode() + b"\0database\0" + u.path.lstrip("/").encode() + b"\0\0"
        sock.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        first_bare, salted, auth_message = f"n=,r={nonce}", b"", ""
        while True:
            kind, payload = pg_message(sock)
            if kind == b"E":
                raise pg_error(payload)
            if kind == b"Z":
                break
            if kind != b"R":
                continue
            (code,) = struct.unpack("!I", payload[:4])
            if code == 3:
                pg_send(sock, b"p", password.encode() + b"\0")
            elif code == 5:
                inner = hashlib.md5((password + user).encode()).hexdigest().encode()
                pg_send(sock, b"p", b"md5" + hashlib.md5(inner + payload[4:8]).hexdigest().encode() + b"\0")
            elif code == 10:
                first = f"n,,{first_bare}".encode()
                pg_send(sock, b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
            elif code == 11:
                server_first = payload[4:].decode()
                attrs = dict(a.split("=", 1) for a in server_first.split(","))
                salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
                client_key = hmac.digest(salted, b"Client Key", "sha256")
                without_proof = f"c=biws,r={attrs['r']}"
                auth_message = f"{first_bare},{server_first},{without_proof}"
                signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message.encode(), "sha256")
                proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
                pg_send(sock, b"p", f"{without_proof},p={proof}".encode())
        pg_send(sock, b"Q", sql.encode() + b"\0")
        value = None
        while True:
            kind, payload = pg_message(sock)
            if kind == b"E":
                raise pg_error(payload)
            if kind == b"D" and value is None:
                (size,) = struct.unpack("!i", payload[2:6])
                value = payload[6 : 6 + size].decode()
            if kind == b"Z":
                pg_send(sock, b"X", b"")
                return value


# ---- MariaDB
def my_packet(sock):
    head = recv_exact(sock, 4)
    size = head[0] | head[1] << 8 | head[2] << 16
    return head[3], recv_exact(sock, size)


def my_send(sock, seq, payload):
    sock.sendall(struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload)


def my_token(password, scramble):
    if not password:
        return b""
    one = hashlib.sha1(password.encode()).digest()
    two = hashlib.sha1(scramble + hashlib.sha1(one).digest()).digest()
    return bytes(a ^ b for a, b in zip(one, two, strict=True))


def my_check(payload):
    if payload[:1] == b"\xff":
        raise Refused(payload[9:].decode(errors="replace"))


def my_lenenc(data, pos):
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}[first]
    return int.from_bytes(data[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def my_query(u, sql):
    user, password = urllib.parse.unquote(u.username), urllib.parse.unquote(u.password or "")
    with socket.create_connection((u.hostname, u.port or 3306), timeout=5) as sock:
        seq, hello = my_packet(sock)
        my_check(hello)
        end = hello.index(b"\0", 1)
        scramble = hello[end + 5 : end + 13]
        rest = hello[end + 13 + 1 + 2 + 1 + 2 + 2 + 1 + 10 :]
        scramble += rest[:12]
        caps = 1 | 8 | 0x200 | 0x8000 | 0x80000
        token = my_token(password, scramble)
        reply = struct.pack("<IIB23x", caps, 1 << 24, 33) + user.encode() + b"\0" + bytes([len(token)]) + token
        reply += u.path.lstrip("/").encode() + b"\0mysql_native_password\0"
        my_send(sock, seq + 1, reply)
        seq, answer = my_packet(sock)
        if answer[:1] == b"\xfe":  # switch to another plugin (or a new scramble)
            plugin_end = answer.index(b"\0", 1)
            my_send(sock, seq + 1, my_token(password, answer[plugin_end + 1 : plugin_end + 21]))
            seq, answer = my_packet(sock)
        my_check(answer)
        my_send(sock, 0, b"\x03" + sql.encode())
        _, first = my_packet(sock)
        my_check(first)
        columns, _ = my_lenenc(first, 0)
        for _ in range(columns):
            my_packet(sock)
        my_packet(sock)  # EOF after the column definitions
        value = None
        while True:
            _, row = my_packet(sock)
            my_check(row)
            if row[:1] == b"\xfe" and len(row) < 9:
                break
            if value is None:
                size, pos = my_lenenc(row, 0)
                value = row[pos : pos + size].decode()
        my_send(sock, 0, b"\x01")
        return value


# ---- Redis
def redis_command(sock, *args):
    sock.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() for x in args)))
    line = b""
    while not line.endswith(b"\r\n"):
        line += recv_exact(sock, 1)
    if line[:1] == b"-":
        raise Refused(line[1:].strip().decode())
    return line[1:].strip().decode()


def redis_query(u, _sql):
    with socket.create_connection((u.hostname, u.port or 6379), timeout=5) as sock:
        redis_command(sock, "AUTH", urllib.parse.unquote(u.username), urllib.parse.unquote(u.password or ""))
        return redis_command(sock, "PING")


def query(url):
    u = urllib.parse.urlsplit(url)
    if u.scheme == "redis":
        return redis_query(u, "")
    run = pg_query if u.scheme.startswith("postgres") else my_query
    return run(u, "select 40 + 2")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        args = dict(urllib.parse.parse_qsl(u.query))
        if u.path == "/up":
            return self.reply(200, "ok")
        url = os.environ.get(args.get("var", ""), "") if u.path == "/q" else args.get("url", "")
        if not url:
            return self.reply(404, "no such var or url")
        try:
            return self.reply(200, f"ok {query(url)}")
        except (Refused, OSError, ValueError, KeyError, IndexError) as e:
            return self.reply(500, f"{type(e).__name__}: {e}")

    def reply(self, status, text):
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        if "500" in (fmt % args):
            print(fmt % args, flush=True)


class Server(ThreadingHTTPServer):
    # Python's default listen backlog is 5: a burst of new connections (a proxy opening many at
    # once) overflows it, and each dropped SYN costs the client a retry of 1 s, 3 s, 7 s, ...
    request_queue_size = 128


if __name__ == "__main__":
    Server(("0.0.0.0", int(os.environ.get("PORT", "5000"))), Handler).serve_forever()
