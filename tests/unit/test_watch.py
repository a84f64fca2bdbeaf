import threading
import time
from types import SimpleNamespace

from lbsolo.build_source import parse_ignore
from lbsolo.cli.watch import _Changes, relevant, watch


def test_relevant_paths(tmp_path):
    rules = parse_ignore("*.log\nbuild\n")
    assert relevant(tmp_path, str(tmp_path / "app.py"), rules)
    assert relevant(tmp_path, str(tmp_path / "src" / "x.py"), rules)
    assert not relevant(tmp_path, str(tmp_path / ".git" / "index"), rules)
    assert not relevant(tmp_path, str(tmp_path / "debug.log"), rules)
    assert not relevant(tmp_path, str(tmp_path / "build" / "out.bin"), rules)
    assert not relevant(tmp_path, str(tmp_path / "__pycache__" / "a.pyc"), rules)
    assert not relevant(tmp_path, "/elsewhere/file", rules)


def test_only_relevant_events_count_as_changes(tmp_path):
    changes = _Changes(tmp_path, parse_ignore("*.log\n"))
    for event_type, path in [("modified", "debug.log"), ("opened", "app.py"), ("closed_no_write", "app.py")]:
        changes.on_any_event(SimpleNamespace(event_type=event_type, src_path=str(tmp_path / path)))
    assert not changes.pending.is_set()
    moved = SimpleNamespace(event_type="moved", src_path=str(tmp_path / "a.log"), dest_path=str(tmp_path / "app.py"))
    changes.on_any_event(moved)  # renamed into a relevant name: counts
    assert changes.pending.is_set()


def test_watch_debounces_a_burst_of_saves_into_one_call(tmp_path):
    (tmp_path / ".dockerignore").write_text("*.log\n")
    calls: list[float] = []
    called = threading.Event()
    stop, ready = threading.Event(), threading.Event()

    def on_change() -> None:
        calls.append(time.monotonic())
        called.set()

    thread = threading.Thread(
        target=watch, args=(tmp_path, on_change), kwargs={"debounce": 0.3, "stop": stop, "ready": ready}
    )
    thread.start()
    try:
        assert ready.wait(5)
        (tmp_path / "ignored.log").write_text("x")
        for i in range(5):  # one editor save is often several events, closer than the debounce
            (tmp_path / "app.py").write_text(f"print({i})\n")
        assert called.wait(5)
        first = len(calls)
        called.clear()
        (tmp_path / "app.py").write_text("print('again')\n")  # a later save: a call of its own
        assert called.wait(5)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert first == 1  # five saves and an ignored file: one call
    assert len(calls) >= 2 and calls[1] - calls[0] >= 0.3  # (on a loaded machine a burst may straggle)
