"""The builder on the real engine: git push, apps without a Dockerfile, image reuse, the test
phase, build limits, hostile uploads, watch mode and image retention."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import shutil
import signal
import subprocess
import tarfile
import time

import docker.errors
import httpx
import pytest

from .conftest import EXAMPLES, running_daemon

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def daemon(docker_client, tmp_path_factory):
    with running_daemon(
        docker_client,
        tmp_path_factory.mktemp("builder") / "home",
        {
            "LBSOLO_DEPLOY_TIMEOUT": "15",
            "LBSOLO_BUILD_TIMEOUT": "12",
            "LBSOLO_BUILD_MEMORY": "128m",
            "LBSOLO_MAX_UPLOAD_BYTES": "2000000",
        },
    ) as d:
        yield d


def git(cwd, *args):
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_TERMINAL_PROMPT": "0"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_git_push_deploys_and_a_second_push_rolls_out_v2(daemon, tmp_path):
    assert daemon.cli("apps:create", "pushed").returncode == 0
    remote = daemon.cli("git:remote", "pushed")
    assert remote.returncode == 0, remote.stderr
    url = remote.stdout.split("git remote add lbsolo ")[1].split()[0]
    src = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "hello", src)
    assert git(src, "init", "-q", "-b", "main").returncode == 0
    git(src, "add", ".")
    git(src, "commit", "-qm", "one")
    push = git(src, "push", url, "main")
    assert push.returncode == 0, push.stderr
    assert "remote: -----> Building pushed" in push.stderr
    assert "release=v1" in daemon.get("pushed").text

    app = src / "app.py"
    app.write_text(app.read_text().replace('"GREETING", "Hello"', '"GREETING", "Pushed"'))
    git(src, "commit", "-qam", "two")
    push = git(src, "push", url, "main")
    assert push.returncode == 0, push.stderr
    r = daemon.get("pushed")
    assert r.text.startswith("Pushed from lbsolo!") and "release=v2" in r.text

    wrong = url.replace(daemon.token, "not-the-token")
    assert git(src, "push", wrong, "main").returncode != 0


@pytest.mark.parametrize(
    ("example", "expected"),
    [("python-procfile", "python-procfile"), ("static", "lbsolo static example"), ("node", "lbsolo node example")],
)
def test_examples_without_dockerfile_deploy_and_answer(daemon, example, expected):
    assert daemon.cli("apps:create", example).returncode == 0
    out = daemon.cli("deploy", str(EXAMPLES / example), "--app", example)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No Dockerfile: detected" in out.stdout
    r = daemon.get(example)
    assert r.status_code == 200 and expected in r.text


def test_worker_process_runs_without_a_route(daemon, docker_client):
    out = daemon.cli("scale", "python-procfile", "worker=1")
    assert out.returncode == 0, out.stderr
    workers = docker_client.containers.list(
        filters={"label": [f"lbsolo.instance={daemon.instance}", "lbsolo.app=python-procfile", "lbsolo.process=worker"]}
    )
    assert len(workers) == 1 and all(b is None for b in workers[0].ports.values())  # exposed, never published


def test_export_k8s_writes_valid_manifests_of_the_running_release(daemon, tmp_path):
    """`lbsolo export k8s` of the Procfile app (web and worker) as the daemon runs it: files that the
    pinned Kubernetes version's schemas accept, its secret only in the Secret (0600)."""
    import kubernetes_validate
    import yaml

    from lbsolo.export_k8s import KUBERNETES_VERSION

    assert daemon.cli("config:set", "python-procfile", "SHOP_PASSWORD=s3cret-value", "GREETING=Hi").returncode == 0
    out = daemon.cli("export", "k8s", "python-procfile", "--out", str(tmp_path / "k8s"), "--registry", "reg.example/t")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "docker push reg.example/t/python-procfile:v" in " ".join(out.stdout.split())
    files = sorted((tmp_path / "k8s").glob("*.yaml"))
    objs = [yaml.safe_load(f.read_text()) for f in files]
    assert sorted(o["kind"] for o in objs) == ["ConfigMap", "Deployment", "Deployment", "Ingress", "Secret", "Service"]
    for o in objs:
        kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
    secret = next(f for f in files if "-secret-" in f.name)
    assert secret.stat().st_mode & 0o777 == 0o600 and "s3cret-value" in secret.read_text()
    assert not any("s3cret-value" in f.read_text() for f in files if f != secret)
    streamed = daemon.cli("export", "k8s", "python-procfile")
    assert streamed.returncode == 0 and len(list(yaml.safe_load_all(streamed.stdout))) == 6
    bad = daemon.cli("export", "k8s", "python-procfile", "--volume-size", "lots")
    assert bad.returncode != 0 and "invalid volume size" in bad.stdout + bad.stderr


