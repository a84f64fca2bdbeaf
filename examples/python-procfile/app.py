"""lbsolo's Procfile example, web process: answers / with its name and release, /up for health checks."""

import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = os.environ.get("LBSOLO_RELEASE", "dev")
HOSTNAME = socket.gethostname()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/up":
            self.reply(200, b"ok\n")
        elif self.path == "/":
            self.reply(200, f"python-procfile release={RELEASE} hostname={HOSTNAME}\n".encode())
        else:
            self.reply(404, b"not found\n")

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)


class Server(ThreadingHTTPServer):
    # Python's default listen backlog is 5: a burst of new connections (a proxy opening many at
    # once) overflows it, and each dropped SYN costs the client a retry of 1 s, 3 s, 7 s, ...
    request_queue_size = 128


if __name__ == "__main__":
    # As the container's PID 1 the app must handle SIGTERM itself, or a stop waits 10 s for SIGKILL.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    port = int(os.environ.get("PORT", "5000"))
    print(f"python-procfile web {RELEASE} listening on :{port}", flush=True)
    Server(("0.0.0.0", port), Handler).serve_forever()
