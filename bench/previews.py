"""Preview benchmark: a signed pull request webhook -> the preview's first 200 through the proxy at
APP-pr-N, for a one-line change of examples/hello on a pull ref of a local bare repository, against
a raw `git fetch` of the same ref + `docker build` + `docker run` + first 200, in the same run; and
the close webhook -> the preview gone (its containers, images, volumes and route removed).

Usage: .venv/bin/python bench/previews.py [rounds]   (needs a Docker engine and the seeded images)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy import ROOT, change, free_port, get, wait_for


def git(cwd: Path, *args: str) -> str:
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(cwd), "PATH": "/usr/bin:/bin"}
    identity = ["-c", "user.name=b", "-c", "user.email=b@b", "-c", "init.defaultBranch=main"]
    return subprocess.run(["git", *identity, *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def hook(api: str, secret: str, action: str, number: int, head: str) -> None:
    payload = {"action": action, "number": number,
               "pull_request": {"head": {"sha": head}, "base": {"repo": {"full_name": "bench/shop"}}}}  # fmt: skip
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": signature, "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(f"{api}/hooks/shop", body, headers), timeout=30) as r:
        assert r.status == 202, r.read()


def previews(api: str, token_file: Path) -> list[dict]:
    request = urllib.request.Request(
        f"{api}/api/apps/shop/previews", headers={"Authorization": f"Bearer {token_file.read_text().strip()}"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return list(json.load(r)["previews"])


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    work = Path(tempfile.mkdtemp(prefix="lbsolo-bench-"))
    src, bare = work / "hello", work / "bench" / "shop.git"
    shutil.copytree(ROOT / "examples" / "hello", src)
    git(src, "init", "-q")
    git(src, "add", ".")
    git(src, "commit", "-qm", "main")
    git(work, "clone", "-q", "--bare", str(src), str(bare))
    env = {
        **os.environ,
        "LBSOLO_HOME": str(work / "home"),
        "LBSOLO_API_PORT": str(api_port := free_port()),
        "LBSOLO_PROXY_PORT": str(proxy := free_port()),
        "LBSOLO_DNS_PORT": str(free_port()),
        "LBSOLO_GIT_ALLOW_LOCAL": "1",
    }
    api = f"http://127.0.0.1:{api_port}"
    lbsolo = [sys.executable, "-m", "lbsolo"]
    daemon = subprocess.Popen([*lbsolo, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours, raw, gone = [], [], []
    raw_images: list[str] = []
    nonce = secrets.token_hex(3)  # every change new to the build cache, as in bench/deploy.py
    try:
        while get(f"{api}/healthz") is None:
            time.sleep(0.05)
        subprocess.run([*lbsolo, "apps:create", "shop"], env=env, check=True, capture_output=True)
        out = subprocess.run([*lbsolo, "hooks:url", "shop", "--repo", str(bare)], env=env, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        secret = out.split("secret:")[1].split()[0]
        subprocess.run([*lbsolo, "previews:settings", "shop", "--enable"], env=env, check=True, capture_output=True)
        for i in range(1, rounds + 1):
            marker = f"Preview{i}-{nonce}"
            git(src, "checkout", "-q", "-B", f"pr{i}", "main")
            change(src, marker)
            git(src, "commit", "-qam", marker)
            git(src, "push", "-q", str(bare), f"pr{i}:refs/pull/{i}/head")
            head = git(src, "rev-parse", "HEAD")
            t0 = time.monotonic()
            hook(api, secret, "opened", i, head)
            wait_for(marker, f"http://127.0.0.1:{proxy}/", f"shop-pr-{i}.lbsolo.localhost")
            ours.append(time.monotonic() - t0)
            t0 = time.monotonic()
            hook(api, secret, "closed", i, head)
            while previews(api, work / "home" / "token"):  # containers, images, volumes, route: all gone
                time.sleep(0.01)
            gone.append(time.monotonic() - t0)

            marker = f"Raw{i}-{nonce}"
            git(src, "checkout", "-q", "-B", f"raw{i}", "main")
            change(src, marker)
            git(src, "commit", "-qam", marker)
            git(src, "push", "-q", str(bare), f"raw{i}:refs/pull/{100 + i}/head")
            t0 = time.monotonic()
            fetched = work / f"raw{i}"
            git(work, "init", "-q", str(fetched))
            git(fetched, "fetch", "-q", "--depth", "1", f"file://{bare}", f"refs/pull/{100 + i}/head")
            git(fetched, "checkout", "-q", "FETCH_HEAD")
            cmd = ["docker", "build", "-q", "-t", "lbsolo-bench-raw", str(fetched)]
            raw_images.append(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())
            cid = subprocess.run(
                ["docker", "run", "-d", "--label", "lbsolo.bench=1", "-p", "127.0.0.1::5000", "lbsolo-bench-raw"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            port = subprocess.run(["docker", "port", cid, "5000/tcp"], check=True, capture_output=True,
                                  text=True).stdout.split(":")[-1].strip()  # fmt: skip
            wait_for(marker, f"http://127.0.0.1:{port}/")
            raw.append(time.monotonic() - t0)
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    finally:
        subprocess.run([*lbsolo, "destroy", "shop", "--images", "--yes"], env=env, capture_output=True)
        daemon.terminate()
        daemon.wait(timeout=30)
        subprocess.run(["docker", "rmi", "-f", "lbsolo-bench-raw", *raw_images], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    a, b, c = statistics.median(ours), statistics.median(raw), statistics.median(gone)
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores; {rounds} rounds, medians")
    print(f"pull request webhook -> preview's first 200: {a:.2f} s  ({', '.join(f'{x:.2f}' for x in ours)})")
    print(f"raw git fetch + docker build + run -> 200:   {b:.2f} s  ({', '.join(f'{x:.2f}' for x in raw)})")
    print(f"ratio lbsolo/raw = {a / b:.2f}")
    print(f"close webhook -> preview removed:            {c:.2f} s  ({', '.join(f'{x:.2f}' for x in gone)})")


if __name__ == "__main__":
    main()
