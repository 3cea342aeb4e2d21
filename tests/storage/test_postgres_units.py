"""Units of work on PostgreSQL run on the asyncpg point connections: rollback on errors
and cancellation, built statements (lists, delete_many) inside them, lost connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nexus.orders.v1 import orders_pb2

from nexus_grpc.errors import ConflictError
from nexus_grpc.storage import Storage
from nexus_grpc.storage.faults import StorageUnavailableError
from tests.fixtures.postgres import PostgresServer
from tests.storage import connected

Order = orders_pb2.Order


class Boom(Exception):
    """Raised inside a unit of work to make it roll back."""


@pytest.fixture
async def storage(postgres_url: str) -> AsyncIterator[Storage]:
    async with connected(postgres_url) as opened:
        yield opened


async def _ids(storage: Storage) -> list[str]:
    return [o.id for o in (await storage.namespace("units").repository(Order).list()).items]


async def test_lists_and_delete_many_inside_a_unit_see_its_own_writes(storage: Storage) -> None:
    namespace = storage.namespace("units")
    async with namespace.transaction() as unit:
        repo = unit.repository(Order)
        for number in range(5):
            await repo.create(Order(id=f"o{number}", customer_id=f"c{number % 2}", note="n"))
        page = await repo.list(filter={"customer_id": "c0"}, order_by="id desc", page_size=2)
        assert [o.id for o in page.items] == ["o4", "o2"]
        rest = await repo.list(
            filter={"customer_id": "c0"},
            order_by="id desc",
            page_size=2,
            page_token=page.next_page_token,
        )
        assert [o.id for o in rest.items] == ["o0"] and not rest.next_page_token
        assert await repo.delete_many(["o1", "o3", "missing"]) == 2
        # Not visible outside before the commit.
        assert await _ids(storage) == []
    assert await _ids(storage) == ["o0", "o2", "o4"]


async def test_an_error_after_a_refused_statement_rolls_back_and_the_next_unit_works(
    storage: Storage,
) -> None:
    namespace = storage.namespace("units")
    await namespace.repository(Order).create(Order(id="kept"))
    for _ in range(3):  # more rounds than one connection: each is given back clean
        with pytest.raises(ConflictError):  # noqa: PT012 - the unit of work raises as it ends
            async with namespace.transaction() as unit:
                repo = unit.repository(Order)
                await repo.create(Order(id="lost"))
                await repo.update(Order(id="kept", note="x"), expected_version=7)
    with pytest.raises(Boom):  # noqa: PT012 - the unit of work raises as it ends
        async with namespace.transaction() as unit:
            await unit.repository(Order).create(Order(id="lost"))
            raise Boom
    async with namespace.transaction() as unit:
        await unit.repository(Order).create(Order(id="after"))
    assert await _ids(storage) == ["after", "kept"]


@pytest.mark.parametrize("where", ["mid-statement", "between statements"])
async def test_a_cancelled_unit_commits_nothing_and_leaves_the_storage_working(
    storage: Storage, where: str
) -> None:
    namespace = storage.namespace("units")
    started = asyncio.Event()

    async def cancelled_unit() -> None:
        async with namespace.transaction() as unit:
            repo = unit.repository(Order)
            await repo.create(Order(id="first"))
            started.set()
            if where == "between statements":
                await asyncio.sleep(30)
            for number in range(1000):  # cancelled while one of these runs
                await repo.create(Order(id=f"more-{number}"))

    for _ in range(3):
        started.clear()
        task = asyncio.create_task(cancelled_unit())
        await started.wait()
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    async with asyncio.timeout(5):
        results = await asyncio.gather(*(_create_in_unit(storage, f"after-{n}") for n in range(12)))
    assert len(results) == 12
    assert await _ids(storage) == sorted(f"after-{n}" for n in range(12))
    assert storage.health.healthy


async def _create_in_unit(storage: Storage, order_id: str) -> Order:
    async with storage.namespace("units").transaction() as unit:
        return await unit.repository(Order).create(Order(id=order_id))


async def test_a_connection_lost_inside_a_unit_is_unavailable_and_the_next_unit_reconnects(
    postgres_server: PostgresServer, postgres_url: str, storage: Storage
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    namespace = storage.namespace("units")
    with pytest.raises(StorageUnavailableError):  # noqa: PT012 - the unit of work raises as it ends
        async with namespace.transaction() as unit:
            repo = unit.repository(Order)
            await repo.create(Order(id="lost"))
            postgres_server.psql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(0.1)  # the end of stream reaches the client
            await repo.create(Order(id="lost-too"))
    # The lost connection is not given back, idle ones the server closed are dropped:
    # the next unit works on a fresh connection.
    await _create_in_unit(storage, "after")
    orders = namespace.repository(Order)
    assert await orders.get("after") == Order(id="after")
    assert await orders.get("lost") is None
