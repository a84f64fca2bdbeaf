"""The whole-platform backup's format: written, read back, and refused when cut, changed or newer."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from lbsolo import platform_archive as pa
from lbsolo.errors import DiskFull

VERSION, SCHEMA = "0.1.0", 2


def _staged(tmp_path: Path) -> list[tuple[pa.Entry, Path]]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "state.json").write_text('{"apps": {}}')
    big = src / "images.tar"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # more than one sealed chunk, not a multiple
    tls = src / "tls"
    (tls / "certs").mkdir(parents=True)
    (tls / "ca.pem").write_text("ca")
    (tls / "certs" / "a.pem").write_text("a")
    assert pa.tar_directory(tls, src / "tls.tar")
    return [
        (pa.file_entry(src / "state.json", "state.json", "state"), src / "state.json"),
        (pa.file_entry(big, "images/images.tar", "images", ids=["sha256:x"]), big),
        (pa.file_entry(src / "tls.tar", "dirs/tls.tar", "dir", dir="tls"), src / "tls.tar"),
    ]


def _archive(tmp_path: Path, **manifest: object) -> bytes:
    out = io.BytesIO()
    m = pa.Manifest(lbsolo=str(manifest.get("lbsolo", VERSION)), schema=int(manifest.get("schema", SCHEMA)),  # type: ignore[call-overload]
                    instance="abc")  # fmt: skip
    pa.write_archive(out, m, _staged(tmp_path))
    return out.getvalue()


def _read(data: bytes, tmp_path: Path, key_for: pa.KeyFor | None = None, **kw: object):
    src = pa.open_source(io.BytesIO(data), key_for or _no_key)
    return pa.read_archive(src, tmp_path / "staging", version=VERSION, schema=SCHEMA, **kw)  # type: ignore[arg-type]


def _no_key(*_: object) -> bytes:
    raise AssertionError("not encrypted")


def test_round_trip_manifest_first_and_checksums(tmp_path: Path) -> None:
    data = _archive(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.getnames()[0] == pa.MANIFEST
        manifest = json.loads(tf.extractfile(pa.MANIFEST).read())  # type: ignore[union-attr]
    assert [e["name"] for e in manifest["entries"]] == ["state.json", "images/images.tar", "dirs/tls.tar"]
    assert manifest["lbsolo"] == VERSION and manifest["schema"] == SCHEMA and manifest["format"] == pa.FORMAT
    m, paths = _read(data, tmp_path)
    assert paths["state.json"].read_text() == '{"apps": {}}'
    assert paths["images/images.tar"].read_bytes() == (tmp_path / "src" / "images.tar").read_bytes()
    assert m.entries[1].meta == {"ids": ["sha256:x"]}
    pa.untar_directory(paths["dirs/tls.tar"], tmp_path / "tls-back")
    assert (tmp_path / "tls-back" / "certs" / "a.pem").read_text() == "a"


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_is_refused(tmp_path: Path, keep: float) -> None:
    data = _archive(tmp_path)
    with pytest.raises(pa.BadBackup, match=r"cut short|does not begin|empty"):
        _read(data[: int(len(data) * keep)], tmp_path)


def test_tampered_entry_is_refused(tmp_path: Path) -> None:
    data = bytearray(_archive(tmp_path))
    where = data.find(b'{"apps": {}}')
    data[where + 2] ^= 0x01
    with pytest.raises(pa.BadBackup, match=r"state\.json.s checksum"):
        _read(bytes(data), tmp_path)


def test_entry_missing_from_manifest_or_reordered_is_refused(tmp_path: Path) -> None:
    staged = _staged(tmp_path)
    out = io.BytesIO()
    m = pa.Manifest(lbsolo=VERSION, schema=SCHEMA, instance="abc", entries=[])
    with tarfile.open(fileobj=out, mode="w|") as tf:
        raw = pa.Manifest(lbsolo=VERSION, schema=SCHEMA, instance="abc", entries=[staged[0][0]]).to_bytes()
        tf.addfile(pa._info(pa.MANIFEST, len(raw), m.created), io.BytesIO(raw))
        for entry, path in staged[:2]:
            with open(path, "rb") as f:
                tf.addfile(pa._info(entry.name, entry.size, m.created), f)
    with pytest.raises(pa.BadBackup, match="not in its manifest"):
        _read(out.getvalue(), tmp_path)


def test_not_a_backup(tmp_path: Path) -> None:
    with pytest.raises(pa.BadBackup):
        _read(b"hello, this is no tar at all" * 40, tmp_path)
    with pytest.raises(pa.BadBackup):
        _read(b"", tmp_path)


@pytest.mark.parametrize(("field", "value"), [("lbsolo", "9.0.0"), ("schema", SCHEMA + 1)])
def test_newer_backup_is_refused(tmp_path: Path, field: str, value: object) -> None:
    data = _archive(tmp_path, **{field: value})
    with pytest.raises(pa.NewerBackup, match="restore it with lbsolo"):
        _read(data, tmp_path)
    assert not list((tmp_path / "staging").iterdir())


def test_not_enough_disk_is_refused_before_staging(tmp_path: Path) -> None:
    data = _archive(tmp_path)
    with pytest.raises(DiskFull, match="not enough disk to restore"):
        _read(data, tmp_path, free=lambda _p: 1000)
    assert not list((tmp_path / "staging").iterdir())


def _sealed(data: bytes, passphrase: str) -> bytes:
    out = io.BytesIO()
    salt = b"s" * 16
    out.write(pa.sealed_header(pa.KDF_SCRYPT, salt))
    sealer = pa.Sealer(out, pa.derive_key(passphrase, salt, 10))
    for i in range(0, len(data), 10_000):
        sealer.write(data[i : i + 10_000])
    sealer.close()
    return out.getvalue()


def _passphrase(p: str) -> pa.KeyFor:
    return lambda kdf, salt, log_n, r, pp: pa.derive_key(p, salt, 10, r, pp)


def test_sealed_round_trip_and_wrong_passphrase(tmp_path: Path) -> None:
    plain = _archive(tmp_path)
    sealed = _sealed(plain, "right horse")
    assert b'"apps"' not in sealed
    _m, paths = _read(sealed, tmp_path, _passphrase("right horse"))
    assert paths["state.json"].read_text() == '{"apps": {}}'
    with pytest.raises(pa.BadBackup, match="wrong passphrase"):
        _read(sealed, tmp_path / "2", _passphrase("wrong horse"))


def test_sealer_matches_encrypt(tmp_path: Path) -> None:
    from lbsolo import addon_backup_crypt as crypt

    key = crypt.generate_key()
    for size in (0, 5, 64, 65, 200):
        data = os.urandom(size)
        out = io.BytesIO()
        s = pa.Sealer(out, key, chunk_size=64)
        s.write(data)
        s.close()
        assert b"".join(crypt.decrypt(io.BytesIO(out.getvalue()).read, key)) == data


def test_sealed_tampered_or_truncated_is_refused(tmp_path: Path) -> None:
    sealed = bytearray(_sealed(_archive(tmp_path), "pw"))
    cut = bytes(sealed[: len(sealed) - 100])
    with pytest.raises(pa.BadBackup, match=r"does not open|cut short"):
        _read(cut, tmp_path / "a", _passphrase("pw"))
    sealed[len(sealed) // 2] ^= 0x40
    with pytest.raises(pa.BadBackup, match="does not open"):
        _read(bytes(sealed), tmp_path / "b", _passphrase("pw"))
