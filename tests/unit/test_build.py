import io
import tarfile

import pytest

from lbsolo.build import SourceSpec, check_context, label_context, label_dockerfile, reusable_images
from lbsolo.errors import InvalidInput
from lbsolo.models import Build, BuildStatus


def _tar(tmp_path, members):
    path = tmp_path / "ctx.tar"
    with tarfile.open(path, "w") as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = extra.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
                tar.addfile(info)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
    return path


def test_accepts_a_plain_context(tmp_path):
    spec, has_dockerfile = check_context(
        _tar(tmp_path, [("Dockerfile", "file", "FROM x"), ("src/a.py", "file", ""), ("l", "sym", "src/a.py")])
    )
    assert has_dockerfile and spec == SourceSpec()  # a Dockerfile, and no Procfile or lbsolo.toml to read
    spec, has_dockerfile = check_context(
        _tar(tmp_path, [("Procfile", "file", "web: python app.py\nworker: python w.py\n"), ("app.py", "file", "")])
    )
    assert not has_dockerfile and spec.processes == {"web": "python app.py", "worker": "python w.py"}


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("Dockerfile", "file", "FROM x"), ("/etc/passwd", "file", "")], "unsafe path"),
        ([("Dockerfile", "file", "FROM x"), ("../up", "file", "")], "unsafe path"),
        ([("Dockerfile", "file", "FROM x"), ("a/../../up", "file", "")], "unsafe path"),
        ([("Dockerfile", "file", "FROM x"), ("l", "sym", "/etc/passwd")], "outside"),
        ([("Dockerfile", "file", "FROM x"), ("d/l", "sym", "../../x")], "outside"),
        ([("Dockerfile", "file", "FROM x"), ("p", "fifo", "")], "unsupported"),
    ],
)
def test_rejects_hostile_or_incomplete_contexts(tmp_path, members, message):
    with pytest.raises(InvalidInput, match=message):
        check_context(_tar(tmp_path, members))


def test_rejects_non_tar(tmp_path):
    path = tmp_path / "x.tar"
    path.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(InvalidInput):
        check_context(path)


def test_lbsolo_toml_build_section(tmp_path):
    toml = (
        '[build]\nbase_images = { python = "python:3.11-slim" }\n'
        'args = { PIP_INDEX_URL = "http://127.0.0.1:1/simple" }\n'
    )
    spec, _ = check_context(_tar(tmp_path, [("Dockerfile", "file", "FROM x"), ("lbsolo.toml", "file", toml)]))
    assert spec.base_images == {"python": "python:3.11-slim"}
    assert spec.build_args == {"PIP_INDEX_URL": "http://127.0.0.1:1/simple"}


LABELS = {"lbsolo.app": "hello", "lbsolo.managed": "true"}
LABEL_LINE = 'LABEL lbsolo.app="hello" lbsolo.managed="true"'


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        # right after FROM, before the steps that change from build to build, so the step is cached
        ('FROM python:3.12-slim\nCOPY app.py .\nCMD ["python"]\n', ["FROM python:3.12-slim", LABEL_LINE, "COPY"]),
        # only the last stage's image is run: the labels go there
        (
            "FROM node AS assets\nRUN build\nfrom python AS final\nCOPY --from=assets /a /a\n",
            ["FROM node AS assets", "RUN build", "from python AS final", LABEL_LINE, "COPY"],
        ),
        # a FROM continued over lines (with a comment inside) ends where its last line ends
        (
            "FROM \\\n# the base\n  python:3.12 \\\n  AS app\nRUN x\n",
            ["FROM \\", "# the base", "  python", "  AS app", LABEL_LINE],
        ),
        # the escape directive changes the continuation character
        ("# escape=`\nFROM `\n  python\nRUN a \\\n", ["# escape=`", "FROM `", "  python", LABEL_LINE, "RUN a"]),
        # comments and arguments before FROM, CRLF line ends
        (
            "# syntax comment\r\nARG V=3\r\nFROM python:$V\r\nRUN x\r\n",
            ["# syntax", "ARG V=3", "FROM python:$V", LABEL_LINE],
        ),
        # no FROM: appended (the engine rejects such a Dockerfile anyway)
        ("RUN x", ["RUN x", LABEL_LINE]),
    ],
)
def test_labels_go_right_after_the_last_from(dockerfile, expected):
    lines = label_dockerfile(dockerfile, LABELS).splitlines()
    assert len(lines) == len(dockerfile.splitlines()) + 1
    assert [line[: len(want)] for line, want in zip(lines, expected, strict=False)] == expected
    assert lines.count(LABEL_LINE) == 1


def test_label_context_rewrites_the_dockerfile_in_the_archive(tmp_path):
    path = _tar(tmp_path, [("Dockerfile", "file", "FROM x\nCOPY . .\n"), ("a.py", "file", "")])
    label_context(path, LABELS)
    with tarfile.open(path) as tar:
        f = tar.extractfile("Dockerfile")  # the last entry of a name wins, for the engine too
        assert f is not None and f.read().decode() == f"FROM x\n{LABEL_LINE}\nCOPY . .\n"


def test_reusable_images_are_successful_builds_of_the_same_source_newest_first():
    builds = [
        Build(id="a", app="x", status=BuildStatus.SUCCEEDED, image="sha256:old", created_at=1, source="s1"),
        Build(id="b", app="x", status=BuildStatus.SUCCEEDED, image="sha256:new", created_at=3, source="s1"),
        Build(id="c", app="x", status=BuildStatus.FAILED, image=None, created_at=4, source="s1"),
        Build(id="d", app="x", status=BuildStatus.SUCCEEDED, image="sha256:other", created_at=5, source="s2"),
        Build(id="e", app="x", status=BuildStatus.SUCCEEDED, image="sha256:legacy", created_at=6),  # before sources
    ]
    assert reusable_images(builds, "s1") == ["sha256:new", "sha256:old"]
    assert reusable_images(builds, "s3") == []


def test_build_records_keep_their_source():
    build = Build(id="a", app="x", source="abc")
    assert Build.from_dict(build.to_dict()) == build
    assert Build.from_dict({"id": "a", "app": "x"}).source is None
