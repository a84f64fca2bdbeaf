"""The API client the CLI uses: finds the daemon, sends the token, turns errors into LbsoloError.

It never opens the state: everything goes through the daemon's REST API. It speaks HTTP/1.1
with the standard library's http.client: the daemon is local, and every CLI call starts a fresh
interpreter, where a heavier client's import time (a quarter of a second) is felt on each verb.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import IO, Any

from lbsolo.config import Settings
from lbsolo.errors import APIError, DaemonUnavailable

JSONish = dict[str, Any] | list[Any]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        self.settings = settings
        self.url = self._find_url(settings)
        # The local CLI prefers the daemon's unix socket (only this user can open it).
        self.socket = "" if os.environ.get("LBSOLO_API_URL") else self._find_socket(settings)
        self.token = self._find_token()
        self.timeout = timeout
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise DaemonUnavailable(f"unsupported API URL {self.url!r}: expected http://host:port")
        self._host, self._port = parts.hostname, parts.port or 80

    @staticmethod
    def _find_url(settings: Settings) -> str:
        if os.environ.get("LBSOLO_API_URL"):
            return os.environ["LBSOLO_API_URL"].rstrip("/")
        try:
            return str(json.loads(settings.runtime_path.read_text())["api_url"])
        except (OSError, ValueError, KeyError):
            return f"http://{settings.api_host}:{settings.api_port}"

    @staticmethod
    def _find_socket(settings: Settings) -> str:
        try:
            path = str(json.loads(settings.runtime_path.read_text())["socket"])
        except (OSError, ValueError, KeyError):
            return ""
        return path if path and os.path.exists(path) else ""

    def _find_token(self) -> str:
        token = os.environ.get("LBSOLO_TOKEN", "")
        if not token:
            try:
                token = self.settings.token_path.read_text().strip()
            except OSError:
                token = ""
        return token

    def close(self) -> None:
        pass

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unavailable(self, e: Exception) -> DaemonUnavailable:
        return DaemonUnavailable(f"cannot reach the lbsolo daemon at {self.url}: is `lbsolo up` running? ({e})")

    def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: Iterable[bytes] | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = -1.0,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in (params or {}).items() if v is not None}
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        all_headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        all_headers.update(headers or {})
        body: Any = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        elif content is not None:
            body = content
            all_headers.setdefault("Transfer-Encoding", "chunked")
        limit = self.timeout if timeout == -1.0 else timeout
        conn = (
            _UnixConnection(self.socket, limit)
            if self.socket
            else http.client.HTTPConnection(self._host, self._port, timeout=limit)
        )
        try:
            conn.request(method, target, body=body, headers=all_headers, encode_chunked=content is not None)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise self._unavailable(e) from e

    @staticmethod
    def _error(status: int, raw: bytes) -> APIError:
        try:
            err = json.loads(raw)["error"]
            return APIError(str(err["message"]), str(err["code"]), status)
        except (ValueError, KeyError, TypeError):
            return APIError(f"HTTP {status}: {raw[:200].decode(errors='replace')}", "http", status)

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = -1.0) -> Any:  # fmt: skip
        conn, response = self._send(method, path, json_body=json, params=params, timeout=timeout)
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise self._unavailable(e) from e
        finally:
            conn.close()
        if response.status >= 400:
            raise self._error(response.status, raw)
        return _json_loads(raw)

    def stream(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: Iterable[bytes] | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """A request whose answer is NDJSON: yield each object as it arrives."""
        conn, response = self._send(
            method, path, json_body=json, content=content, params=params, headers=headers, timeout=None
        )
        try:
            if response.status >= 400:
                raise self._error(response.status, response.read())
            while line := response.readline():
                if line.strip():
                    yield _json_loads(line)
        except (OSError, http.client.HTTPException) as e:
            raise self._unavailable(e) from e
        finally:
            conn.close()

    def apps(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/apps")  # type: ignore[no-any-return]

    def create_app(self, name: str) -> dict[str, Any]:
        return self.request("POST", "/api/apps", json={"name": name})  # type: ignore[no-any-return]

    def app(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/apps/{name}")  # type: ignore[no-any-return]

    def destroy(self, name: str, images: bool, volumes: bool = False) -> dict[str, Any]:
        params = {"images": images, "volumes": volumes}
        return self.request("DELETE", f"/api/apps/{name}", params=params, timeout=None)  # type: ignore[no-any-return]

    def releases(self, name: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/apps/{name}/releases")  # type: ignore[no-any-return]

    def ps(self, name: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/apps/{name}/ps")  # type: ignore[no-any-return]

    def logs(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/apps/{name}/logs", params=params)  # type: ignore[no-any-return]

    def deploy(self, name: str, archive: IO[bytes], build_args: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Upload the archive; yield the daemon's events ({"line"} ... then {"result"})."""

        def body() -> Iterator[bytes]:
            while chunk := archive.read(256 * 1024):
                yield chunk

        query = urllib.parse.urlencode([("build_arg", a) for a in build_args or []])
        return self.stream(
            "POST",
            f"/api/apps/{name}/deploy" + (f"?{query}" if query else ""),
            content=body(),
            headers={"Content-Type": "application/x-tar"},
        )


def _json_loads(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError as e:
        raise APIError(f"the daemon sent something that is not JSON: {raw[:100]!r}", "protocol", 502) from e
