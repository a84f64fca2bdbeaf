import io
import tarfile

import pytest

from lbsolo.build import check_context
from lbsolo.errors import InvalidInput


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
    check_context(
        _tar(tmp_path, [("Dockerfile", "file", "FROM x"), ("src/a.py", "file", ""), ("l", "sym", "src/a.py")])
    )


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
