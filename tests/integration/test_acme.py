"""ACME against a real ACME CA: Debian's pebble on loopback, its HTTP-01 validations sent to the
daemon's proxy port, names resolved by pebble-challtestsrv (which answers 127.0.0.1 for every
name unless told otherwise, for pebble and for lbsolo's preflight alike).

An app's custom domain and a static route's get certificates from pebble in the background
(domains:add, routes:add --domain), served on the HTTPS listener at once and shown by `lbsolo
certs`; a name that resolves elsewhere is never sent to the CA (pebble's log shows no order for it);
an HTTP-01 request for an unknown token is 404 and never reaches the service behind the route.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lbsolo.proxy_tls import LocalCA
from tests.integration.conftest import Daemon, QuietHandler, free_port, loopback_server, remove_instance

pytestmark = [
    pytest.mark.acme,
    pytest.mark.skipif(shutil.which("pebble") is None and os.environ.get("CI") != "true", reason="no pebble"),
]

SHOP = "shop.acme-test.example.com"
SVC = "svc.acme-test.example.com"
FAR = "far.acme-test.example.com"  # resolves to a documentation address: not this server
CHALLENGE = "/.well-known/acme-challenge/"


@dataclass
class Pebble:
    directory: str
    management: int
    challtest: int  # pebble-challtestsrv's management port
    dns: int  # pebble-challtestsrv's DNS port: pebble's resolver and lbsolo's preflight's
    log: Path
    tls_ca: Path  # the CA of pebble's own HTTPS endpoint (the daemon's LBSOLO_ACME_CA_BUNDLE)

    def orders(self, text: str = "") -> int:
        """Requests to pebble's newOrder endpoint so far (pebble logs every request it handles)."""
        lines = self.log.read_text().splitlines()
        return sum(1 for line in lines if "/order-plz" in line and text in line)

    def root_pem(self) -> str:
        return self._management("/roots/0")

    def intermediate_pem(self) -> str:
        return self._management("/intermediates/0")

    def _management(self, path: str) -> str:
        context = ssl.create_default_context(cafile=str(self.tls_ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management}{path}", context=context) as r:
            return r.read().decode()

    def resolve(self, host: str, address: str) -> None:
        body = json.dumps({"host": host, "addresses": [address]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.challtest}/add-a", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited early:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise AssertionError(f"{proc.args[0]} not listening on {port}:\n{log.read_text()}")


@contextlib.contextmanager
def pebble(tmp: Path, http_port: int, tls_port: int | None = None, validity: int = 0) -> Iterator[Pebble]:
    """pebble-challtestsrv (DNS only) and pebble (HTTP-01 validations to `http_port`, TLS-ALPN-01
    ones to `tls_port`; certificates valid `validity` seconds, 0: pebble's five years), on loopback."""
    tls = LocalCA(tmp / "pebble-tls-ca", "pebble endpoint test CA")
    chain, key = tls.issue("localhost", "127.0.0.1")
    (tmp / "pebble-cert.pem").write_bytes(chain)
    (tmp / "pebble-key.pem").write_bytes(key)
    listen, management, dns, challtest = free_port(), free_port(), free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{listen}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(tmp / "pebble-cert.pem"),
            "privateKey": str(tmp / "pebble-key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port or free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            **({"certificateValidityPeriod": validity} if validity else {}),
        }
    }
    (tmp / "pebble.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_VA_ALWAYS_VALID": "0",
        "PEBBLE_WFE_NONCEREJECT": "0",
        "PEBBLE_AUTHZREUSE": "0",
    }
    chall_log, pebble_log = tmp / "challtestsrv.log", tmp / "pebble.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with chall_log.open("wb") as out:
            chall = subprocess.Popen(
                ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                 "-management", f"127.0.0.1:{challtest}", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        procs.append(chall)
        _wait_port(challtest, chall, chall_log)
        with pebble_log.open("wb") as out:
            peb = subprocess.Popen(
                ["pebble", "-config", str(tmp / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        procs.append(peb)
        _wait_port(listen, peb, pebble_log)
        yield Pebble(f"https://127.0.0.1:{listen}/dir", management, challtest, dns, pebble_log, tls.cert_path)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@dataclass
class Setup:
    daemon: Daemon
    pebble: Pebble
    https_port: int
    service_seen: list[str]


@pytest.fixture(scope="module")
def acme(docker_client, tmp_path_factory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("acme")
    seen: list[str] = []

    class Service(QuietHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = b"service behind a static route\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    d = Daemon(home=tmp / "home")
    https_port = free_port()
    with pebble(tmp, d.proxy_port) as p, loopback_server(Service) as service_port:
        d.extra_env.update(
            LBSOLO_PROXY_HTTPS_PORT=str(https_port),
            LBSOLO_ACME_EMAIL="ops@acme-test.example.com",
            LBSOLO_ACME_DIRECTORY=p.directory,
            LBSOLO_ACME_STAGING_DIRECTORY=p.directory,  # retries after a failed authorization: the same pebble
            LBSOLO_ACME_CA_BUNDLE=str(p.tls_ca),
            LBSOLO_ACME_RESOLVER=f"127.0.0.1:{p.dns}",
            LBSOLO_ACME_HTTP_PORT=str(d.proxy_port),  # where pebble sends its validations
        )
        d.start()
        try:
            setup = Setup(d, p, https_port, seen)
            out = d.cli("routes:add", "svc", "--to", f"127.0.0.1:{service_port}", "--domain", SVC)
            assert out.returncode == 0, out.stderr
            yield setup
        finally:
            d.stop()
            remove_instance(docker_client, d.instance)


def _certs(d: Daemon) -> dict[str, dict]:
    r = d.api_get("/api/certs")
    assert r.status_code == 200, r.text
    return {c["domain"]: c for c in r.json()}


def _wait_valid(d: Daemon, domain: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    cert: dict = {}
    while time.monotonic() < deadline:
        cert = _certs(d).get(domain, {})
        if cert.get("status") == "valid":
            return cert
        time.sleep(0.5)
    raise AssertionError(f"no certificate for {domain} in {timeout}s: {cert}\n{d.log_path.read_text()[-4000:]}")


def _served(setup: Setup, host: str, path: str = "/") -> tuple[dict, bytes]:
    """The certificate the HTTPS listener serves for `host`, verified against pebble's root, and the answer."""
    context = ssl.create_default_context(cadata=setup.pebble.root_pem())
    raw = socket.create_connection(("127.0.0.1", setup.https_port), timeout=10)
    with context.wrap_socket(raw, server_hostname=host) as tls:
        cert = tls.getpeercert()
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return cert, data


def test_domains_get_certificates_from_the_ca_in_the_background_served_at_once(acme: Setup):
    d = acme.daemon
    assert d.cli("apps:create", "shop").returncode == 0
    out = d.cli("domains:add", "shop", SHOP)
    assert out.returncode == 0, out.stderr
    for domain in (SHOP, SVC):  # the app's domain, and the static route's added before
        cert = _wait_valid(d, domain)
        assert cert["issuer"].startswith("Pebble Intermediate CA") and cert["last_error"] == ""
        assert cert["not_after"] > time.time() + 86400 and cert["ca_attempts_last_hour"] == 1
    # Served on the HTTPS listener without a restart, the chain verified up to pebble's root.
    cert, answer = _served(acme, SVC, "/through-tls")
    issuer = dict(x[0] for x in cert["issuer"])
    assert issuer["commonName"].startswith("Pebble Intermediate CA")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"service behind a static route\n")
    assert acme.service_seen[-1] == "/through-tls"
    cert, _ = _served(acme, SHOP)
    assert dict(x[0] for x in cert["issuer"])["commonName"].startswith("Pebble Intermediate CA")
    # Stored 0600 under $LBSOLO_HOME/acme, and listed by the CLI.
    for name in (f"{SHOP}.pem", f"{SHOP}.key", f"{SHOP}.json"):
        assert (d.home / "acme" / "certs" / name).stat().st_mode & 0o777 == 0o600
    assert (d.home / "acme" / "account-key.pem").stat().st_mode & 0o777 == 0o600
    listing = d.cli("certs")
    assert listing.returncode == 0, listing.stderr
    assert SHOP in listing.stdout and "Pebble" in listing.stdout and "valid" in listing.stdout
    info = d.cli("certs:info", SHOP)
    assert info.returncode == 0 and "Pebble Intermediate CA" in info.stdout


def test_after_issuance_the_app_redirects_to_https_and_hsts_comes_over_https_only_once_asked(acme: Setup):
    d = acme.daemon
    _wait_valid(d, SHOP)
    base = f"http://127.0.0.1:{d.proxy_port}"
    deadline = time.monotonic() + 10
    while True:  # turned on by the certificate's event, just after it is served
        r = httpx.get(f"{base}/pay?x=1", headers={"Host": SHOP}, timeout=10)
        if r.status_code == 308 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 308 and r.headers["location"] == f"https://{SHOP}:{acme.https_port}/pay?x=1"
    out = d.cli("apps:https", "shop")
    assert out.returncode == 0 and "redirect on" in out.stdout and "HSTS off" in out.stdout
    # The HTTP-01 path stays on plain HTTP (an unknown token: the proxy's 404, not a redirect).
    r = httpx.get(f"{base}{CHALLENGE}no-such-token", headers={"Host": SHOP}, timeout=10)
    assert r.status_code == 404
    _, answer = _served(acme, SHOP)
    assert b"strict-transport-security" not in answer.lower()  # opt-in only
    # Bad input: a clear line, nothing changed.
    out = d.cli("apps:https", "shop", "--hsts", "--hsts-max-age", "0")
    assert out.returncode != 0 and "HSTS max-age" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = d.cli("apps:https", "shop", "--hsts", "--hsts-max-age", "600", "--hsts-subdomains")
    assert out.returncode == 0, out.stderr
    assert "HSTS on (max-age=600; includeSubDomains" in out.stdout
    _, answer = _served(acme, SHOP)  # the app is not deployed: the proxy's own 503 carries it too
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nstrict-transport-security: max-age=600; includesubdomains" in head
    r = httpx.get(f"{base}/", headers={"Host": SHOP}, timeout=10)
    assert r.status_code == 308 and "strict-transport-security" not in r.headers  # never over plain HTTP
    # --no-redirect is a choice the next certificate keeps.
    out = d.cli("apps:https", "shop", "--no-redirect", "--no-hsts")
    assert out.returncode == 0 and "redirect off" in out.stdout and "HSTS off" in out.stdout
    assert d.api_get("/api/apps/shop/https").json()["redirect_chosen"] is True
    # `lbsolo certs` shows the issuer and the expiry date.
    cert = _certs(d)[SHOP]
    assert cert["expires_soon"] is False and cert["ca"] == "production"
    listing = d.cli("certs")
    assert time.strftime("%Y-%m-%d", time.localtime(cert["not_after"])) in listing.stdout
    # And the app page: issuer, expiry and a Renew button for the domain.
    with httpx.Client(base_url=d.api, timeout=10) as ui:
        r = ui.post("/ui/login", data={"token": d.token, "next": "/ui/apps/shop"})
        assert r.status_code == 303, r.text
        page = ui.get("/ui/apps/shop").text
    row = page[page.index(f'data-cert="{SHOP}"') :].split("</tr>", 1)[0]
    assert "Pebble Intermediate CA" in row and 'class="ok" data-expiry' in row and "Renew" in row
    assert time.strftime("%Y-%m-%d", time.localtime(cert["not_after"])) in row


def test_a_name_that_does_not_point_here_is_never_sent_to_the_ca(acme: Setup):
    d, p = acme.daemon, acme.pebble
    p.resolve(FAR, "192.0.2.7")
    _wait_valid(d, SHOP)  # the other orders are over: count from here
    orders = p.orders()
    assert d.cli("apps:create", "far").returncode == 0
    assert d.cli("domains:add", "far", FAR).returncode == 0
    out = d.cli("certs:issue", FAR)  # asked by hand too: the preflight still comes first
    assert out.returncode == 1
    assert "resolves to 192.0.2.7, not to this server" in out.stderr
    time.sleep(1)
    cert = _certs(d)[FAR]
    assert cert["status"] == "waiting" and cert["ca_attempts_last_hour"] == 0 and cert["failures"] >= 1
    assert cert["next_try"] > time.time() + 30  # backing off, without a CA attempt
    assert p.orders() == orders and FAR not in p.log.read_text()


def test_an_unknown_token_is_404_from_the_proxy_and_never_reaches_the_service(acme: Setup):
    d = acme.daemon
    before = list(acme.service_seen)
    for host in (SVC, f"svc.lbsolo.localhost:{d.proxy_port}"):
        r = httpx.get(f"http://127.0.0.1:{d.proxy_port}{CHALLENGE}no-such-token", headers={"Host": host}, timeout=10)
        assert r.status_code == 404
    assert acme.service_seen == before
    r = httpx.get(f"http://127.0.0.1:{d.proxy_port}/.well-known/other", headers={"Host": SVC}, timeout=10)
    assert r.status_code == 200 and acme.service_seen[-1] == "/.well-known/other"


def test_chromium_gets_the_pebble_issued_chain(acme: Setup, in_ci: bool):
    """A real browser over HTTPS: Debian's Chromium, trusting only pebble's root (by its key), gets
    the certificate pebble issued and the service's answer through the HTTPS listener."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    playwright_api = pytest.importorskip("playwright.sync_api")
    from tests.integration.test_web import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        if in_ci:
            pytest.fail(f"{CHROMIUM} is missing: run scripts/test-env-browser")
        pytest.skip(f"{CHROMIUM} is missing")
    _wait_valid(acme.daemon, SVC)
    # Chromium checks the pins against the chain the server sent: pebble's intermediate (and root).
    pins = []
    for pem in (acme.pebble.root_pem(), acme.pebble.intermediate_pem()):
        key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        pins.append(base64.b64encode(hashlib.sha256(spki).digest()).decode())
    # The name resolves to the listener; only a chain with pebble's keys is trusted.
    args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {SVC} 127.0.0.1"]
    args.append(f"--ignore-certificate-errors-spki-list={','.join(pins)}")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        try:
            page = browser.new_page()
            response = page.goto(f"https://{SVC}:{acme.https_port}/in-chromium")
            assert response is not None and response.status == 200
            assert "service behind a static route" in page.content()
            details = response.security_details() or {}
            assert details.get("issuer", "").startswith("Pebble Intermediate CA"), details
            assert details.get("subjectName") == SVC, details
        finally:
            browser.close()
    assert "/in-chromium" in acme.service_seen  # (and the favicon it asks for next)
