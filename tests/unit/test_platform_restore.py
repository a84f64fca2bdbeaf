"""`lbsolo restore` without an engine: a fake one, to see what is refused, undone and written where."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from lbsolo import __version__
from lbsolo import platform_archive as pa
from lbsolo.config import Settings
from lbsolo.errors import Conflict, EngineError, EngineUnavailable
from lbsolo.platform_restore import RESTORE_MARKER, restore
from lbsolo.state import SCHEMA

STATE = {
    "apps": {"1": {"name": "hello", "release": 2, "volumes": {"data": "/data"}}},
    "releases": {"1": {"app": "hello", "version": 1, "image": "sha256:a"}, "2": {"app": "hello", "version": 2, "image": "sha256:b"}},  # noqa: E501
    "_meta": {"1": {"schema": SCHEMA}},
}


class FakeEngine:
    def __init__(self, fail_volume: bool = False, reachable: bool = True, leftovers: int = 0) -> None:
        self.images: set[str] = set()
        self.volumes: dict[str, bytes] = {}
        self.fail_volume, self.reachable, self.leftovers = fail_volume, reachable, leftovers

    def ping(self) -> str:
        if not self.reachable:
            raise EngineUnavailable("ping: the Docker engine is not reachable (no socket)")
        return "1"

    def instance_leftovers(self) -> int:
        return self.leftovers

    def volume_name(self, app: str, name: str) -> str:
        return f"lbsolo-abc-{app}-{name}"

    def volume_exists(self, volume: str) -> bool:
        return volume in self.volumes

    def remove_volume(self, volume: str) -> None:
        self.volumes.pop(volume, None)

    def import_volume(self, volume: str, app: str, image: str, archive: Path) -> None:
        self.volumes[volume] = archive.read_bytes()
        if self.fail_volume:
            raise EngineError("fill volume: the engine said no")

    def image_present(self, image: str) -> bool:
        return image in self.images

    def remove_image(self, image: str) -> None:
        self.images.discard(image)

    def load_images(self, archive: Path) -> None:
        self.images |= {"sha256:a", "sha256:b"}


def _backup(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "tls").mkdir(parents=True)
    (src / "tls" / "ca.pem").write_text("ca")
    (src / "state.json").write_text(json.dumps(STATE))
    (src / "token").write_text("admin-token\n")
    (src / "images.tar").write_bytes(b"images")
    (src / "vol.tar").write_bytes(b"volume data")
    (src / "dump").write_bytes(b"PGDMP...")
    (src / "m.json").write_text("{}")
    pa.tar_directory(src / "tls", src / "tls.tar")
    (src / "backup-keys").mkdir()
    (src / "backup-keys" / "k1.key").write_text("00" * 32 + "\n")
    os.chmod(src / "backup-keys" / "k1.key", 0o600)
    pa.tar_directory(src / "backup-keys", src / "keys.tar")
    files = [
        (pa.file_entry(src / "keys.tar", "dirs/backup-keys.tar", "dir", dir="backup-keys"), src / "keys.tar"),
        (pa.file_entry(src / "state.json", "state.json", "state"), src / "state.json"),
        (pa.file_entry(src / "token", "token", "token"), src / "token"),
        (pa.file_entry(src / "tls.tar", "dirs/tls.tar", "dir", dir="tls"), src / "tls.tar"),
        (pa.file_entry(src / "vol.tar", "volumes/hello/data.tar", "volume", app="hello", volume="data"), src / "vol.tar"),  # noqa: E501
        (pa.file_entry(src / "dump", "addons/db/B1.dump", "addon", addon="db", backup="B1", file="B1.dump"), src / "dump"),  # noqa: E501
        (pa.file_entry(src / "m.json", "addons/db/B1.json", "addon", addon="db", backup="B1", file="B1.json"), src / "m.json"),  # noqa: E501
        (pa.file_entry(src / "images.tar", "images/images.tar", "images", ids=["sha256:a", "sha256:b"]), src / "images.tar"),  # noqa: E501
    ]
    out = io.BytesIO()
    pa.write_archive(out, pa.Manifest(lbsolo=__version__, schema=SCHEMA, instance="abcdef012345"), files)
    path = tmp_path / "backup.tar"
    path.write_bytes(out.getvalue())
    return path


def _run(tmp_path: Path, engine: FakeEngine, archive: Path, force: bool = False) -> Settings:
    settings = Settings.load(home=tmp_path / "place" / "home")
    restore(settings, archive, force=force, key_for=_no_key, engine_for=lambda _i: engine)
    return settings


def _no_key(*_: object) -> bytes:
    raise AssertionError


def test_restores_files_volumes_images_and_instance(tmp_path: Path) -> None:
    engine = FakeEngine()
    s = _run(tmp_path, engine, _backup(tmp_path))
    assert json.loads(s.state_path.read_text()) == STATE
    assert s.token_path.read_text() == "admin-token\n" and (s.token_path.stat().st_mode & 0o777) == 0o600
    assert (s.home / "tls" / "ca.pem").read_text() == "ca"
    key = s.home / "backup-keys" / "k1.key"  # the keys of the buckets' sealed backups come back, private
    assert key.read_text() == "00" * 32 + "\n" and key.stat().st_mode & 0o777 == 0o600
    assert (s.home / "backup-keys").stat().st_mode & 0o777 == 0o700
    assert (s.home / "instance").read_text().strip() == "abcdef012345"
    assert (s.home / "backups" / "db" / "B1.dump").read_bytes() == b"PGDMP..."
    assert (s.home / "backups" / "db" / RESTORE_MARKER).read_text().strip() == "B1"
    assert engine.volumes == {"lbsolo-abc-hello-data": b"volume data"} and engine.images == {"sha256:a", "sha256:b"}
    assert [p.name for p in s.home.parent.iterdir()] == ["home"]  # the staging directory is gone


def test_a_home_with_apps_is_refused_unless_forced(tmp_path: Path) -> None:
    archive = _backup(tmp_path)
    s = _run(tmp_path, FakeEngine(), archive)
    before = s.state_path.read_bytes()
    with pytest.raises(Conflict, match="never merges"):
        _run(tmp_path, FakeEngine(), archive)
    assert s.state_path.read_bytes() == before
    _run(tmp_path, FakeEngine(), archive, force=True)


def test_leftovers_of_the_instance_on_the_engine_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Conflict, match="still running here"):
        _run(tmp_path, FakeEngine(leftovers=3), _backup(tmp_path))
    assert not (tmp_path / "place" / "home").exists()


def test_no_engine_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="not reachable"):
        _run(tmp_path, FakeEngine(reachable=False), _backup(tmp_path))
    assert not (tmp_path / "place").exists()


def test_an_engine_failure_undoes_volumes_and_loaded_images(tmp_path: Path) -> None:
    engine = FakeEngine(fail_volume=True)
    with pytest.raises(EngineError, match="said no"):
        _run(tmp_path, engine, _backup(tmp_path))
    assert engine.volumes == {} and engine.images == set()
    assert not (tmp_path / "place" / "home").exists()
    assert list((tmp_path / "place").iterdir()) == []


def test_a_tampered_backup_writes_nothing(tmp_path: Path) -> None:
    archive = _backup(tmp_path)
    data = bytearray(archive.read_bytes())
    data[data.find(b"volume data")] ^= 1
    archive.write_bytes(bytes(data))
    engine = FakeEngine()
    with pytest.raises(pa.BadBackup, match="checksum"):
        _run(tmp_path, engine, archive)
    assert engine.volumes == {} and engine.images == set()
    assert list((tmp_path / "place").iterdir()) == []
