import os
from pathlib import Path

import pytest

from lbsolo.build_detect import (
    DEFAULT_BASE_IMAGES,
    LOOKED_FOR,
    Kind,
    container_command,
    detect,
    exec_command,
    parse_procfile,
)
from lbsolo.errors import InvalidInput

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _cmd(dockerfile: str) -> str | None:
    lines = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    assert len(lines) <= 1
    return lines[0].removeprefix("CMD ") if lines else None


# ------------------------------------------------------------------ order


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        ({"Dockerfile": "FROM x\n", "requirements.txt": "", "package.json": "{}", "index.html": ""}, Kind.DOCKERFILE),
        ({"requirements.txt": "", "app.py": "", "package.json": "{}", "index.html": ""}, Kind.PYTHON),
        ({"pyproject.toml": "", "main.py": "", "package.json": "{}"}, Kind.PYTHON),
        ({"package.json": '{"scripts": {"start": "node s.js"}}', "index.html": ""}, Kind.NODE),
        ({"index.html": "<h1>hi</h1>"}, Kind.STATIC),
    ],
)
def test_detection_order(tmp_path, files, kind):
    detection = detect(_tree(tmp_path, files))
    assert detection.kind == kind
    assert detection.kind == kind.value  # a plain string to callers that want one


def test_the_dockerfile_wins_as_is_and_the_others_are_reported_ignored(tmp_path):
    text = 'FROM python:3.12-slim\nEXPOSE 8000/tcp\nCMD ["python"]\n'
    detection = detect(_tree(tmp_path, {"Dockerfile": text, "package.json": "{}", "index.html": ""}))
    assert detection.dockerfile == text
    assert detection.port_hint == 8000
    assert detection.processes == {}
    assert detection.reasons == [
        "Dockerfile: built as is",
        "package.json: ignored, Dockerfile comes first",
        "index.html: ignored, Dockerfile comes first",
    ]


@pytest.mark.parametrize(
    ("text", "port"), [("FROM x\n", None), ("FROM x\nENV PORT=8080\n", 8080), ("FROM x\nexpose 3000\n", 3000)]
)
def test_port_hint_of_a_dockerfile(tmp_path, text, port):
    assert detect(_tree(tmp_path, {"Dockerfile": text})).port_hint == port


def test_nothing_found_lists_what_was_looked_for(tmp_path):
    _tree(tmp_path, {"README.md": "hi", "src/index.html": ""})
    with pytest.raises(InvalidInput) as e:
        detect(tmp_path)
    for name in ("Dockerfile", "requirements.txt", "pyproject.toml", "package.json", "index.html"):
        assert name in e.value.message
    assert LOOKED_FOR == ("Dockerfile", "requirements.txt", "pyproject.toml", "package.json", "index.html")


def test_missing_directory(tmp_path):
    with pytest.raises(InvalidInput, match="not found"):
        detect(tmp_path / "nope")


def test_a_link_out_of_the_tree_is_not_read(tmp_path):
    outside = _tree(tmp_path / "outside", {"Dockerfile": "FROM secret\n"})
    root = _tree(tmp_path / "src", {"index.html": ""})
    (root / "Dockerfile").symlink_to(outside / "Dockerfile")
    assert detect(root).kind == Kind.STATIC


def test_a_procfile_is_read_for_a_dockerfile_app_too(tmp_path):
    detection = detect(_tree(tmp_path, {"Dockerfile": "FROM x\n", "Procfile": "worker: python w.py\n"}))
    assert detection.processes == {"worker": "python w.py"}


# ------------------------------------------------------------------ Procfile


