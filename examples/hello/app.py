"""A tiny web app for lbsolo: answers / with its release and hostname, /up for health checks."""

import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = os.environ.get("LBSOLO_RELEASE", "dev")
HOSTNAME = socket.gethostname()
GREETING = os.environ.get("GREETING", "Hello")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def do_GET(self) -> None:
        if self.path == "/up":
            self.reply(200, "text/plain; charset=utf-8", b"ok\n")
        elif self.path == "/json":
            body = json.dumps({"release": RELEASE, "hostname": HOSTNAME, "headers": dict(self.headers)})
            self.reply(200, "application/json", body.encode())
        elif self.path == "/":
            body = f"{GREETING} from lbsolo! release={RELEASE} hostname={HOSTNAME}\n"
            self.reply(200, "text/plain; charset=utf-8", body.encode())
        else:
            self.reply(404, "text/plain; charset=utf-8", b"not found\n")

    def reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
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
    port = int(os.environ.get("PORT", "5000"))
    print(f"hello {RELEASE} listening on :{port}", flush=True)
    Server(("0.0.0.0", port), Handler).serve_forever()
