"""Volume names and mount paths are checked whole (issue 11, item 11).

A volume's name ends the engine's `lbsolo-<instance>-<app>-<name>`, and name, path and mode are
joined with ':' into one bind; only the first characters of a name were checked before, and any
absolute path passed.
"""

from __future__ import annotations

import pytest

from lbsolo.errors import InvalidInput
from lbsolo.models import validate_mount_path, validate_volume_name
from tests.unit.test_rollout import _platform


@pytest.mark.parametrize("name", ["data", "pg_data", "a", "v2", "a" * 40])
def test_plain_volume_names_pass(name):
    assert validate_volume_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Data",
        "2data",
        "_data",
        "-data",
        "data-x",  # app `x` with `a-b` and app `x-a` with `b` would share one engine volume
        "data/../etc",
        "data:/host",
        "abcdefghijklmnopqrst:/host",  # 20 good characters first: once enough to pass
        "abcdefghijklmnopqrst/../../x",
        "data\n",
        "data ",
        "a" * 41,
    ],
)
def test_volume_names_are_checked_whole(name):
    with pytest.raises(InvalidInput, match="invalid volume name"):
        validate_volume_name(name)


@pytest.mark.parametrize("path", ["/data", "/var/lib/postgresql/data", "/app/.cache", "/srv/my-app_1@2+3"])
def test_plain_mount_paths_pass(path):
    assert validate_mount_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "data",
        "./data",
        "/data/",
        "//data",
        "/data/../etc",
        "/data/.",
        "/data:ro",
        "/data:/host",
        "/data,z",
        "/da ta",
        "/data\n",
        "/proc",
        "/proc/self",
        "/sys/fs",
        "/dev",
        "/" + "a" * 255,
    ],
)
def test_bad_mount_paths_are_refused(path):
    with pytest.raises(InvalidInput, match="invalid mount path"):
        validate_mount_path(path)


def test_add_volume_refuses_a_name_bad_after_its_first_characters_and_keeps_nothing(tmp_path, run):
    async def main() -> None:
        platform, _, _, state = await _platform(tmp_path, {})
        for volume, path in [
            ("abcdefghijklmnopqrst:/host", "/data"),
            ("data-x", "/data"),
            ("data", "/data:ro"),
            ("data", "/a/../../etc"),
        ]:
            with pytest.raises(InvalidInput):
                await platform.add_volume("web1", volume, path)
        assert state.get_app("web1").volumes == {}
        assert await platform.add_volume("web1", "pg_data", "/var/lib/pg") is None  # not deployed: stored
        assert state.get_app("web1").volumes == {"pg_data": "/var/lib/pg"}

    run(main)
