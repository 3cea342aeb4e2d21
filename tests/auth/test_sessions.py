"""SessionGuard against the auth plugin's real session store, without a server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from nexus.auth.v1 import records_pb2

from nexus_grpc.auth import REVOKED, Principal, SessionGuard
from nexus_grpc.errors import StatusError
from nexus_grpc.storage import Storage
from plugins.auth.sessions import SessionStore


async def open_store(tmp_path: Path) -> tuple[Storage, SessionStore]:
    storage = await Storage.connect(f"sqlite+aiosqlite:///{tmp_path / 'nexus.db'}")
    return storage, SessionStore(storage.namespace("plugins/security/auth"))


async def test_a_store_that_cannot_answer_refuses_the_call(tmp_path: Path) -> None:
    """Fail closed: UNAVAILABLE, not "the token is good"."""
    storage, store = await open_store(tmp_path)
    guard = SessionGuard(ttl=60)
    guard.attach(store)
    await storage.close()
    with pytest.raises(StatusError) as caught:
        await guard.check(Principal("alice"))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "SESSION_STATE_UNAVAILABLE"
    guard.close()


async def test_announced_changes_drop_only_their_user(tmp_path: Path) -> None:
    storage, store = await open_store(tmp_path)
    sessions = storage.namespace("plugins/security/auth").repository(records_pb2.SessionRecord)
    guard = SessionGuard(ttl=60, prefix="nexus")
    guard.attach(store)
    try:
        await guard.check(Principal("alice"))
        await guard.check(Principal("bob"))
        assert guard.floors == {"alice": 0, "bob": 0}
        await sessions.create(records_pb2.SessionRecord(id="alice", epoch=3))
        guard.on_key("nexus:cache:plugins/x:alice")  # a cache key: not ours
        guard.on_key("other:sessions:alice")  # another deployment's prefix
        assert guard.floors == {"alice": 0, "bob": 0}
        guard.on_key("nexus:sessions:alice")
        assert guard.floors == {"bob": 0}
        with pytest.raises(StatusError) as caught:
            await guard.check(Principal("alice", epoch=2))
        assert caught.value.reason == "SESSION_REVOKED"
        await guard.check(Principal("alice", epoch=3))
        await sessions.update(records_pb2.SessionRecord(id="alice", epoch=4, revoked=True))
        guard.forget_all()  # what a lost subscription does
        assert guard.floors == {}
        with pytest.raises(StatusError):
            await guard.check(Principal("alice", epoch=99))
        assert guard.floors["alice"] == REVOKED
    finally:
        guard.close()
        await storage.close()


async def test_without_a_source_every_token_is_good_and_cached() -> None:
    guard = SessionGuard(ttl=60)
    principal = Principal("svc")
    assert not guard.fresh(principal)
    await guard.check(principal)
    assert guard.fresh(principal)
    guard.close()
