import tarfile

import pytest

from lbsolo.build_source import is_ignored, pack, parse_ignore
from lbsolo.errors import InvalidInput, TooLarge


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        ("*.pyc", "a.pyc", True),
        ("*.pyc", "sub/a.pyc", False),
        ("**/*.pyc", "sub/deep/a.pyc", True),
        ("**/*.pyc", "a.pyc", True),
        ("node_modules", "node_modules/x/y.js", True),
        ("/build", "build/out", True),
        ("*.md\n!README.md", "README.md", False),
        ("*.md\n!README.md", "CHANGES.md", True),
        ("# comment\n\n", "x", False),
        ("docs/*.txt", "docs/a.txt", True),
        ("docs/*.txt", "docs/sub/a.txt", False),
        ("te?t", "test", True),
        ("[ab].txt", "a.txt", True),
        ("[!ab].txt", "c.txt", True),
    ],
)
def test_dockerignore_rules(patterns, path, ignored):
    assert is_ignored(path, parse_ignore(patterns)) is ignored


def _names(archive):
    with tarfile.open(fileobj=archive) as tar:
        return sorted(m.name for m in tar)


def test_pack_honours_dockerignore_and_skips_git(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text("secret.txt\nlogs\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    (tmp_path / "secret.txt").write_text("x")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.log").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    with pack(tmp_path, 10_000_000) as archive:
        assert _names(archive) == [".dockerignore", "Dockerfile", "app.py"]


def test_pack_requires_a_directory(tmp_path):
    with pytest.raises(InvalidInput, match="not a directory"):
        pack(tmp_path / "nope", 10_000_000)


def test_pack_enforces_the_size_limit(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "big.bin").write_bytes(b"\0" * 200_000)
    with pytest.raises(TooLarge):
        pack(tmp_path, 100_000)


def test_gitignore_is_used_when_there_is_no_dockerignore(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / ".gitignore").write_text("*.log\n/build/\nnode_modules\n!keep.log\n")
    (tmp_path / "a.log").write_text("x")
    (tmp_path / "keep.log").write_text("x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "b.log").write_text("x")
    (tmp_path / "src" / "node_modules").mkdir()
    (tmp_path / "src" / "node_modules" / "m.js").write_text("x")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out").write_text("x")
    (tmp_path / "src" / "build").mkdir()
    (tmp_path / "src" / "build" / "kept").write_text("x")
    with pack(tmp_path, 10_000_000) as archive:
        names = [n for n in _names(archive) if "." in n or "/" in n]
    assert "a.log" not in names and "src/b.log" not in names and "src/node_modules/m.js" not in names
    assert "build/out" not in names
    assert "keep.log" in names and "src/build/kept" in names and ".gitignore" in names
