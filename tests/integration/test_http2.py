"""HTTP/2 on a real daemon's HTTPS listener: an app deployed from examples/hello answers h2 clients
(curl, httpx, h2load when installed) and HTTP/1.1 clients on the same port."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from .conftest import EXAMPLES, Daemon, QuietHandler, free_port, loopback_server, running_daemon

pytestmark = pytest.mark.docker
APP = "h2hello"


@pytest.fixture(scope="module")
def daemon(docker_client, tmp_path_factory) -> Iterator[Daemon]:
    https = free_port()
    with running_daemon(
        docker_client, tmp_path_factory.mktemp("h2") / "home", {"LBSOLO_PROXY_HTTPS_PORT": str(https)}
    ) as d:
        d.https_port = https  # type: ignore[attr-defined]
        assert d.cli("apps:create", APP).returncode == 0
        out = d.cli("deploy", str(EXAMPLES / "hello"), "--app", APP)
        assert out.returncode == 0, out.stdout + out.stderr
        try:
            yield d
        finally:
            d.cli("destroy", APP, "--yes")


class CountingHandler(QuietHandler):
    """Reads a POST's body whole and answers how many bytes it got."""

    def do_POST(self) -> None:
        size = len(self.rfile.read(int(self.headers["Content-Length"])))
        answer = str(size).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def _host(daemon: Daemon) -> str:
    return f"{APP}.lbsolo.localhost"


def _curl(daemon: Daemon, *flags: str) -> tuple[str, str]:
    host, port = _host(daemon), daemon.https_port  # type: ignore[attr-defined]
    out = subprocess.run(
        [
            "curl", "-sS", "--cacert", str(daemon.home / "tls" / "ca.pem"), "--resolve", f"{host}:{port}:127.0.0.1",
            "-o", "/dev/null", "-w", "%{http_version} %{http_code}", *flags, f"https://{host}:{port}/",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    version, status = out.stdout.split()
    return version, status


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_gets_http2_and_http11_on_the_same_port(daemon):
    if "HTTP2" not in subprocess.run(["curl", "-V"], capture_output=True, text=True).stdout:
        pytest.skip("this curl has no HTTP/2")
    assert _curl(daemon, "--http2") == ("2", "200")
    assert _curl(daemon, "--http1.1") == ("1.1", "200")


def test_httpx_over_http2_many_requests_on_one_connection(daemon):
    pytest.importorskip("h2")
    ctx = ssl.create_default_context(cafile=str(daemon.home / "tls" / "ca.pem"))
    port = daemon.https_port  # type: ignore[attr-defined]
    # By address (the domain certificate names loopback too); the Host header becomes :authority.
    url = f"https://127.0.0.1:{port}/"
    host = {"Host": _host(daemon)}
    with httpx.Client(http2=True, verify=ctx, timeout=10) as client:
        responses = [client.get(url, headers=host) for _ in range(20)]
        assert {(r.http_version, r.status_code) for r in responses} == {("HTTP/2", 200)}
        # A body goes through whole, to a service that reads it (hello has no POST handler: it would
        # answer 501 and close with the body unread, and the reset can overtake its answer).
        with loopback_server(CountingHandler) as service_port:
            out = daemon.cli("routes:add", "h2sink", "--to", f"127.0.0.1:{service_port}")
            assert out.returncode == 0, out.stdout + out.stderr
            try:
                body = client.post(url, content=b"x" * 300_000, headers={"Host": "h2sink.lbsolo.localhost"})
                assert (body.http_version, body.status_code, body.text) == ("HTTP/2", 200, "300000")
            finally:
                daemon.cli("routes:remove", "h2sink")
        missing = client.get(url, headers={"Host": "nobody.lbsolo.localhost"})
        assert (missing.http_version, missing.status_code) == ("HTTP/2", 404)


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (Debian's nghttp2-client)")
def test_h2load_many_concurrent_streams(daemon):
    port = daemon.https_port  # type: ignore[attr-defined]
    out = subprocess.run(
        ["h2load", "-n", "2000", "-c", "4", "-m", "32", "-H", f":authority: {_host(daemon)}",
         f"https://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "2000 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout + out.stderr
    assert "2000 2xx" in out.stdout, out.stdout