def test_procfile_parsing_is_forgiving_about_layout():
    text = (
        "\ufeff# processes\r\n\r\nweb:   gunicorn --bind 0.0.0.0:$PORT app:app  \r\n"
        "  # indented comment\n\tworker:python w.py\nrelease: ./migrate\ntest: pytest -q\n"
    )
    assert parse_procfile(text) == {
        "web": "gunicorn --bind 0.0.0.0:$PORT app:app",
        "worker": "python w.py",
        "release": "./migrate",
        "test": "pytest -q",
    }
    assert parse_procfile("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("web python app.py\n", "line 1: expected 'name: command'"),
        ("web: a\nmy web: b\n", "line 2: invalid process name 'my web'"),
        ("-web: a\n", "invalid process name"),
        (f"{'w' * 64}: a\n", "invalid process name"),
        (": a\n", "invalid process name ''"),
        ("web: a\n\nweb: b\n", "line 3: process 'web' is defined twice"),
        ("web:\n", "process 'web' has no command"),
    ],
)
def test_procfile_errors_name_the_line(text, message):
    with pytest.raises(InvalidInput, match=message):
        parse_procfile(text)


def test_a_broken_procfile_fails_detection(tmp_path):
    with pytest.raises(InvalidInput, match="Procfile line 1"):
        detect(_tree(tmp_path, {"index.html": "", "Procfile": "oops\n"}))


# ------------------------------------------------------------------ commands


@pytest.mark.parametrize(
    ("command", "line"),
    [
        ("python app.py", "exec python app.py"),
        ("gunicorn --bind 0.0.0.0:$PORT app:app", "exec gunicorn --bind 0.0.0.0:$PORT app:app"),
        ("node server.js > /dev/null", "node server.js > /dev/null"),
        ("./migrate && python app.py", "./migrate && python app.py"),
        ("a | b", "a | b"),
        ("a; b", "a; b"),
        ('python -c "import a; a.run()"', 'exec python -c "import a; a.run()"'),  # quoted: one command
        ("FOO=1 python app.py", "FOO=1 python app.py"),
        ("exec python app.py", "exec python app.py"),
        ("cd web && npm start", "cd web && npm start"),
        ("echo 'unbalanced", "echo 'unbalanced"),
    ],
)
def test_exec_is_added_only_to_simple_commands(command, line):
    assert exec_command(command) == line


def test_container_command():
    assert container_command("python worker.py") == ["/bin/sh", "-c", "exec python worker.py"]
    with pytest.raises(InvalidInput, match="one line"):
        exec_command("a\nb")


# ------------------------------------------------------------------ Python


FLASK = "from flask import Flask\n\napp = Flask(__name__)\n"
FASTAPI = "from fastapi import FastAPI\n\napp: FastAPI = FastAPI()\n"


@pytest.mark.parametrize(
    ("files", "cmd"),
    [
        ({"requirements.txt": "Flask\ngunicorn==22.0\n", "app.py": FLASK}, "gunicorn --bind 0.0.0.0:$PORT app:app"),
        (
            {
                "requirements.txt": "GUNICORN[gevent] >= 21 ; python_version > '3'\n",
                "wsgi.py": "application = make()\n",
            },
            "gunicorn --bind 0.0.0.0:$PORT wsgi:application",
        ),
        (
            {"requirements.txt": "fastapi\nuvicorn[standard]\n", "main.py": FASTAPI},
            "uvicorn main:app --host 0.0.0.0 --port $PORT",
        ),
        (
            {"requirements.txt": "uvicorn\n", "app.py": "async def app(scope, receive, send):\n    ...\n"},
            "uvicorn app:app --host 0.0.0.0 --port $PORT",
        ),
        (
            {
                "pyproject.toml": '[project]\nname = "x"\ndependencies = ["uvicorn>=0.29", "fastapi"]\n',
                "main.py": FASTAPI,
            },
            "uvicorn main:app --host 0.0.0.0 --port $PORT",
        ),
        # An ASGI app with only gunicorn installed: gunicorn cannot serve it alone.
        ({"requirements.txt": "gunicorn\n", "main.py": FASTAPI}, "python main.py"),
        # A dependency mentioned only in a comment does not count.
        ({"requirements.txt": "flask  # not gunicorn\n# gunicorn\n", "app.py": FLASK}, "python app.py"),
        ({"requirements.txt": "", "main.py": "print('hi')\n"}, "python main.py"),
        (
            {"requirements.txt": "gunicorn\n", "app.py": FLASK, "Procfile": "web: python app.py --port $PORT\n"},
            "python app.py --port $PORT",
        ),
    ],
)
def test_python_web_command(tmp_path, files, cmd):
    detection = detect(_tree(tmp_path, files))
    assert detection.kind == Kind.PYTHON
    assert detection.processes["web"] == cmd
    assert _cmd(detection.dockerfile) == exec_command(cmd)
    assert detection.port_hint == 5000


