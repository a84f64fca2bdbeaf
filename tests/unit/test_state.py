import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from lbsolo.errors import Conflict, NotFound, StorageError
from lbsolo.models import App, Release, ReleaseStatus
from lbsolo.state import AtomicJSONStorage, State


def test_state_roundtrip_survives_reopen(tmp_path):
    path = tmp_path / "state.json"
    s = State(path)
    s.create_app(App("hello"))
    s.save_release(Release(app="hello", version=1, image="sha256:abc", status=ReleaseStatus.ACTIVE))
    with pytest.raises(Conflict):
        s.create_app(App("hello"))
    s.close()

    s2 = State(path)
    assert [a.name for a in s2.list_apps()] == ["hello"]
    assert s2.get_release("hello", 1).status is ReleaseStatus.ACTIVE
    assert s2.next_version("hello") == 2
    with pytest.raises(NotFound):
        s2.get_app("nope")
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_storage_leaves_no_temp_files_and_valid_json(tmp_path):
    st = AtomicJSONStorage(tmp_path / "db.json")
    for i in range(20):
        st.write({"t": {str(i): {"n": i}}})
    assert json.loads((tmp_path / "db.json").read_text()) == {"t": {"19": {"n": 19}}}
    assert [p.name for p in tmp_path.iterdir()] == ["db.json"]


def test_storage_read_returns_a_copy(tmp_path):
    st = AtomicJSONStorage(tmp_path / "db.json")
    st.write({"t": {"1": {"n": 1}}})
    data = st.read()
    data["t"]["1"]["n"] = 99
    assert st.read() == {"t": {"1": {"n": 1}}}


def test_kill_9_during_writes_leaves_a_readable_database(tmp_path):
    """A writer killed at random moments never leaves a file TinyDB cannot open."""
    path = tmp_path / "state.json"
    script = textwrap.dedent(
        f"""
        from lbsolo.models import App
        from lbsolo.state import State
        s = State({str(path)!r})
        i = 0
        while True:
            s.save_app(App("app" + str(i % 50), release=i))
            i += 1
        """
    )
    for delay in (0.0, 0.05, 0.15):
        proc = subprocess.Popen([sys.executable, "-c", script])
        # The kill lands while it writes, however long the interpreter takes to start on a busy machine.
        deadline = time.monotonic() + 30
        while not (path.exists() and b'"app0"' in path.read_bytes()) and time.monotonic() < deadline:
            assert proc.poll() is None, "the writer ended by itself"
            time.sleep(0.005)
        time.sleep(delay)
        os.kill(proc.pid, 9)
        proc.wait()
        State(path).list_apps()  # must not raise
    assert path.exists()
    assert len(State(path).list_apps()) >= 1


def test_reads_come_from_memory_as_copies_and_a_failed_write_changes_nothing(tmp_path, monkeypatch):
    state = State(tmp_path / "state.json")
    state.create_app(App("a"))
    state.save_release(Release("a", 1, "sha256:x", status=ReleaseStatus.ACTIVE, created_at=1.0))
    state.create_app(App("b"))
    state.save_release(Release("b", 1, "sha256:y", created_at=2.0))
    app = state.get_app("a")
    app.config["K"] = "v"  # a caller's change, not saved: the state does not see it
    app.formation["web"] = 9
    assert state.get_app("a").config == {} and state.get_app("a").formation == {"web": 1}
    assert [(r.app, r.version) for r in state.recent_releases(10)] == [("b", 1), ("a", 1)]
    assert [r.app for r in state.recent_releases(1)] == ["b"]
    assert state.get_release("a", 1).image == "sha256:x"

    def full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lbsolo.state.os.replace", full)
    app.config["K"] = "v"
    with pytest.raises(StorageError):
        state.save_app(app)
    assert state.get_app("a").config == {}  # memory is not ahead of the disk


def test_each_change_writes_the_file_once_and_no_change_writes_nothing(tmp_path):
    """At 200 apps a write costs the whole file: TinyDB's upsert wrote it twice to insert, and an
    update or remove that matched nothing wrote it unchanged (the scale issue's deploy at N=200)."""
    state = State(tmp_path / "state.json")
    storage: AtomicJSONStorage = state._memory
    state.create_app(App("a"))
    before = storage.writes
    state.save_release(Release("a", 1, "sha256:x", created_at=1.0))  # an insert
    assert storage.writes == before + 1
    state.save_release(Release("a", 1, "sha256:x", status=ReleaseStatus.ACTIVE, created_at=1.0))  # an update
    assert storage.writes == before + 2
    state.save_release(Release("a", 1, "sha256:x", status=ReleaseStatus.ACTIVE, created_at=1.0))  # the same
    assert storage.writes == before + 2
    state.delete_builds("a", ["nope"])  # matches nothing (the first time adds the empty table)
    state.delete_builds("a", ["nope"])
    assert storage.writes <= before + 3
    assert [(r.version, r.status) for r in State(tmp_path / "state.json").list_releases("a")] == [
        (1, ReleaseStatus.ACTIVE)
    ]


def test_a_document_read_back_is_not_shared_with_the_next_one_written(tmp_path):
    st = AtomicJSONStorage(tmp_path / "db.json")
    st.write({"t": {"1": {"n": {"deep": 1}}}})
    first = st.read()
    first["t"]["1"]["n"] = {"deep": 2}  # TinyDB's update replaces a field of its copy
    assert st.read() == {"t": {"1": {"n": {"deep": 1}}}}
    assert st.rows("t")[0] is not st.rows("t")[0]
