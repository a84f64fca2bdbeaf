"""Deploy benchmark: warm-cache redeploy of examples/hello after a one-line change, until the first
200 of the new release through the proxy, against a raw `docker build` + `docker run` + first 200
of the same change, in the same run. Target (PRODUCT.md): lbsolo <= 1.5x the raw path.

Usage: .venv/bin/python bench/deploy.py [rounds]   (needs a Docker engine and the seeded images)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, host: str | None = None) -> str | None:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.read().decode() if r.status == 200 else None
    except OSError:
        return None


def wait_for(marker: str, url: str, host: str | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = get(url, host)
        if body and marker in body:
            return
        time.sleep(0.01)
    raise SystemExit(f"{marker!r} never appeared at {url}")


def change(src: Path, marker: str) -> None:
    app = src / "app.py"
    text = app.read_text()
    start = text.index('os.environ.get("GREETING", "') + len('os.environ.get("GREETING", "')
    end = text.index('"', start)
    app.write_text(text[:start] + marker + text[end:])


def raw_build(src: Path) -> str:
    """`docker build` of the source, as a user would run it; the image id."""
    cmd = ["docker", "build", "-q", "-t", "lbsolo-bench-raw", str(src)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    work = Path(tempfile.mkdtemp(prefix="lbsolo-bench-"))
    src = work / "hello"
    shutil.copytree(ROOT / "examples" / "hello", src)
    env = {
        **os.environ,
        "LBSOLO_HOME": str(work / "home"),
        "LBSOLO_API_PORT": str(free_port()),
        "LBSOLO_PROXY_PORT": str(proxy := free_port()),
        "LBSOLO_DNS_PORT": str(free_port()),
    }
    lbsolo = [sys.executable, "-m", "lbsolo"]
    daemon = subprocess.Popen([*lbsolo, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours, raw = [], []
    raw_images: list[str] = []
    # The classic builder keys COPY's cache on the file's content: a marker seen in an earlier run
    # would be a cache hit, not a build of a change. A per-run nonce keeps every change new.
    nonce = secrets.token_hex(3)
    try:
        while get(f"http://127.0.0.1:{env['LBSOLO_API_PORT']}/healthz") is None:
            time.sleep(0.05)
        subprocess.run([*lbsolo, "apps:create", "bench"], env=env, check=True, capture_output=True)
        subprocess.run([*lbsolo, "deploy", str(src), "--app", "bench"], env=env, check=True, capture_output=True)
        raw_images.append(raw_build(src))
        for i in range(rounds):
            marker = f"Ours{i}-{nonce}"
            change(src, marker)
            t0 = time.monotonic()
            output = work / f"deploy-{i}.log"
            with output.open("wb") as out:
                deploy = [*lbsolo, "deploy", str(src), "--app", "bench"]
                proc = subprocess.Popen(deploy, env=env, stdout=out, stderr=out)
            try:
                wait_for(marker, f"http://127.0.0.1:{proxy}/", "bench.lbsolo.localhost")
            except SystemExit:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
                print(output.read_text(errors="replace"), file=sys.stderr)  # what the deploy said
                raise
            ours.append(time.monotonic() - t0)
            proc.wait()

            marker = f"Raw{i}-{nonce}"
            change(src, marker)
            t0 = time.monotonic()
            raw_images.append(raw_build(src))
            cid = subprocess.run(
                ["docker", "run", "-d", "--label", "lbsolo.bench=1", "-p", "127.0.0.1::5000", "lbsolo-bench-raw"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            port = (
                subprocess.run(["docker", "port", cid, "5000/tcp"], check=True, capture_output=True, text=True)
                .stdout.split(":")[-1]
                .strip()
            )
            wait_for(marker, f"http://127.0.0.1:{port}/")
            raw.append(time.monotonic() - t0)
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    finally:
        subprocess.run([*lbsolo, "destroy", "bench", "--images", "--yes"], env=env, capture_output=True)
        daemon.terminate()
        daemon.wait(timeout=30)
        subprocess.run(["docker", "rmi", "-f", "lbsolo-bench-raw", *raw_images], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    a, b = statistics.median(ours), statistics.median(raw)
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores; {rounds} rounds, medians")
    print(f"lbsolo redeploy -> first 200 of the new release: {a:.2f} s  ({', '.join(f'{x:.2f}' for x in ours)})")
    print(f"raw docker build + run -> first 200:             {b:.2f} s  ({', '.join(f'{x:.2f}' for x in raw)})")
    print(f"ratio lbsolo/raw = {a / b:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