def test_python_installs_requirements_before_copying_the_code(tmp_path):
    text = detect(_tree(tmp_path, {"requirements.txt": "", "app.py": ""})).dockerfile
    lines = text.splitlines()
    assert lines.index("COPY requirements.txt ./") < lines.index("RUN pip install -r requirements.txt")
    assert lines.index("RUN pip install -r requirements.txt") < lines.index("COPY --chown=app:app . .")
    for needed in ("FROM python:3.12-slim", "ARG PIP_INDEX_URL", "ARG PIP_TRUSTED_HOST", "PORT=5000", "USER app"):
        assert needed in text


def test_python_from_pyproject_installs_the_project(tmp_path):
    text = detect(_tree(tmp_path, {"pyproject.toml": "[project]\nname = 'x'\n", "app.py": ""})).dockerfile
    assert "RUN pip install .\n" in text
    assert "requirements.txt" not in text


def test_python_with_only_a_worker_has_no_web_and_no_cmd(tmp_path):
    detection = detect(_tree(tmp_path, {"requirements.txt": "", "Procfile": "worker: python w.py\n"}))
    assert detection.processes == {"worker": "python w.py"}
    assert _cmd(detection.dockerfile) is None


def test_python_without_a_way_to_start(tmp_path):
    with pytest.raises(InvalidInput, match="Procfile with a 'web:' line"):
        detect(_tree(tmp_path, {"requirements.txt": "flask\n", "lib.py": ""}))


def test_broken_pyproject(tmp_path):
    with pytest.raises(InvalidInput, match="not valid TOML"):
        detect(_tree(tmp_path, {"pyproject.toml": "[project\n", "app.py": ""}))


# ------------------------------------------------------------------ Node


@pytest.mark.parametrize(
    ("files", "cmd"),
    [
        ({"package.json": '{"scripts": {"start": "next start -p $PORT"}}'}, "next start -p $PORT"),
        ({"package.json": '{"scripts": {"prestart": "x", "start": "node s.js"}}'}, "npm start"),
        ({"package.json": '{"main": "lib/app.js"}', "lib/app.js": ""}, "node lib/app.js"),
        ({"package.json": '{"main": "missing.js"}', "server.js": ""}, "node server.js"),
        ({"package.json": "{}", "index.js": ""}, "node index.js"),
        ({"package.json": "{}", "Procfile": "web: node web.js\n"}, "node web.js"),
    ],
)
def test_node_web_command(tmp_path, files, cmd):
    detection = detect(_tree(tmp_path, files))
    assert detection.kind == Kind.NODE
    assert detection.processes["web"] == cmd
    assert _cmd(detection.dockerfile) == exec_command(cmd)


def test_node_uses_npm_ci_with_a_lockfile(tmp_path):
    files = {"package.json": '{"scripts": {"start": "node s.js"}}', "package-lock.json": "{}"}
    text = detect(_tree(tmp_path, files)).dockerfile
    assert "COPY --chown=node:node package.json package-lock.json ./\n" in text
    assert "RUN npm ci --omit=dev" in text
    assert "ARG NPM_CONFIG_REGISTRY\n" in text