def test_detect_prints_the_generated_dockerfile(daemon):
    out = daemon.cli("detect", str(EXAMPLES / "static"))
    assert out.returncode == 0 and "FROM busybox" in out.stdout


def test_identical_source_reuses_the_image(daemon):
    out = daemon.cli("deploy", str(EXAMPLES / "static"), "--app", "static")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "re-using its image" in out.stdout and "Step 1" not in out.stdout


def test_failing_test_phase_stops_the_deploy(daemon, tmp_path):
    src = tmp_path / "tested"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "Procfile").write_text("web: python app.py\ntest: echo running tests && exit 1\n")
    out = daemon.cli("deploy", str(src), "--app", "pushed")
    assert out.returncode == 1
    assert "running tests" in out.stdout and "test phase failed" in out.stderr
    assert "release=v2" in daemon.get("pushed").text
    builds = daemon.cli("builds:logs", "pushed")
    assert "running tests" in builds.stdout


def test_build_over_its_time_or_memory_fails_clearly_and_v2_keeps_serving(daemon, tmp_path):
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "Dockerfile").write_text("FROM python:3.12-slim\nRUN sleep 40\n")
    t0 = time.monotonic()
    out = daemon.cli("deploy", str(slow), "--app", "pushed")
    assert out.returncode == 1 and "timed out" in out.stderr
    assert time.monotonic() - t0 < 35
    hungry = tmp_path / "hungry"
    hungry.mkdir()
    (hungry / "Dockerfile").write_text(
        'FROM python:3.12-slim\nRUN python -c "b = bytearray(400 * 1024 * 1024); print(len(b))"\n'
    )
    out = daemon.cli("deploy", str(hungry), "--app", "pushed")
    assert out.returncode == 1 and "build failed" in out.stderr
    assert "release=v2" in daemon.get("pushed").text
    assert httpx.get(f"{daemon.api}/healthz").status_code == 200


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, linkname in members:
            info = tarfile.TarInfo(name)
            if linkname:
                info.type, info.linkname = tarfile.SYMTYPE, linkname
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    "members",
    [
        [("Dockerfile", b"FROM busybox\n", None), ("../escape", b"x", None)],
        [("Dockerfile", b"FROM busybox\n", None), ("/etc/evil", b"x", None)],
        [("Dockerfile", b"FROM busybox\n", None), ("link", b"", "../../etc/passwd")],
    ],
)
def test_hostile_archives_are_rejected(daemon, members):
    r = httpx.post(
        f"{daemon.api}/api/apps/pushed/deploy",
        content=_tar(members),
        headers={"Authorization": f"Bearer {daemon.token}"},
        timeout=30,
    )
    body = "".join(r.iter_lines()) if r.status_code == 200 else r.text
    assert "unsafe path" in body or "outside the source tree" in body
    assert "release=v2" in daemon.get("pushed").text


