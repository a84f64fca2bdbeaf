"""Time from adding a domain to its CA-issued certificate served, lbsolo against Caddy, the same CA.

One pebble (Debian's, on loopback, validations at once: PEBBLE_VA_NOSLEEP=1) and its
pebble-challtestsrv (every name resolves to 127.0.0.1) serve both, one after the other, on the same
two ports (pebble's HTTP-01 and TLS-ALPN-01 validations go there): first `lbsolo up` (its proxy on
the HTTP port, its HTTPS listener on the other; ACME on, the preflight asking challtestsrv), then
Caddy (http_port and https_port the same two; acme_ca = pebble's directory, acme_ca_root = the CA of
pebble's HTTPS endpoint). For each, ROUNDS new names, one at a time:

  lbsolo: PATCH /api/apps/<app>/domains (what `lbsolo domains:add` sends) -> the first TLS handshake
          with that name as SNI that presents a certificate issued by pebble;
  Caddy:  POST /load of a config with one more site (the admin API; Caddy starts managing it) ->
          the same handshake.

The first round of each includes registering the ACME account (both start with an empty home).
Prints every round, each one's median, and lbsolo/Caddy. Target (issue 14): lbsolo <= 2x Caddy.

Usage: .venv/bin/python bench/acme_time.py [rounds]   (default 5; needs pebble, caddy and a
Docker engine for `lbsolo up`)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lbsolo.proxy_tls import LocalCA  # noqa: E402  (the repository's package, not an installed one)

DOMAIN = "acme-bench.example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} is not listening on {port}")


def issuer_of(port: int, name: str) -> str:
    """The issuer's common name of the certificate served for SNI `name` ('' if no handshake)."""
    from cryptography import x509

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=2)
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return ""
    if not der:
        return ""
    names = x509.load_der_x509_certificate(der).issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def until_pebble_cert(port: int, name: str, start: float, timeout: float = 120.0) -> float:
    """Seconds from `start` to the first handshake for `name` presenting pebble's certificate."""
    while time.monotonic() - start < timeout:
        if issuer_of(port, name).startswith("Pebble Intermediate CA"):
            return time.monotonic() - start
        time.sleep(0.02)
    raise SystemExit(f"no pebble certificate for {name} on :{port} within {timeout}s")


