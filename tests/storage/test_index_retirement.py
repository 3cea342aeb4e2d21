"""Indexes no contract declares any more are retired, not dropped at once: processes of
the previous release (a rolling upgrade) and a release rolled back to keep them until
the drop delay is over; then a start or the host's sweep drops them. Every backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from sqlalchemy import text

from nexus_grpc.config import StorageConfig
from nexus_grpc.storage import Storage, mongo_indexes
from nexus_grpc.storage import indexes as sql_indexes
from nexus_grpc.storage.declared import declared_indexes
from nexus_grpc.storage.retired_sweep import RetiredIndexSweep, sweep_interval

from . import backend_url, connected
from .test_indexes import _names, item_type, nexus_indexes

#: Short enough for a test, long enough that a few calls in a row fall within it on a
#: loaded CI machine (PostgreSQL builds and drops CONCURRENTLY).
DELAY = 2.0


@pytest.fixture(params=["sqlite", "postgresql", "mongodb"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request, tmp_path)


def _versions() -> tuple[type, type]:
    """Release 1 lists by owner; release 2 by region instead."""
    v1 = item_type({"owner": "string", "region": "string"}, [["owner"]])
    v2 = item_type({"owner": "string", "region": "string"}, [["region"]])
    return v1, v2


@asynccontextmanager
async def _upgraded(
    url: str,
) -> AsyncIterator[tuple[Storage, type, type, set[str], set[str]]]:
    """Release 1 started, then release 2: the storage, both releases' types, and the
    names of release 1's (retired) and release 2's indexes."""
    v1, v2 = _versions()
    async with connected(url) as storage:
        await storage.apply_indexes([v1], drop_delay=DELAY)
        await storage.apply_indexes([v2], drop_delay=DELAY)
        yield storage, v1, v2, _names(v1, url), _names(v2, url)


async def test_an_undeclared_index_is_kept_for_the_delay_then_dropped_at_start(
    any_url: str,
) -> None:
    v1, v2 = _versions()
    old, new = _names(v1, any_url), _names(v2, any_url)
    async with connected(any_url) as storage:
        await storage.apply_indexes([v1], drop_delay=DELAY)
        items = storage.namespace("tests/retire").repository(v1)
        await items.create(v1(id="i1", owner="ann", region="eu"))
    async with connected(any_url) as storage:
        upgraded = await storage.apply_indexes([v2], drop_delay=DELAY)
        assert upgraded.created == sorted(new) and upgraded.retired == sorted(old)
        assert not upgraded.dropped
        # A process still on release 1 lists from its index as before.
        assert await nexus_indexes(any_url) == old | new
        listed = (
            await storage.namespace("tests/retire").repository(v1).list(filter={"owner": "ann"})
        )
        assert [item.id for item in listed.items] == ["i1"]
        # Another start within the delay keeps it, without restarting the clock.
        again = await storage.apply_indexes([v2], drop_delay=DELAY)
        assert again.retired == sorted(old) and not again.dropped and not again.created
        await asyncio.sleep(DELAY + 0.1)
        due = await storage.apply_indexes([v2], drop_delay=DELAY)
        assert due.dropped == sorted(old) and not due.retired
        assert await nexus_indexes(any_url) == new
        # Dropped and forgotten: nothing is left to retire or drop.
        later = await storage.apply_indexes([v2], drop_delay=DELAY)
        assert not later.dropped and not later.retired and not later.created


async def test_a_release_rolled_back_within_the_delay_takes_its_index_back(any_url: str) -> None:
    async with _upgraded(any_url) as (storage, v1, _, old, new):
        back = await storage.apply_indexes([v1], drop_delay=DELAY)
        # Nothing rebuilt; release 2's index is the one retired now.
        assert not back.created and not back.dropped and back.retired == sorted(new)
        await asyncio.sleep(DELAY + 0.1)
        swept = await storage.drop_retired_indexes(drop_delay=DELAY)
        assert swept.dropped == sorted(new)
        assert await nexus_indexes(any_url) == old


async def test_the_sweep_drops_only_what_is_due(any_url: str) -> None:
    async with _upgraded(any_url) as (storage, _, v2, old, new):
        early = await storage.drop_retired_indexes(drop_delay=DELAY)
        assert not early.dropped and await nexus_indexes(any_url) == old | new
        await asyncio.sleep(DELAY + 0.1)
        swept = await storage.drop_retired_indexes(drop_delay=DELAY)
        assert swept.dropped == sorted(old) and await nexus_indexes(any_url) == new
        assert not (await storage.drop_retired_indexes(drop_delay=DELAY)).dropped
        # The catalog forgot it too: the next start has nothing to report.
        later = await storage.apply_indexes([v2], drop_delay=DELAY)
        assert not later.dropped and not later.retired and not later.created


async def test_a_zero_delay_drops_at_once_as_before(any_url: str) -> None:
    v1, v2 = _versions()
    async with connected(any_url) as storage:
        await storage.apply_indexes([v1])
        changes = await storage.apply_indexes([v2])
        assert changes.dropped == sorted(_names(v1, any_url)) and not changes.retired
        assert await nexus_indexes(any_url) == _names(v2, any_url)


async def test_a_field_type_change_drops_the_old_index_at_once(any_url: str) -> None:
    v1 = item_type({"rank": "string"}, [["rank"]])
    v2 = item_type({"rank": "int64"}, [["rank"]])
    async with connected(any_url) as storage:
        await storage.apply_indexes([v1], drop_delay=DELAY)
        changes = await storage.apply_indexes([v2], drop_delay=DELAY)
        # Its values no longer mean what release 1 read them as.
        assert changes.reindexed == ["nexus.storage.evo.Item"]
        assert changes.dropped == sorted(_names(v1, any_url)) and not changes.retired
        again = await storage.apply_indexes([v2], drop_delay=DELAY)
        assert not again.reindexed and not again.dropped


async def test_a_negative_delay_is_refused(tmp_path: Path) -> None:
    async with connected(f"sqlite+aiosqlite:///{tmp_path}/nexus.db") as storage:
        with pytest.raises(ValueError, match="drop_delay"):
            await storage.apply_indexes([], drop_delay=-1)
        with pytest.raises(ValueError, match="drop_delay"):
            await storage.drop_retired_indexes(drop_delay=-1)


def test_the_sweep_runs_a_few_times_per_delay_between_a_second_and_a_minute() -> None:
    assert sweep_interval(0.1) == 1.0
    assert sweep_interval(20) == 5.0
    assert sweep_interval(900) == 60.0
    assert StorageConfig().index_drop_delay == 900.0


async def test_the_sweep_drops_a_due_index_without_a_restart(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/nexus.db"
    v1, v2 = _versions()
    async with connected(url) as storage:
        await storage.apply_indexes([v1], drop_delay=DELAY)
        await storage.apply_indexes([v2], drop_delay=DELAY)
        sweep = RetiredIndexSweep(storage, DELAY)
        sweep.start()
        try:
            deadline = time.monotonic() + DELAY + 3 * sweep_interval(DELAY)
            while await nexus_indexes(url) != _names(v2, url):
                assert time.monotonic() < deadline, "the sweep never dropped the index"
                await asyncio.sleep(0.1)
        finally:
            await sweep.stop()
        await sweep.stop()  # idempotent


async def test_the_host_sweeps_with_the_configured_delay(tmp_path: Path) -> None:
    from nexus_grpc.testing import running_host

    url = f"sqlite:///{tmp_path}/host.db"
    v1, v2 = _versions()
    async with connected(url) as storage:
        await storage.apply_indexes([v1], drop_delay=DELAY)
        await storage.apply_indexes([v2], drop_delay=DELAY)
    async with running_host(
        plugins=[],
        data_dir=tmp_path,
        storage_url=url,
        storage=StorageConfig(index_drop_delay=DELAY),
    ):
        deadline = time.monotonic() + DELAY + 3 * sweep_interval(DELAY)
        while _names(v1, url) & await nexus_indexes(url):
            assert time.monotonic() < deadline, "the host never dropped the retired index"
            await asyncio.sleep(0.1)


async def _declared_by_a_release_without_retirement(
    storage: Storage, message_type: type[Message]
) -> None:
    """What a start of a release that knows nothing of retirement leaves behind when its
    contract declares an index that exists: its catalog row, written as such a release
    writes it (it builds nothing: the index is there)."""
    backend: Any = storage._backend
    if backend.name == "mongodb":
        # The catalog document every release writes the same way.
        for index in declared_indexes(message_type.DESCRIPTOR):
            await mongo_indexes._record(backend.records, index)
        return
    async with backend._database.transaction(write=True) as conn:
        for index in declared_indexes(message_type.DESCRIPTOR):
            await sql_indexes._record(conn, index)


async def test_a_rollback_to_a_release_without_retirement_keeps_its_index(any_url: str) -> None:
    async with _upgraded(any_url) as (storage, v1, v2, old, new):
        # Rolled back to the release before retirement existed: its start declares the
        # index again, and a process of the new release still running sweeps.
        await _declared_by_a_release_without_retirement(storage, v1)
        await asyncio.sleep(DELAY + 0.1)
        swept = await storage.drop_retired_indexes(drop_delay=DELAY)
        assert not swept.dropped and old <= await nexus_indexes(any_url)
        # Deployed again weeks later: the delay starts over, it is not spent already.
        again = await storage.apply_indexes([v2], drop_delay=DELAY)
        assert again.retired == sorted(old) and not again.dropped
        assert await nexus_indexes(any_url) == old | new


async def test_a_rollback_without_a_sweep_does_not_spend_the_next_upgrades_delay(
    any_url: str,
) -> None:
    async with _upgraded(any_url) as (storage, v1, v2, old, _):
        await _declared_by_a_release_without_retirement(storage, v1)  # a full rollback
        await asyncio.sleep(DELAY + 0.1)
        again = await storage.apply_indexes([v2], drop_delay=DELAY)
        assert again.retired == sorted(old) and not again.dropped


async def test_stopping_a_postgresql_sweep_mid_drop_ends_it(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = _versions()
    async with connected(postgres_url) as storage:
        await storage.apply_indexes([v1], drop_delay=DELAY)
        await storage.apply_indexes([v2], drop_delay=DELAY)
        await asyncio.sleep(DELAY + 0.1)
        real = sql_indexes._drop_retired
        inside = asyncio.Event()

        async def slow(conn: Any, name: str) -> None:
            inside.set()
            await conn.execute(text("SELECT pg_sleep(3)"))  # a long DROP INDEX CONCURRENTLY
            await real(conn, name)

        monkeypatch.setattr(sql_indexes, "_drop_retired", slow)
        sweep = RetiredIndexSweep(storage, DELAY)
        sweep.start()
        await asyncio.wait_for(inside.wait(), 5)
        task = sweep._task
        assert task is not None
        started = time.monotonic()
        await sweep.stop()
        assert task.done() and time.monotonic() - started < 2
        monkeypatch.undo()
        # The interrupted connection did not keep the index lock: a start gets it.
        changes = await asyncio.wait_for(storage.apply_indexes([v2], drop_delay=DELAY), 10)
        assert changes.dropped == sorted(_names(v1, postgres_url))


async def test_mongodb_index_changes_take_turns(mongo_url: str) -> None:
    async with connected(mongo_url) as storage:
        records: Any = storage._backend.records  # type: ignore[attr-defined]
        order: list[str] = []
        async with mongo_indexes._lease(records, wait=0) as first:
            assert first
            async with mongo_indexes._lease(records, wait=0) as busy:
                assert not busy  # what a sweep finding it held gets: nothing to do

            async def second() -> None:
                async with mongo_indexes._lease(records, wait=10) as held:
                    assert held
                    order.append("second")

            waiting = asyncio.create_task(second())
            await asyncio.sleep(0.5)
            order.append("first done")
        await asyncio.wait_for(waiting, 10)
        assert order == ["first done", "second"]


async def test_mongodb_drops_a_retired_index_in_the_way_of_one_now_declared(
    mongo_url: str,
) -> None:
    # Type A stops indexing rank (a string); type B indexes rank as a number: the same
    # MongoDB keys, which MongoDB allows one index of.
    a1 = item_type({"rank": "string", "owner": "string"}, [["rank"]], name="A")
    a2 = item_type({"rank": "string", "owner": "string"}, [["owner"]], name="A")
    b = item_type({"rank": "int64"}, [["rank"]], name="B")
    async with connected(mongo_url) as storage:
        await storage.apply_indexes([a1], drop_delay=DELAY)
        retiring = await storage.apply_indexes([a2], drop_delay=DELAY)
        assert retiring.retired == sorted(_names(a1, mongo_url) - _names(a2, mongo_url))
        built = await storage.apply_indexes([b], drop_delay=DELAY)
        assert built.dropped == retiring.retired and built.created == sorted(_names(b, mongo_url))
        await asyncio.sleep(DELAY + 0.1)
        await storage.drop_retired_indexes(drop_delay=DELAY)
        assert _names(b, mongo_url) <= await nexus_indexes(mongo_url)


async def test_a_sweep_keeps_and_takes_back_what_its_own_contracts_declare(any_url: str) -> None:
    v1, v2 = _versions()
    new = _names(v2, any_url)
    async with connected(any_url) as upgraded, connected(any_url) as previous:
        await previous.apply_indexes([v1], drop_delay=DELAY)
        await upgraded.apply_indexes([v2], drop_delay=DELAY)
        # A process of release 1 restarts during the upgrade: it retires release 2's.
        back = await previous.apply_indexes([v1], drop_delay=DELAY)
        assert back.retired == sorted(new)
        await asyncio.sleep(DELAY + 0.1)
        # Release 2's processes sweep with their own contracts: theirs is taken back.
        swept = await upgraded.drop_retired_indexes(drop_delay=DELAY, declared=[v2])
        assert not swept.dropped and new <= await nexus_indexes(any_url)
        # With its catalog rows written back: a release 3 dropping it retires it in turn.
        v3 = item_type({"owner": "string", "region": "string"}, [])
        later = await upgraded.apply_indexes([v3], drop_delay=DELAY)
        assert set(later.retired) >= new


@pytest.mark.parametrize("failing", ["drop", "retirement"])
async def test_an_index_change_failing_half_way_leaves_nothing_undroppable(
    any_url: str, failing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "drop": a field's type changed, so the old index is dropped at once; "retirement":
    # an index no longer declared. Each statement commits on its own on PostgreSQL and
    # MongoDB: a failure in between must leave something a later start finishes.
    if failing == "drop":
        v1 = item_type({"rank": "string"}, [["rank"]])
        v2 = item_type({"rank": "int64"}, [["rank"]])
    else:
        v1, v2 = _versions()
    old = _names(v1, any_url)

    async def lost(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("connection lost half-way")

    async with connected(any_url) as storage:
        await storage.apply_indexes([v1], drop_delay=DELAY)
        mongo = any_url.startswith("mongodb")
        if failing == "drop":  # the DROP itself is lost
            target, name = (mongo_indexes, "_drop") if mongo else (sql_indexes, "_drop_retired")
            monkeypatch.setattr(target, name, lost)
        elif mongo:  # retired, then lost before the catalog row goes
            real_delete = mongo_indexes.AsyncCollection.delete_one

            async def delete_one(collection: Any, *args: Any, **kwargs: Any) -> Any:
                if collection.name == "nexus_index_catalog":
                    await lost()
                return await real_delete(collection, *args, **kwargs)

            monkeypatch.setattr(mongo_indexes.AsyncCollection, "delete_one", delete_one)
        else:

            def forget(*args: Any) -> Any:
                raise ConnectionError("connection lost half-way")

            monkeypatch.setattr(sql_indexes, "_forget", forget)
        with pytest.raises(Exception, match="half-way"):
            await storage.apply_indexes([v2], drop_delay=DELAY)
        monkeypatch.undo()
        for _ in range(2):
            await storage.apply_indexes([v2], drop_delay=DELAY)
            await asyncio.sleep(DELAY + 0.1)
            await storage.drop_retired_indexes(drop_delay=DELAY)
        assert not old & await nexus_indexes(any_url)


async def test_the_mongodb_lease_is_renewed_while_its_holder_works(
    mongo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongo_indexes, "_LEASE_SECONDS", 0.6)
    async with connected(mongo_url) as storage:
        records: Any = storage._backend.records  # type: ignore[attr-defined]
        inside: list[str] = []
        overlaps: list[bool] = []

        async def work(name: str, seconds: float) -> None:
            async with mongo_indexes._lease(records, wait=10) as held:
                assert held
                overlaps.append(bool(inside))
                inside.append(name)
                await asyncio.sleep(seconds)
                inside.remove(name)

        first = asyncio.create_task(work("long build", 2.0))
        await asyncio.sleep(0.1)
        await asyncio.gather(first, work("next start", 0.1))
        assert overlaps == [False, False]


async def test_postgresql_measures_the_delay_by_its_own_clock(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Processes on several machines share the database: a process whose clock runs an
    # hour ahead must not find another's retirement due.
    class Ahead(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + timedelta(hours=1)

    v1, v2 = _versions()
    async with connected(postgres_url) as storage:
        await storage.apply_indexes([v1], drop_delay=DELAY)
        await storage.apply_indexes([v2], drop_delay=DELAY)
        monkeypatch.setattr(sql_indexes, "datetime", Ahead)
        again = await storage.apply_indexes([v2], drop_delay=DELAY)
        swept = await storage.drop_retired_indexes(drop_delay=DELAY)
        assert not again.dropped and not swept.dropped
        assert _names(v1, postgres_url) <= await nexus_indexes(postgres_url)


async def test_a_previous_fleet_stopped_after_taking_its_index_back_still_loses_it(
    any_url: str,
) -> None:
    # Blue/green, or the old pods of a rolling update sweeping once more before they
    # end: release 1's sweep takes its index back; no release 1 process starts again.
    v1, v2 = _versions()
    old = _names(v1, any_url)
    async with connected(any_url) as blue, connected(any_url) as green:
        await blue.apply_indexes([v1], drop_delay=DELAY)
        await green.apply_indexes([v2], drop_delay=DELAY)
        await blue.drop_retired_indexes(drop_delay=DELAY, declared=[v1])
        assert old <= await nexus_indexes(any_url)
        # Release 2's sweeps retire it again, then drop it once due.
        first = await green.drop_retired_indexes(drop_delay=DELAY, declared=[v2])
        assert first.retired == sorted(old)
        await asyncio.sleep(DELAY + 0.1)
        swept = await green.drop_retired_indexes(drop_delay=DELAY, declared=[v2])
        assert swept.dropped == sorted(old) and not old & await nexus_indexes(any_url)
        # Nothing left to do: the next sweep changes nothing and logs nothing.
        idle = await green.drop_retired_indexes(drop_delay=DELAY, declared=[v2])
        assert not idle.dropped and not idle.retired


async def test_a_mongodb_drop_the_server_refuses_keeps_the_retirement(
    mongo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymongo.errors import OperationFailure

    async with _upgraded(mongo_url) as (storage, v1, v2, old, _):
        await asyncio.sleep(DELAY + 0.1)

        async def refused(collection: Any, name: str, **kwargs: Any) -> None:
            raise OperationFailure("not authorized to execute command dropIndexes", 13)

        monkeypatch.setattr(mongo_indexes.AsyncCollection, "drop_index", refused)
        with pytest.raises(Exception, match=r"OperationFailure \(13\)"):
            await storage.drop_retired_indexes(drop_delay=DELAY)
        monkeypatch.undo()
        swept = await storage.drop_retired_indexes(drop_delay=DELAY)
        assert swept.dropped == sorted(old) and not old & await nexus_indexes(mongo_url)
        # An index gone already (dropped by hand) is forgotten without an error.
        await storage.apply_indexes([v1], drop_delay=DELAY)
        await storage.apply_indexes([v2], drop_delay=DELAY)
        records: Any = storage._backend.records  # type: ignore[attr-defined]
        await records.drop_index(next(iter(old)))
        await asyncio.sleep(DELAY + 0.1)
        assert (await storage.drop_retired_indexes(drop_delay=DELAY)).dropped == sorted(old)
