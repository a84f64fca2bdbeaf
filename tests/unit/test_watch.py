import threading
import time

from lbsolo.source import parse_ignore
from lbsolo.watch import relevant, watch


def test_relevant_paths(tmp_path):
    rules = parse_ignore("*.log\nbuild\n")
    assert relevant(tmp_path, str(tmp_path / "app.py"), rules)
    assert relevant(tmp_path, str(tmp_path / "src" / "x.py"), rules)
    assert not relevant(tmp_path, str(tmp_path / ".git" / "index"), rules)
    assert not relevant(tmp_path, str(tmp_path / "debug.log"), rules)
    assert not relevant(tmp_path, str(tmp_path / "build" / "out.bin"), rules)
    assert not relevant(tmp_path, str(tmp_path / "__pycache__" / "a.pyc"), rules)
    assert not relevant(tmp_path, "/elsewhere/file", rules)


def test_watch_debounces_a_burst_of_saves_into_one_call(tmp_path):
    (tmp_path / ".dockerignore").write_text("*.log\n")
    calls = []
    stop = threading.Event()
    thread = threading.Thread(
        target=watch, args=(tmp_path, lambda: calls.append(time.monotonic())), kwargs={"debounce": 0.3, "stop": stop}
    )
    thread.start()
    try:
        time.sleep(0.5)
        (tmp_path / "ignored.log").write_text("x")
        time.sleep(0.8)
        assert calls == []
        for i in range(5):
            (tmp_path / "app.py").write_text(f"print({i})\n")
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.6)
        assert len(calls) == 1
    finally:
        stop.set()
        thread.join(timeout=5)
