"""The API client the CLI uses: finds the daemon, sends the token, turns errors into LbsoloError.

It never opens the state: everything goes through the daemon's REST API.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import IO, Any

import httpx

from lbsolo.config import Settings
from lbsolo.errors import APIError, DaemonUnavailable


class Client:
    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        self.settings = settings
        self.url = self._find_url(settings)
        self.token = self._find_token()
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=auth)

    @staticmethod
    def _find_url(settings: Settings) -> str:
        if os.environ.get("LBSOLO_API_URL"):
            return os.environ["LBSOLO_API_URL"].rstrip("/")
        try:
            return str(json.loads(settings.runtime_path.read_text())["api_url"])
        except (OSError, ValueError, KeyError):
            return f"http://{settings.api_host}:{settings.api_port}"

    def _find_token(self) -> str:
        token = os.environ.get("LBSOLO_TOKEN", "")
        if not token:
            try:
                token = self.settings.token_path.read_text().strip()
            except OSError:
                token = ""
        return token

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unavailable(self, e: Exception) -> DaemonUnavailable:
        return DaemonUnavailable(f"cannot reach the lbsolo daemon at {self.url}: is `lbsolo up` running? ({e})")

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            err = response.json()["error"]
            raise APIError(str(err["message"]), str(err["code"]), response.status_code)
        except (ValueError, KeyError, TypeError):
            raise APIError(
                f"HTTP {response.status_code}: {response.text[:200]}", "http", response.status_code
            ) from None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise self._unavailable(e) from e
        self._raise_for(response)
        return response.json()

    def apps(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/apps")  # type: ignore[no-any-return]

    def create_app(self, name: str) -> dict[str, Any]:
        return self.request("POST", "/api/apps", json={"name": name})  # type: ignore[no-any-return]

    def app(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/apps/{name}")  # type: ignore[no-any-return]

    def destroy(self, name: str, images: bool, volumes: bool = False) -> dict[str, Any]:
        params = {"images": images, "volumes": volumes}
        return self.request("DELETE", f"/api/apps/{name}", params=params)  # type: ignore[no-any-return]

    def releases(self, name: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/apps/{name}/releases")  # type: ignore[no-any-return]

    def ps(self, name: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/apps/{name}/ps")  # type: ignore[no-any-return]

    def logs(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/apps/{name}/logs", params=params)  # type: ignore[no-any-return]

    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """A request whose answer is NDJSON: yield each object as it arrives."""
        try:
            with self._http.stream(method, path, timeout=httpx.Timeout(30.0, read=None), **kwargs) as response:
                if not response.is_success:
                    response.read()
                    self._raise_for(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as e:
            raise self._unavailable(e) from e

    def deploy(self, name: str, archive: IO[bytes]) -> Iterator[dict[str, Any]]:
        """Upload the archive; yield the daemon's events ({"line"} ... then {"result"})."""

        def body() -> Iterator[bytes]:
            while chunk := archive.read(256 * 1024):
                yield chunk

        return self.stream(
            "POST", f"/api/apps/{name}/deploy", content=body(), headers={"Content-Type": "application/x-tar"}
        )