@contextlib.contextmanager
def pebble(tmp: Path, http_port: int, tls_port: int) -> Iterator[tuple[str, int, Path]]:
    """(directory URL, challtestsrv's DNS port, the CA file of pebble's HTTPS endpoint)."""
    ca = LocalCA(tmp / "pebble-tls-ca", "pebble endpoint bench CA")
    chain, key = ca.issue("localhost", "127.0.0.1")
    (tmp / "pebble-cert.pem").write_bytes(chain)
    (tmp / "pebble-key.pem").write_bytes(key)
    listen, management, dns, challtest = free_port(), free_port(), free_port(), free_port()
    config = {"pebble": {
        "listenAddress": f"127.0.0.1:{listen}", "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(tmp / "pebble-cert.pem"), "privateKey": str(tmp / "pebble-key.pem"),
        "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}  # fmt: skip
    (tmp / "pebble.json").write_text(json.dumps(config))
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
    log = (tmp / "pebble.log").open("wb")
    procs = [subprocess.Popen(
        ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
         "-management", f"127.0.0.1:{challtest}", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )]  # fmt: skip
    wait_port(challtest, "pebble-challtestsrv")
    procs.append(subprocess.Popen(
        ["pebble", "-config", str(tmp / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    ))  # fmt: skip
    wait_port(listen, "pebble")
    try:
        yield f"https://127.0.0.1:{listen}/dir", dns, ca.cert_path
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        log.close()


def time_lbsolo(tmp: Path, names: list[str], http_port: int, tls_port: int, directory: str, dns: int, ca: Path):
    home = tmp / "lbsolo-home"
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBSOLO_")}
    env.update(
        LBSOLO_HOME=str(home), LBSOLO_API_PORT=str(api_port), LBSOLO_DNS_PORT=str(free_port()),
        LBSOLO_PROXY_PORT=str(http_port), LBSOLO_PROXY_HTTPS_PORT=str(tls_port),
        LBSOLO_ACME_EMAIL="ops@acme-bench.example.com", LBSOLO_ACME_DIRECTORY=directory,
        LBSOLO_ACME_STAGING_DIRECTORY=directory, LBSOLO_ACME_CA_BUNDLE=str(ca),
        LBSOLO_ACME_RESOLVER=f"127.0.0.1:{dns}", LBSOLO_ACME_HTTP_PORT=str(http_port),
        LBSOLO_ACME_TLS_PORT=str(tls_port),
    )  # fmt: skip
    log = (tmp / "lbsolo.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "lbsolo", "up"], env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not (home / "daemon.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"lbsolo up did not start:\n{(tmp / 'lbsolo.log').read_text()[-3000:]}")
            time.sleep(0.1)
        token = (home / "token").read_text().strip()

        def api(method: str, path: str, body: object) -> None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{api_port}{path}", data=json.dumps(body).encode(), method=method,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=30) as r:
                r.read()

        api("POST", "/api/apps", {"name": "bench"})
        times = []
        for name in names:
            start = time.monotonic()
            api("PATCH", "/api/apps/bench/domains", {"add": [name]})
            times.append(until_pebble_cert(tls_port, name, start))
            print(f"  lbsolo {name}: {times[-1]:.2f} s", flush=True)
        return times
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()
        log.close()
        remove_instance(home)


def remove_instance(home: Path) -> None:
    """What the bench's daemon created in the engine (the app's network, if any)."""
    with contextlib.suppress(Exception):
        from lbsolo.config import Settings
        from lbsolo.daemon import instance_id

        instance = instance_id(Settings.load(home=home))
        for kind in ("container", "network"):
            ids = subprocess.run(["docker", kind, "ls", "-aq" if kind == "container" else "-q", "--filter",
                                  f"label=lbsolo.instance={instance}"], capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", kind, "rm", *(["-f"] if kind == "container" else []), *ids],
                               capture_output=True)  # fmt: skip


def time_caddy(tmp: Path, names: list[str], http_port: int, tls_port: int, directory: str, ca: Path):
    admin = free_port()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp / "caddy-data"), "XDG_CONFIG_HOME": str(tmp / "caddy-config")}

    def caddyfile(sites: list[str]) -> str:
        blocks = "".join(f"{s} {{\n  respond \"hello\"\n}}\n" for s in sites)
        return (
            f"{{\n  admin 127.0.0.1:{admin}\n  http_port {http_port}\n  https_port {tls_port}\n"
            f"  acme_ca {directory}\n  acme_ca_root {ca}\n  email ops@acme-bench.example.com\n"
            f"  ocsp_stapling off\n  skip_install_trust\n}}\n{blocks}"
        )

    first = tmp / "Caddyfile"
    first.write_text(caddyfile([]))
    log = (tmp / "caddy.log").open("w")
    proc = subprocess.Popen(["caddy", "run", "--config", str(first), "--adapter", "caddyfile"], env=env,
                            stdout=log, stderr=log)  # fmt: skip
    try:
        wait_port(admin, "caddy's admin API")
        times, sites = [], []
        for name in names:
            sites.append(name)
            body = caddyfile(sites).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{admin}/load", data=body, method="POST", headers={"Content-Type": "text/caddyfile"}
            )
            start = time.monotonic()
            with urllib.request.urlopen(request, timeout=30) as r:
                r.read()
            times.append(until_pebble_cert(tls_port, name, start))
            print(f"  caddy  {name}: {times[-1]:.2f} s", flush=True)
        return times
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()
        log.close()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for tool in ("pebble", "pebble-challtestsrv", "caddy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/acme_time.py needs {tool}")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
    with tempfile.TemporaryDirectory(prefix="acme-bench-") as t:
        tmp = Path(t)
        http_port, tls_port = free_port(), free_port()
        with pebble(tmp, http_port, tls_port) as (directory, dns, ca):
            runs: list[tuple[str, Callable[[], list[float]]]] = [
                ("lbsolo", lambda: time_lbsolo(tmp, [f"l{i}.{DOMAIN}" for i in range(rounds)],
                                               http_port, tls_port, directory, dns, ca)),
                ("caddy", lambda: time_caddy(tmp, [f"c{i}.{DOMAIN}" for i in range(rounds)],
                                             http_port, tls_port, directory, ca)),
            ]  # fmt: skip
            results = {}
            for label, fn in runs:
                print(f"{label}:", flush=True)
                results[label] = fn()
    lb, cd = results["lbsolo"], results["caddy"]
    print(f"first (with the account's registration): lbsolo {lb[0]:.2f} s, caddy {cd[0]:.2f} s, "
          f"lbsolo/caddy {lb[0] / cd[0]:.2f}")  # fmt: skip
    if rounds > 1:
        ml, mc = statistics.median(lb[1:]), statistics.median(cd[1:])
        print(f"next {rounds - 1} (median): lbsolo {ml:.2f} s, caddy {mc:.2f} s, lbsolo/caddy {ml / mc:.2f}")
    print("target (issue 14): lbsolo <= 2x caddy")


if __name__ == "__main__":
    main()
