"""The API client the CLI uses: finds the daemon, sends the token, turns errors into LbsoloError.

It never opens the state: everything goes through the daemon's REST API, one typed method per
operation the CLI uses (the verbs call those, never a path). It speaks HTTP/1.1
through lbsolo.cli.client_wire (one exchange per connection): the daemon is local, and every CLI
call starts a fresh interpreter, where a client library's import time is felt on each verb.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

from lbsolo.cli.client_wire import Response, connect, exchange
from lbsolo.config import Settings
from lbsolo.errors import APIError, DaemonUnavailable

JSONish = dict[str, Any] | list[Any]
T = TypeVar("T")


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
    ) -> Response:
        query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in (params or {}).items() if v is not None}
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        all_headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if os.environ.get("LBSOLO_VIA") == "git":  # the post-receive hook: the audit log says "git:<token>"
            all_headers["X-Lbsolo-Via"] = "git"
        all_headers.update(headers or {})
        body: bytes | Iterable[bytes] | None = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        elif content is not None:
            body = content  # sent chunked, as it is read
        elif method in ("POST", "PUT", "PATCH"):
            body = b""
        limit = self.timeout if timeout == -1.0 else timeout
        try:
            sock = connect(unix_path=self.socket, host=self._host, port=self._port, timeout=limit)
        except OSError as e:
            raise self._unavailable(e) from e
        try:
            host = "localhost" if self.socket else f"{self._host}:{self._port}"
            return exchange(sock, method, target, all_headers, body, host=host)
        except OSError as e:
            raise self._unavailable(e) from e
        finally:
            sock.close()  # the answer reads through its own handle of the socket

    @staticmethod
    def _error(status: int, raw: bytes) -> APIError:
        try:
            err = json.loads(raw)["error"]
            return APIError(str(err["message"]), str(err["code"]), status)
        except (ValueError, KeyError, TypeError):
            return APIError(f"HTTP {status}: {raw[:200].decode(errors='replace')}", "http", status)

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = -1.0) -> Any:  # fmt: skip
        response = self._send(method, path, json_body=json, params=params, timeout=timeout)
        try:
            raw = response.read()
        except OSError as e:
            raise self._unavailable(e) from e
        finally:
            response.close()
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
        response = self._send(
            method, path, json_body=json, content=content, params=params, headers=headers, timeout=None
        )
        try:
            if response.status >= 400:
                raise self._error(response.status, response.read())
            while line := response.readline():
                if line.strip():
                    yield _json_loads(line)
        except OSError as e:
            raise self._unavailable(e) from e
        finally:
            response.close()

    # ---- one method per API operation the CLI uses, by what it does; the verbs call only these.
    # Each returns the API's answer as decoded JSON; the ones that start a job yield its events.

    def _object(self, method: str, *path: str, **options: Any) -> dict[str, Any]:
        out = self.request(method, api_path(*path), **options)
        if not isinstance(out, dict):
            raise APIError(f"the daemon answered {method} {api_path(*path)} with {type(out).__name__}", "protocol", 502)
        return out

    def _list(self, method: str, *path: str, **options: Any) -> list[Any]:
        out = self.request(method, api_path(*path), **options)
        if not isinstance(out, list):
            raise APIError(f"the daemon answered {method} {api_path(*path)} with {type(out).__name__}", "protocol", 502)
        return out

    def _job(self, method: str, *path: str, **options: Any) -> Iterator[dict[str, Any]]:
        return self.stream(method, api_path(*path), **options)

    # apps
    def apps(self) -> list[dict[str, Any]]:
        return self._list("GET", "apps")

    def create_app(self, name: str) -> dict[str, Any]:
        return self._object("POST", "apps", json={"name": name})

    def app(self, name: str) -> dict[str, Any]:
        return self._object("GET", "apps", name)

    def destroy(self, name: str, images: bool, volumes: bool = False) -> dict[str, Any]:
        params = {"images": images, "volumes": volumes}
        return self._object("DELETE", "apps", name, params=params, timeout=None)

    def disk(self) -> dict[str, int]:
        """Bytes of images per app."""
        return self._object("GET", "disk")

    def gc(self, app: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        return self._object("POST", "gc", params={"app": app, "dry_run": dry_run}, timeout=None)

    # config, processes, health
    def config(self, name: str) -> dict[str, str]:
        return self._object("GET", "apps", name, "config")

    def set_config(
        self, name: str, values: dict[str, str], unset: list[str] | None = None, secret: bool = False
    ) -> Iterator[dict[str, Any]]:
        body = {"set": values, "unset": unset or [], "secret": secret}
        return self._job("PATCH", "apps", name, "config", json=body)

    def ps(self, name: str) -> list[dict[str, Any]]:
        return self._list("GET", "apps", name, "ps")

    def scale(self, name: str, formation: dict[str, int]) -> dict[str, Any]:
        return self._object("POST", "apps", name, "scale", json={"formation": formation}, timeout=None)

    def set_resources(
        self, name: str, process: str, memory: str | None, cpus: float | None
    ) -> Iterator[dict[str, Any]]:
        return self._job("PUT", "apps", name, "resources", process, json={"memory": memory, "cpus": cpus})

    def add_volume(self, name: str, volume: str, path: str) -> Iterator[dict[str, Any]]:
        return self._job("POST", "apps", name, "volumes", json={"name": volume, "path": path})

    def set_health(self, name: str, check: dict[str, Any]) -> dict[str, Any]:
        return self._object("PATCH", "apps", name, "health", json=check)

    def run(self, name: str, command: str) -> Iterator[dict[str, Any]]:
        """A one-off command: its output lines, then its result."""
        return self._job("POST", "apps", name, "run", json={"command": command})

    # logs, metrics, events
    def logs(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self._list("GET", "apps", name, "logs", params=params)

    def follow_logs(self, name: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self._job("GET", "apps", name, "logs", params={**params, "follow": True})

    def stats(self, name: str) -> dict[str, Any]:
        return self._object("GET", "apps", name, "stats")

    def metrics(self, name: str) -> dict[str, Any]:
        return self._object("GET", "apps", name, "metrics")

    def events(self, app: str | None = None, n: int = 30) -> list[dict[str, Any]]:
        return self._list("GET", "events", params={"n": n, "app": app or None})

    # domains, HTTPS, proxy settings
    def add_domains(self, name: str, domains: list[str]) -> list[str]:
        """The app's custom domains after adding these."""
        return self._list("PATCH", "apps", name, "domains", json={"add": domains})

    def remove_domains(self, name: str, domains: list[str]) -> list[str]:
        """The app's custom domains after removing these."""
        return self._list("PATCH", "apps", name, "domains", json={"remove": domains})

    def https(self, name: str) -> dict[str, Any]:
        return self._object("GET", "apps", name, "https")

    def set_https(self, name: str, redirect: bool | None, **hsts: Any) -> dict[str, Any]:
        """`hsts`: hsts, hsts_max_age, hsts_subdomains (None: unchanged)."""
        return self._object("PATCH", "apps", name, "https", json={"redirect": redirect, **hsts})

    def proxy_settings(self, name: str) -> dict[str, Any]:
        return self._object("GET", "apps", name, "proxy")

    def set_proxy_settings(self, name: str, request_buffering: bool) -> dict[str, Any]:
        return self._object("PATCH", "apps", name, "proxy", json={"request_buffering": request_buffering})

    def sleep_settings(self, name: str) -> dict[str, Any]:
        return self._object("GET", "apps", name, "sleep")

    def set_sleep(self, name: str, after: str | None, with_workers: bool) -> dict[str, Any]:
        return self._object("PUT", "apps", name, "sleep", json={"after": after, "with_workers": with_workers})

    # builds, releases, deploys
    def builds(self, name: str) -> list[dict[str, Any]]:
        return self._list("GET", "apps", name, "builds")

    def cancel_builds(self, name: str, build_id: str | None = None) -> dict[str, Any]:
        return self._object("POST", "apps", name, "builds", "cancel", params={"build_id": build_id})

    def build_log(self, name: str, build_id: str | None = None) -> list[str]:
        return self._list("GET", "apps", name, "builds", build_id or "latest", "log")

    def export_k8s(self, name: str, registry: str | None, volume_size: str) -> list[dict[str, Any]]:
        params = {"volume_size": volume_size, **({"registry": registry} if registry else {})}
        return self._list("GET", "apps", name, "export", "k8s", params=params)

    def releases(self, name: str) -> list[dict[str, Any]]:
        return self._list("GET", "apps", name, "releases")

    def rollback(self, name: str, version: int | None = None) -> Iterator[dict[str, Any]]:
        return self._job("POST", "apps", name, "rollback", json={"version": version})

    def promote(self, source: str, target: str) -> Iterator[dict[str, Any]]:
        return self._job("POST", "apps", source, "promote", params={"to": target})

    def deploy(self, name: str, archive: IO[bytes], build_args: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Upload the archive; yield the daemon's events ({"line"} ... then {"result"})."""

        def body() -> Iterator[bytes]:
            while chunk := archive.read(256 * 1024):
                yield chunk

        query = urllib.parse.urlencode([("build_arg", a) for a in build_args or []])
        return self.stream(
            "POST",
            api_path("apps", name, "deploy") + (f"?{query}" if query else ""),
            content=body(),
            headers={"Content-Type": "application/x-tar"},
        )

    def deploy_git(self, name: str, url: str, ref: str | None = None) -> Iterator[dict[str, Any]]:
        return self._job("POST", "apps", name, "deploy", "git", json={"url": url, "ref": ref})

    def git_url(self, name: str) -> str:
        """The app's git push URL (without credentials)."""
        return str(self._object("GET", "apps", name, "git")["url"])

    def hook(self, name: str) -> dict[str, Any]:
        return self._object("GET", "apps", name, "hook")

    def set_hook_repo(self, name: str, repo: str) -> dict[str, Any]:
        return self._object("PUT", "apps", name, "hook", json={"repo": repo})

    # add-ons
    def addons(self) -> list[dict[str, Any]]:
        return self._list("GET", "addons")

    def addon(self, name: str) -> dict[str, Any]:
        return self._object("GET", "addons", name)

    def addon_logs(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The add-on container's output, lines shaped like an app's (see logs)."""
        return self._list("GET", "addons", name, "logs", params=params)

    def follow_addon_logs(self, name: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self._job("GET", "addons", name, "logs", params={**params, "follow": True})

    def create_addon(
        self, kind: str, app: str, name: str | None, version: str | None, as_var: str | None
    ) -> Iterator[dict[str, Any]]:
        body = {"kind": kind, "app": app, "name": name, "version": version, "as": as_var}
        return self._job("POST", "addons", json=body)

    def attach_addon(self, name: str, app: str, as_var: str | None) -> Iterator[dict[str, Any]]:
        return self._job("POST", "addons", name, "attach", json={"app": app, "as": as_var})

    def detach_addon(self, name: str, app: str) -> Iterator[dict[str, Any]]:
        return self._job("POST", "addons", name, "detach", json={"app": app})

    def destroy_addon(self, name: str, confirm: str, detach: bool, backup: bool = True) -> dict[str, Any]:
        params = {"confirm": confirm, "detach": detach, "backup": backup}
        return self._object("DELETE", "addons", name, params=params, timeout=None)

    # add-on backups; dumps go out and come in as they are read, never held whole
    def addon_backups(self, name: str) -> dict[str, Any]:
        return self._object("GET", "addons", name, "backups")

    def backup_addon(self, name: str) -> Iterator[dict[str, Any]]:
        return self._job("POST", "addons", name, "backups")

    def verify_backup(self, name: str, backup_id: str) -> Iterator[dict[str, Any]]:
        return self._job("POST", "addons", name, "backups", backup_id, "verify")

    def restore_backup(self, name: str, backup_id: str) -> Iterator[dict[str, Any]]:
        return self._job("POST", "addons", name, "backups", backup_id, "restore")

    def remove_backup(self, name: str, backup_id: str) -> dict[str, Any]:
        return self._object("DELETE", "addons", name, "backups", backup_id)

    def schedule_backups(self, name: str, schedule: str | None, keep: int | None) -> dict[str, Any]:
        return self._object("PUT", "addons", name, "backups", "schedule", json={"schedule": schedule, "keep": keep})

    def set_backup_target(self, name: str, target: dict[str, Any]) -> dict[str, Any]:
        return self._object("PUT", "addons", name, "backups", "target", json=target, timeout=120)

    def import_dump(self, name: str, source: IO[bytes]) -> Iterator[dict[str, Any]]:
        """Send a dump as it is read (chunked); the answer streams the import's output."""

        def pieces() -> Iterator[bytes]:
            while piece := source.read(1024 * 1024):
                yield piece

        headers = {"Content-Type": "application/octet-stream"}
        return self._job("POST", "addons", name, "import", content=pieces(), headers=headers)

    def export_dump(self, name: str, backup_id: str | None, out: IO[bytes]) -> int:
        """A fresh dump (no id) or a stored backup, written to out as it arrives; the bytes written."""
        path = ("addons", name, "export") if backup_id is None else ("addons", name, "backups", backup_id, "download")
        return self._download(api_path(*path), out)[1]

    def platform_backup(self, out: Any) -> tuple[str, int]:
        """The whole platform's archive, written to out (a file, or a Sealer) as it arrives; its
        file name and the bytes written."""
        headers, written = self._download(api_path("backup"), out)
        name = headers.get("content-disposition", "").partition('filename="')[2].rstrip('"') or "lbsolo-backup.tar"
        return name, written

    def _download(self, path: str, out: Any) -> tuple[Any, int]:
        """A streamed answer written to out as it arrives: its headers and the bytes written. One
        that the daemon ended short (it failed midway) raises an OSError (a WireError) here."""
        response = self._send("GET", path, timeout=None)
        written = 0
        try:
            if response.status >= 400:
                raise self._error(response.status, response.read())
            for piece in response.pieces():
                out.write(piece)
                written += len(piece)
        finally:
            response.close()
        return response.headers, written

    def audit(
        self, app: str | None = None, since: float | None = None, actor: str | None = None, n: int = 50
    ) -> list[dict[str, Any]]:
        return self._list("GET", "audit", params={"app": app, "since": since, "actor": actor, "n": n})

    # tokens, webhooks, static routes
    def tokens(self) -> list[dict[str, Any]]:
        return self._list("GET", "tokens")

    def create_token(self, name: str, role: str = "admin", apps: list[str] | None = None) -> dict[str, Any]:
        return self._object("POST", "tokens", json={"name": name, "role": role, "apps": apps or []})

    def revoke_token(self, id_or_name: str) -> None:
        self.request("DELETE", api_path("tokens", id_or_name))

    def webhooks(self) -> list[dict[str, Any]]:
        return self._list("GET", "webhooks")

    def add_webhook(self, url: str, app: str | None, kinds: list[str] | None, slack: bool) -> dict[str, Any]:
        return self._object("POST", "webhooks", json={"url": url, "app": app, "kinds": kinds or None, "slack": slack})

    def remove_webhook(self, hook_id: str) -> None:
        self.request("DELETE", api_path("webhooks", hook_id))

    def routes(self) -> list[dict[str, Any]]:
        return self._list("GET", "routes")

    def add_route(self, name: str, to: str, domains: list[str] | None = None) -> dict[str, Any]:
        return self._object("POST", "routes", json={"name": name, "to": to, "domains": domains or []})

    def remove_route(self, name: str) -> None:
        self.request("DELETE", api_path("routes", name))


def in_background(call: Callable[[], T]) -> Callable[[], T]:
    """Start call on a thread now; the function returned waits for its answer (or raises its error).

    For a verb that needs two answers: the daemon works on both at once, and the CLI goes on
    (loading its output) while they are out. Each request has its own connection.
    """
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as e:  # handed to the caller, who raises it
            outcome.append((False, e))

    thread = threading.Thread(target=run, name="lbsolo-request", daemon=True)
    thread.start()

    def answer() -> T:
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    return answer


def api_path(*segments: str) -> str:
    """/api/<segments>, each one escaped: a name never adds a path level or a query."""
    return "/api/" + "/".join(urllib.parse.quote(s, safe="") for s in segments)


def _json_loads(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError as e:
        raise APIError(f"the daemon sent something that is not JSON: {raw[:100]!r}", "protocol", 502) from e