def test_oversized_upload_is_refused(daemon, tmp_path):
    def chunks():
        for _ in range(40):
            yield b"\0" * 100_000

    r = httpx.post(  # streamed (chunked): the limit is enforced while reading
        f"{daemon.api}/api/apps/pushed/deploy",
        content=chunks(),
        headers={"Authorization": f"Bearer {daemon.token}"},
        timeout=30,
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    big = tmp_path / "big"
    shutil.copytree(EXAMPLES / "hello", big)
    (big / "blob.bin").write_bytes(b"\0" * 3_000_000)
    out = daemon.cli("deploy", str(big), "--app", "pushed")  # the CLI refuses before uploading
    assert out.returncode == 1 and "over" in out.stderr
    assert "release=v2" in daemon.get("pushed").text


def test_watch_mode_redeploys_on_save(daemon, tmp_path):
    src = tmp_path / "watched"
    shutil.copytree(EXAMPLES / "hello", src)
    assert daemon.cli("apps:create", "watched").returncode == 0
    log = (tmp_path / "watch.log").open("w")
    proc = subprocess.Popen(
        [*daemon.cli_argv("deploy", str(src), "--app", "watched", "--watch")],
        env=daemon.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log.close()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if daemon.get("watched").status_code == 200:
                break
            time.sleep(0.3)
        app = src / "app.py"
        time.sleep(1)
        app.write_text(app.read_text().replace('"GREETING", "Hello"', '"GREETING", "Watched"'))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if daemon.get("watched").text.startswith("Watched from lbsolo!"):
                break
            time.sleep(0.3)
        assert daemon.get("watched").text.startswith("Watched from lbsolo!"), (tmp_path / "watch.log").read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_retention_keeps_the_last_five_releases_images(daemon, docker_client, tmp_path):
    stranger = docker_client.images.get("busybox:latest")
    stranger.tag("lbsolo-test-unlabelled", "keep")
    try:
        assert daemon.cli("apps:create", "kept").returncode == 0
        src = tmp_path / "kept"
        shutil.copytree(EXAMPLES / "static", src)
        for i in range(8):
            (src / "index.html").write_text(f"<p>lbsolo static example {i}</p>\n")
            out = daemon.cli("deploy", str(src), "--app", "kept")
            assert out.returncode == 0, out.stdout + out.stderr
        # Retention runs after each deploy has answered (off the deploy's stream): wait for the last one.
        deadline = time.monotonic() + 60
        while True:
            labels = [f"lbsolo.instance={daemon.instance}", "lbsolo.app=kept"]
            try:
                images = docker_client.images.list(filters={"label": labels})
            except docker.errors.ImageNotFound:  # listed, then removed before docker-py read it
                continue
            if len(images) <= 5 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(images) == 5
        releases = daemon.api_get("/api/apps/kept/releases").json()
        kept_ids = {i.id for i in images}
        assert {r["image"] for r in releases[-5:]} == kept_ids
        assert docker_client.images.get("lbsolo-test-unlabelled:keep").id == stranger.id
        out = daemon.cli("rollback", "kept", "v4")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "example 3" in daemon.get("kept").text
    finally:
        docker_client.images.remove("lbsolo-test-unlabelled:keep")


def test_deploy_from_a_git_url_and_from_a_signed_push_webhook(daemon, tmp_path):
    src = tmp_path / "upstream"
    shutil.copytree(EXAMPLES / "hello", src)
    git(src, "init", "-q", "-b", "main")
    git(src, "add", ".")
    git(src, "commit", "-qm", "one")
    assert daemon.cli("apps:create", "fromgit").returncode == 0
    out = daemon.cli("deploy", "--git", f"{src}#main", "--app", "fromgit")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "release=v1" in daemon.get("fromgit").text

    app = src / "app.py"
    app.write_text(app.read_text().replace('"GREETING", "Hello"', '"GREETING", "Hooked"'))
    git(src, "commit", "-qam", "two")
    commit = git(src, "rev-parse", "HEAD").stdout.strip()
    hook = daemon.cli("hooks:url", "fromgit")
    assert hook.returncode == 0
    url = hook.stdout.split("URL:")[1].split()[0]
    secret = hook.stdout.split("secret:")[1].split()[0]
    body = json.dumps({"ref": "refs/heads/main", "after": commit, "repository": {"clone_url": str(src)}}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "Content-Type": "application/json"}
    bad = httpx.post(url, content=body, headers={**headers, "X-Hub-Signature-256": "sha256=00"}, timeout=30)
    assert bad.status_code == 401
    r = httpx.post(url, content=body, headers={**headers, "X-Hub-Signature-256": signature}, timeout=60)
    assert r.status_code == 202 and r.json()["deploying"], r.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not daemon.get("fromgit").text.startswith("Hooked"):
        time.sleep(0.3)
    assert daemon.get("fromgit").text.startswith("Hooked from lbsolo!")
    assert daemon.cli("deploy", "--git", str(tmp_path / "nope"), "--app", "fromgit").returncode == 1


def test_build_args_reach_the_build_and_builds_can_be_cancelled(daemon, tmp_path):
    src = tmp_path / "args"
    shutil.copytree(EXAMPLES / "hello", src)
    dockerfile = src / "Dockerfile"
    dockerfile.write_text(
        dockerfile.read_text().replace("WORKDIR /app\n", "WORKDIR /app\nARG FLAVOUR\nRUN echo $FLAVOUR > /flavour\n")
    )
    assert daemon.cli("apps:create", "args").returncode == 0
    out = daemon.cli("deploy", str(src), "--app", "args", "--build-arg", "FLAVOUR=vanilla")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "vanilla" in daemon.cli("run", "args", "--", "cat /flavour").stdout

    slow = tmp_path / "slow-build"
    shutil.copytree(src, slow)
    (slow / "Dockerfile").write_text("FROM python:3.12-slim\nRUN echo start && sleep 6 && echo more\nRUN echo done\n")
    log = (tmp_path / "deploy.log").open("w")
    proc = subprocess.Popen(
        daemon.cli_argv("deploy", str(slow), "--app", "args"), env=daemon.env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            builds = daemon.api_get("/api/apps/args/builds").json()
            if builds and builds[-1]["status"] == "running":
                break
            time.sleep(0.2)
        out = daemon.cli("builds:cancel", "args")
        assert out.returncode == 0 and "cancelled:" in out.stdout and "nothing" not in out.stdout
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "cancelled" in (tmp_path / "deploy.log").read_text()
    assert daemon.get("args").status_code == 200