def test_node_without_a_lockfile_uses_npm_install_and_runs_a_build_script(tmp_path):
    files = {"package.json": '{"scripts": {"build": "tsc", "start": "node dist/s.js"}}'}
    lines = detect(_tree(tmp_path, files)).dockerfile.splitlines()
    assert "COPY --chown=node:node package.json ./" in lines
    install = lines.index("RUN npm install --include=dev && npm cache clean --force")
    assert (
        install < lines.index("COPY --chown=node:node . .") < lines.index("RUN npm run build && npm prune --omit=dev")
    )


@pytest.mark.parametrize(
    ("package", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"scripts": {"start": 1}}', "'scripts'"),
        ("{}", "'start' script"),
        ('{"scripts": {"start": "node a.js\\nrm -rf /"}}', "one line"),
    ],
)
def test_node_errors(tmp_path, package, message):
    with pytest.raises(InvalidInput, match=message):
        detect(_tree(tmp_path, {"package.json": package}))


# ------------------------------------------------------------------ static and base images


def test_static_site_is_served_by_busybox_httpd_on_port(tmp_path):
    detection = detect(_tree(tmp_path, {"index.html": "<h1>hi</h1>"}))
    web = "httpd -f -v -p $PORT -h /site & trap 'kill $!' TERM INT; wait"
    assert detection.processes == {"web": web}
    assert _cmd(detection.dockerfile) == web
    assert "FROM busybox:latest\n" in detection.dockerfile


def test_base_images_can_be_overridden(tmp_path):
    _tree(tmp_path, {"package.json": "{}", "server.js": ""})
    assert "FROM node:22-alpine\n" in detect(tmp_path, {"node": "node:22-alpine"}).dockerfile
    assert (
        "FROM registry.local:5000/py@sha256:ab\n"
        in detect(
            _tree(tmp_path / "py", {"requirements.txt": "", "app.py": ""}),
            {"python": "registry.local:5000/py@sha256:ab"},
        ).dockerfile
    )
    assert dict(DEFAULT_BASE_IMAGES) == {
        "python": "python:3.12-slim",
        "node": "node:20-slim",
        "static": "busybox:latest",
    }


@pytest.mark.parametrize(
    ("images", "message"),
    [({"ruby": "ruby:3"}, "unknown base image kind 'ruby'"), ({"node": "node:20\nRUN evil"}, "not an image reference")],
)
def test_bad_base_images(tmp_path, images, message):
    with pytest.raises(InvalidInput, match=message):
        detect(_tree(tmp_path, {"index.html": ""}), images)


# ------------------------------------------------------------------ examples (snapshots)


@pytest.mark.parametrize("example", ["python-procfile", "static", "node"])
def test_example_dockerfile_snapshot(example):
    """The generated Dockerfile of each example; LBSOLO_UPDATE_SNAPSHOTS=1 rewrites the files."""
    text = detect(EXAMPLES / example).dockerfile
    snapshot = SNAPSHOTS / f"{example}.Dockerfile"
    if os.environ.get("LBSOLO_UPDATE_SNAPSHOTS") == "1" or not snapshot.exists():
        if not snapshot.exists() and os.environ.get("CI") == "true":
            pytest.fail(f"snapshot {snapshot.name} is missing: run with LBSOLO_UPDATE_SNAPSHOTS=1 and commit it")
        snapshot.parent.mkdir(exist_ok=True)
        snapshot.write_text(text)
    assert text == snapshot.read_text(), f"{example}: Dockerfile changed; LBSOLO_UPDATE_SNAPSHOTS=1 to accept"


def test_example_processes():
    assert detect(EXAMPLES / "python-procfile").processes == {"web": "python app.py", "worker": "python worker.py"}
    assert detect(EXAMPLES / "node").processes == {"web": "node server.js"}
    assert detect(EXAMPLES / "static").kind == Kind.STATIC
