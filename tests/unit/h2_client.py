"""A small HTTP/2 client for the proxy's tests: python-hyper's h2 over a real TLS socket (ALPN h2)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events


@dataclass
class H2Resp:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reset: int | None = None  # RST_STREAM error code, if the stream was reset

    def header(self, name: str) -> str | None:
        values = [v.decode() for k, v in self.headers if k == name.encode()]
        return ", ".join(values) if values else None

    def json(self):
        return json.loads(self.body)


def tls_context(cafile: Path, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(list(alpn))
    return ctx


class H2Client:
    """One h2 connection. `request` sends a request and waits for its whole response (or reset)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str) -> None:
        self.reader = reader
        self.writer = writer
        self.authority = authority
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        # Pure-Python Huffman coding of the hostile tests' 100 KB header values takes seconds: literal strings.
        self.conn.encoder.encode = functools.partial(self.conn.encoder.encode, huffman=False)
        self.responses: dict[int, H2Resp] = {}
        self.done: dict[int, asyncio.Future[H2Resp]] = {}
        self.goaway: int | None = None  # error code of a GOAWAY received
        self.closed = asyncio.Event()  # the server closed the connection
        self.window = asyncio.Event()
        self.auto_ack = True  # acknowledge response data as it comes (False: a client that never reads)
        self._task: asyncio.Task[None] | None = None
        self.error: Exception | None = None  # what ended the connection on the client's side

    @classmethod
    async def open(cls, port: int, cafile: Path, authority: str = "hello.lbsolo.localhost") -> H2Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls_context(cafile), server_hostname=authority
        )
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        client = cls(reader, writer, authority)
        client.conn.initiate_connection()
        client.flush()
        client._task = asyncio.get_running_loop().create_task(client._read())
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read(self) -> None:
        # Whole frames only; a GOAWAY is noted and not given to h2, whose client side would refuse
        # the responses a server still sends after it (for the streams GOAWAY says it processes).
        buffer = b""
        try:
            while data := await self.reader.read(65536):
                buffer += data
                frames = []
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    frame, buffer = buffer[: 9 + length], buffer[9 + length :]
                    if frame[3] == 0x7:  # GOAWAY: last stream id, error code
                        self.goaway = int.from_bytes(frame[13:17], "big")
                    else:
                        frames.append(frame)
                for event in self.conn.receive_data(b"".join(frames)):
                    self._on(event)
                self.flush()
        except (ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError) as exc:
            self.error = exc
        finally:
            self.closed.set()
            for fut in self.done.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"connection closed ({self.error!r})"))

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            resp = self.responses[event.stream_id]
            resp.headers = list(event.headers)
            resp.status = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.responses[event.stream_id].body += event.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self._end(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            resp = self.responses.get(event.stream_id)
            if resp is not None:
                resp.reset = event.error_code
                self._end(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            self.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event.error_code

    def _end(self, sid: int) -> None:
        fut = self.done.get(sid)
        if fut is not None and not fut.done():
            fut.set_result(self.responses[sid])

    def start(
        self,
        method: str = "GET",
        path: str = "/",
        body: bytes | None = None,
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        authority: str | None = None,
        end: bool = True,
    ) -> int:
        """Open a stream (and send `body` if it fits the window; see `send_body`); its id."""
        sid = self.conn.get_next_available_stream_id()
        head = [(":method", method), (":authority", authority or self.authority)]
        if method != "CONNECT":
            head += [(":scheme", "https"), (":path", path)]
        head += list(headers)
        self.responses[sid] = H2Resp()
        self.done[sid] = asyncio.get_running_loop().create_future()
        self.conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in head], end_stream=end and body is None)
        self.flush()
        return sid

    async def send_body(self, sid: int, body: bytes, end: bool = True) -> None:
        """Send `body` within the flow-control windows, waiting for WINDOW_UPDATEs."""
        if not body and end:
            self.conn.end_stream(sid)
            self.flush()
        while body:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.window.clear()
                await asyncio.wait_for(self.window.wait(), 5)
                continue
            piece, body = body[:window], body[window:]
            self.conn.send_data(sid, piece, end_stream=end and not body)
            self.flush()
        await self.writer.drain()

    async def request(self, method: str = "GET", path: str = "/", body: bytes | None = None, **kw) -> H2Resp:
        sid = self.start(method, path, body, **kw)
        if body is not None:
            await self.send_body(sid, body)
        return await self.response(sid)

    async def response(self, sid: int, timeout: float = 5.0) -> H2Resp:
        return await asyncio.wait_for(self.done[sid], timeout)

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid)
        self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
