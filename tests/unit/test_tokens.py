"""Extra API tokens against a real State file: only hashes are stored, revocation is immediate."""

from __future__ import annotations

import hashlib

import pytest

from lbsolo.api.tokens import TOUCH_EVERY, TokenStore, hash_token
from lbsolo.errors import Conflict, InvalidInput, NotFound
from lbsolo.state import State


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(tmp_path):
    s = State(tmp_path / "state.json")
    yield s
    s.close()


def test_create_shows_the_token_once_and_stores_only_its_hash(tmp_path, state):
    store = TokenStore(state, clock=Clock())
    token_id, token = store.create("ci")
    assert token.startswith("lbs_") and len(token) > 40
    raw = (tmp_path / "state.json").read_text()
    assert token not in raw
    assert hashlib.sha256(token.encode()).hexdigest() in raw
    assert store.list() == [
        {
            "id": token_id,
            "name": "ci",
            "prefix": token[:10],
            "created_at": 5000.0,
            "last_used": None,
            "role": "admin",
            "apps": [],
        }
    ]
    assert "hash" not in store.list()[0]


def test_verify_accepts_only_live_tokens(state):
    store = TokenStore(state)
    _, a = store.create("a")
    b_id, b = store.create("b")
    assert store.verify(a) and store.verify(b)
    assert not store.verify("")
    assert not store.verify(a + "x")
    assert not store.verify(hash_token(a))  # the stored hash is not a token
    store.revoke(b_id)
    assert not store.verify(b)
    assert store.verify(a)
    store.revoke("a")  # by name too
    assert not store.verify(a)
    assert store.list() == []


def test_names_are_unique_and_checked(state):
    store = TokenStore(state)
    store.create("deploy-bot")
    with pytest.raises(Conflict):
        store.create("deploy-bot")
    for bad in ("", "with space", "x" * 41, "-lead", "<b>"):
        with pytest.raises(InvalidInput):
            store.create(bad)
    with pytest.raises(NotFound):
        store.revoke("nobody")


def test_tokens_survive_a_restart_and_last_used_is_written_at_most_once_a_minute(tmp_path):
    clock = Clock()
    s = State(tmp_path / "state.json")
    store = TokenStore(s, clock=clock)
    token_id, token = store.create("laptop")
    writes = []
    touch = s.touch_token

    def counting_touch(tid: str, ts: float) -> None:
        writes.append(ts)
        touch(tid, ts)

    s.touch_token = counting_touch  # type: ignore[method-assign]
    for _ in range(5):
        assert store.verify(token)
        clock.now += 1
    assert writes == [5000.0]
    clock.now += TOUCH_EVERY
    assert store.verify(token)
    assert len(writes) == 2
    s.close()

    s2 = State(tmp_path / "state.json")
    again = TokenStore(s2, clock=clock)
    assert again.verify(token)
    (row,) = again.list()
    assert row["id"] == token_id and row["last_used"] == writes[-1]
    s2.close()


def test_webhook_rows_in_state(state):
    state.add_webhook({"id": "w1", "url": "http://x", "created_at": 2.0})
    state.add_webhook({"id": "w0", "url": "http://y", "created_at": 1.0})
    with pytest.raises(Conflict):
        state.add_webhook({"id": "w1", "url": "http://z"})
    assert [w["id"] for w in state.list_webhooks()] == ["w0", "w1"]
    assert state.delete_webhook("w1") is True
    assert state.delete_webhook("w1") is False
    assert [w["id"] for w in state.list_webhooks()] == ["w0"]


def test_the_platform_backup_and_its_listing_are_admin_reads():
    from lbsolo.api.scopes import refusal

    for template in ("/api/backup", "/api/backup/status"):
        assert refusal("admin", (), "GET", template, {}) is None
        assert "admin" in str(refusal("read", (), "GET", template, {}))
        assert "admin" in str(refusal("deploy", (), "GET", template, {}))
    changes = (("PUT", "/api/backup/schedule"), ("PUT", "/api/backup/target"), ("POST", "/api/backup/now"))
    for method, template in changes:
        assert "needs an admin token" in str(refusal("deploy", (), method, template, {}))
