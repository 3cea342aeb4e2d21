"""An operator retires the indexes of a message type no process declares any more (its
plugin removed everywhere): no start can tell that from a type another process still
serves. They are dropped after the drop delay, unless a process declaring the type
takes them back. Every backend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nexus_grpc.storage.declared import BuiltIndex
from nexus_grpc.storage.schema import index_retired

from . import backend_url, connected
from .test_indexes import _names, item_type, nexus_indexes

#: Short for a test, long enough for a few calls in a row on a loaded CI machine.
DELAY = 2.0
GONE = "nexus.storage.evo.Gone"


@pytest.fixture(params=["sqlite", "postgresql", "mongodb"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request, tmp_path)


def _types() -> tuple[type, type]:
    """A type whose plugin is removed, and one still served."""
    gone = item_type({"owner": "string"}, [["owner"]], name="Gone")
    kept = item_type({"region": "string"}, [["region"]], name="Kept")
    return gone, kept


def _recorded(built: list[BuiltIndex], message_type: str) -> set[str]:
    return {index.name for index in built if index.message_type == message_type}


def _retired(built: list[BuiltIndex]) -> set[str]:
    return {index.name for index in built if index.retired_at is not None}


async def test_the_indexes_of_a_type_nobody_declares_are_dropped_after_the_delay(
    any_url: str,
) -> None:
    gone, kept = _types()
    async with connected(any_url) as storage:
        await storage.apply_indexes([gone, kept], drop_delay=DELAY)
        built = await storage.list_indexes()
        assert _recorded(built, GONE) == _names(gone, any_url)
        assert _recorded(built, "nexus.storage.evo.Kept") == _names(kept, any_url)
        assert not _retired(built)

        changes = await storage.retire_indexes(GONE, drop_delay=DELAY)
        assert changes.retired == sorted(_names(gone, any_url)) and not changes.dropped
        built = await storage.list_indexes()
        assert not _recorded(built, GONE) and _retired(built) == _names(gone, any_url)
        assert all(i.message_type == "" for i in built if i.retired_at is not None)
        # Kept for the delay, for whoever still lists from them.
        assert await nexus_indexes(any_url) == _names(gone, any_url) | _names(kept, any_url)
        early = await storage.drop_retired_indexes(drop_delay=DELAY, declared=[kept])
        assert not early.dropped

        await asyncio.sleep(DELAY + 0.1)
        swept = await storage.drop_retired_indexes(drop_delay=DELAY, declared=[kept])
        assert swept.dropped == sorted(_names(gone, any_url))
        assert await nexus_indexes(any_url) == _names(kept, any_url)
        assert [i.name for i in await storage.list_indexes()] == sorted(_names(kept, any_url))
        # Nothing is recorded for the type any more: nothing to retire.
        again = await storage.retire_indexes(GONE, drop_delay=DELAY)
        assert not again.retired and not again.dropped


async def test_a_process_still_declaring_the_type_takes_its_indexes_back(any_url: str) -> None:
    gone, _ = _types()
    async with connected(any_url) as storage:
        await storage.apply_indexes([gone], drop_delay=DELAY)
        await storage.retire_indexes(GONE, drop_delay=DELAY)
        # The retirement was a mistake: a process serving the type sweeps.
        await storage.drop_retired_indexes(drop_delay=DELAY, declared=[gone])
        built = await storage.list_indexes()
        assert _recorded(built, GONE) == _names(gone, any_url) and not _retired(built)
        await asyncio.sleep(DELAY + 0.1)
        swept = await storage.drop_retired_indexes(drop_delay=DELAY, declared=[gone])
        assert not swept.dropped
        assert await nexus_indexes(any_url) == _names(gone, any_url)


async def test_an_index_another_type_still_records_is_kept(any_url: str) -> None:
    # Two types declaring the same index over one shared collection: one index.
    first = item_type({"owner": "string"}, [["owner"]], name="Gone", collections=["shared"])
    second = item_type({"owner": "string"}, [["owner"]], name="Other", collections=["shared"])
    async with connected(any_url) as storage:
        await storage.apply_indexes([first, second], drop_delay=DELAY)
        changes = await storage.retire_indexes(GONE, drop_delay=DELAY)
        assert not changes.retired and not changes.dropped
        assert changes.shared == sorted(_names(second, any_url))
        # Its entry stays: retiring it again once Other stops declaring it retires it.
        built = await storage.list_indexes()
        assert _recorded(built, GONE) == _names(first, any_url) and not _retired(built)
        assert _recorded(built, "nexus.storage.evo.Other") == _names(second, any_url)
        assert await nexus_indexes(any_url) == _names(second, any_url)
        await storage.apply_indexes([item_type({"owner": "string"}, [], name="Other")])
        again = await storage.retire_indexes(GONE, drop_delay=0)
        assert again.dropped == sorted(_names(first, any_url)) and not again.shared
        assert not await nexus_indexes(any_url)


async def test_an_index_on_the_same_keys_another_type_uses_is_kept(any_url: str) -> None:
    # Declarations differing in their value kinds only: two indexes on SQL, one on
    # MongoDB (built under the first one's name), which Other's lists use too.
    gone = item_type({"owner": "string"}, [["owner"]], name="Gone")
    other = item_type({"owner": "int64"}, [["owner"]], name="Other")
    async with connected(any_url) as storage:
        await storage.apply_indexes([gone, other])
        before = await nexus_indexes(any_url)
        changes = await storage.retire_indexes(GONE, drop_delay=0)
        if any_url.startswith("mongodb"):
            assert changes.shared == sorted(_names(gone, any_url)) and not changes.dropped
            assert await nexus_indexes(any_url) == before
        else:
            assert changes.dropped == sorted(_names(gone, any_url)) and not changes.shared
            assert await nexus_indexes(any_url) == _names(other, any_url)


async def test_a_zero_delay_drops_them_at_once(any_url: str) -> None:
    gone, kept = _types()
    async with connected(any_url) as storage:
        await storage.apply_indexes([gone, kept])
        changes = await storage.retire_indexes(GONE, drop_delay=0)
        assert changes.dropped == sorted(_names(gone, any_url)) and not changes.retired
        assert await nexus_indexes(any_url) == _names(kept, any_url)
        assert not _retired(await storage.list_indexes())


async def test_a_negative_delay_is_refused(tmp_path: Path) -> None:
    async with connected(f"sqlite+aiosqlite:///{tmp_path}/nexus.db") as storage:
        with pytest.raises(ValueError, match="delay"):
            await storage.retire_indexes(GONE, drop_delay=-1)


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request, tmp_path)


async def test_a_retry_after_an_attempt_that_failed_half_way_reports_the_retirement(
    sql_url: str,
) -> None:
    url = sql_url
    gone, _ = _types()
    names = _names(gone, url)
    async with connected(url) as storage:
        await storage.apply_indexes([gone], drop_delay=DELAY)
        # An attempt that wrote the retirements, then failed before the catalog rows went.
        earlier = datetime.now(UTC) - timedelta(seconds=1)
        async with storage._backend._database.transaction(write=True) as conn:  # type: ignore[attr-defined]
            for name in sorted(names):
                await conn.execute(
                    index_retired.insert().values(index_name=name, retired_at=earlier)
                )
        again = await storage.retire_indexes(GONE, drop_delay=DELAY)
        assert again.retired == sorted(names)
        built = await storage.list_indexes()
        assert not _recorded(built, GONE)
        # Retired once, from the first attempt on: not twice, the clock not restarted.
        assert [i.retired_at for i in built if i.retired_at is not None] == [earlier] * len(names)
