"""PostgreSQL point reads by id share their statements under load (``_postgres_reads``):
every reader gets its own record, sees what was committed before it asked, and a
cancelled or failing reader affects nobody else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from nexus.orders.v1 import orders_pb2

from nexus_grpc.storage import Repository, Storage, StorageUnavailableError
from nexus_grpc.storage._postgres_points import PostgresPoints
from nexus_grpc.storage._postgres_reads import batched_form
from nexus_grpc.storage._postgres_units import ends_the_session
from nexus_grpc.storage.points import points_for
from tests.storage import connected

Order = orders_pb2.Order


@pytest.fixture
async def storage(postgres_url: str) -> AsyncIterator[Storage]:
    async with connected(postgres_url) as storage:
        yield storage


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The read statements asyncpg sends from now on (the real driver runs them)."""
    sent: list[str] = []
    fetch = asyncpg.Connection.fetch

    async def recording(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(query)
        return await fetch(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "fetch", recording)
    return sent


async def orders_with(storage: Storage, count: int) -> Repository[Order]:
    orders = storage.namespace("reads").repository(Order)
    for n in range(count):
        await orders.create(Order(id=f"o{n}", customer_id=f"c{n}"))
    return orders


def end_sessions(postgres_server: Any, postgres_url: str) -> None:
    """End every session of ``postgres_url``'s database (as a server restart would)."""
    database = postgres_url.rsplit("/", 1)[1]
    postgres_server.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )


def test_only_plain_point_reads_by_id_are_shared() -> None:
    points = points_for("postgresql")
    assert batched_form(points.payload) == (
        "SELECT id, payload FROM nexus_records WHERE namespace = $1 AND collection = $2 "
        "AND id = ANY($3::text[])"
    )
    assert batched_form(points.select) is not None
    for unshared in (points.payload_for_update, points.select_for_update, points.delete):
        assert batched_form(unshared) is None
    assert batched_form("SELECT payload FROM a JOIN b WHERE namespace = $1") is None


async def test_concurrent_reads_share_statements_and_each_gets_its_own_record(
    storage: Storage, statements: list[str]
) -> None:
    orders = await orders_with(storage, 40)
    statements.clear()
    # Every id twice, and ids no record has.
    wanted = [f"o{n % 40}" for n in range(80)] + ["missing", "gone"]
    found = await asyncio.gather(*(orders.get(id) for id in wanted))
    assert [order.customer_id if order else None for order in found] == [
        f"c{n % 40}" for n in range(80)
    ] + [None, None]
    shared = [sql for sql in statements if "ANY(" in sql]
    assert shared, statements
    assert len(statements) < len(wanted) // 4, statements
    # get_record shares its own statement, with versions and times intact.
    records = await asyncio.gather(*(orders.get_record(f"o{n}") for n in range(40)))
    assert all(
        r is not None and r.version == 1 and r.message.id == f"o{n}" for n, r in enumerate(records)
    )


@dataclass
class Holds:
    """Read statements held after they ran, keeping their place among those running."""

    on: bool = False
    #: One per statement held, in the order they ran: set it to let that one return.
    gates: list[asyncio.Event] = field(default_factory=list)

    async def wait_for(self, count: int) -> None:
        while len(self.gates) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
def holds(monkeypatch: pytest.MonkeyPatch) -> Holds:
    """While ``on``, every read statement is held once it has its rows."""
    holds = Holds()
    read = PostgresPoints._read

    async def holding_read(self: Any, sql: str, params: Any) -> Any:
        rows = await read(self, sql, params)
        if holds.on:
            gate = asyncio.Event()
            holds.gates.append(gate)
            await gate.wait()
        return rows

    monkeypatch.setattr(PostgresPoints, "_read", holding_read)
    return holds


async def test_a_read_asked_after_a_write_committed_waits_for_a_statement_sent_after_it(
    postgres_url: str, holds: Holds, statements: list[str]
) -> None:
    async with connected(postgres_url) as storage:
        orders = await orders_with(storage, 4)
        holds.on = True
        alone = [asyncio.ensure_future(orders.get(f"o{n}")) for n in range(2)]
        await holds.wait_for(2)
        waiting = [asyncio.ensure_future(orders.get(f"o{n}")) for n in (2, 3)]
        await asyncio.sleep(0)
        holds.gates[0].set()  # the first ends: the two waiting go in a shared statement
        await holds.wait_for(3)
        holds.on = False
        assert [sql for sql in statements if "ANY(" in sql] == [statements[-1]]
        # Two statements of the shape in flight, one shared, both sent before this commit.
        await orders.create(Order(id="late"))
        late = asyncio.ensure_future(orders.get("late"))
        await asyncio.sleep(0.2)
        assert not late.done()  # waiting: it must not ride on a statement already sent
        holds.gates[1].set()  # the second alone ends: the next statement reads "late"
        assert await late == Order(id="late")
        holds.gates[2].set()
        found = await asyncio.gather(*alone, *waiting)
        assert [order.id for order in found if order] == ["o0", "o1", "o2", "o3"]
        assert sum("ANY(" in sql for sql in statements) == 2, statements


async def test_one_readers_bad_id_fails_only_that_reader(
    storage: Storage, statements: list[str]
) -> None:
    orders = await orders_with(storage, 20)
    statements.clear()
    # A lone surrogate: the driver cannot encode it, and refuses the whole statement.
    wanted = [f"o{n}" for n in range(20)] + ["bad\ud800id"]
    outcomes = await asyncio.gather(*(orders.get(id) for id in wanted), return_exceptions=True)
    assert outcomes[:20] == [Order(id=f"o{n}", customer_id=f"c{n}") for n in range(20)]
    assert isinstance(outcomes[20], Exception) and "surrogates" in str(outcomes[20])
    assert any("ANY(" in sql for sql in statements), statements


async def test_a_shared_statement_refused_as_a_whole_is_not_sent_again_per_read(
    postgres_url: str, statements: list[str]
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    locker = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        # Every statement of the connections opened from now on times out after 0.2 s.
        await locker.execute(f"ALTER DATABASE \"{database}\" SET statement_timeout = '200ms'")
        async with connected(postgres_url) as storage:
            orders = await orders_with(storage, 1)
            statements.clear()
            async with locker.transaction():
                # Every read waits for this lock until its timeout.
                await locker.execute("LOCK TABLE nexus_records IN ACCESS EXCLUSIVE MODE")
                outcomes = await asyncio.gather(
                    *(orders.get(f"x{n}") for n in range(30)), return_exceptions=True
                )
            assert all(isinstance(outcome, Exception) for outcome in outcomes), outcomes
            # Two alone and one shared for the rest, each sent once: a timeout is the
            # statement's, and would come again for each read alone.
            assert len(statements) == 3, statements
            assert await orders.get("o0") == Order(id="o0", customer_id="c0")
    finally:
        await locker.close()


def test_only_errors_that_end_the_session_close_a_connection() -> None:
    assert ends_the_session(asyncpg.AdminShutdownError("terminating connection"))
    assert ends_the_session(asyncpg.ConnectionDoesNotExistError("connection was closed"))
    assert not ends_the_session(asyncpg.UniqueViolationError("duplicate key"))
    assert not ends_the_session(asyncpg.QueryCanceledError("statement timeout"))


async def test_a_read_on_a_connection_ended_while_idle_is_sent_again_on_a_new_one(
    postgres_server: Any, postgres_url: str
) -> None:
    async with connected(postgres_url) as storage:
        orders = await orders_with(storage, 1)
        for _ in range(3):
            end_sessions(postgres_server, postgres_url)
            # No wait: the idle connection's end of stream is not read yet.
            assert await orders.get("o0") == Order(id="o0", customer_id="c0")
            assert storage.health.healthy


async def test_a_cancelled_reader_leaves_the_others_their_records(
    storage: Storage, statements: list[str]
) -> None:
    orders = await orders_with(storage, 30)
    statements.clear()
    readers = [asyncio.ensure_future(orders.get(f"o{n}")) for n in range(30)]
    await asyncio.sleep(0)  # the first ones sent, the rest waiting to share
    cancelled = readers[3::4]
    for reader in cancelled:
        reader.cancel()
    for n, reader in enumerate(readers):
        if reader in cancelled:
            with pytest.raises(asyncio.CancelledError):
                await reader
        else:
            assert (await reader) == Order(id=f"o{n}", customer_id=f"c{n}")
    assert any("ANY(" in sql for sql in statements)
    # The connections are fine afterwards.
    assert await orders.get("o0") == Order(id="o0", customer_id="c0")


async def test_readers_waiting_when_the_database_goes_away_all_fail_clearly(
    postgres_url: str, postgres_server: Any
) -> None:
    async with connected(postgres_url) as storage:
        orders = await orders_with(storage, 5)
        readers = [asyncio.ensure_future(orders.get(f"o{n % 5}")) for n in range(40)]
        await asyncio.sleep(0)
        end_sessions(postgres_server, postgres_url)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*readers, return_exceptions=True), timeout=30
        )
        # Each reader has an answer: its record, or the storage's "unavailable".
        for outcome in outcomes:
            assert isinstance(outcome, (Order, StorageUnavailableError)), outcome
        assert await orders.get("o1") == Order(id="o1", customer_id="c1")


async def test_reads_waiting_when_the_storage_closes_end(postgres_url: str) -> None:
    storage = await Storage.connect(postgres_url)
    orders = await orders_with(storage, 5)
    readers = [asyncio.ensure_future(orders.get(f"o{n % 5}")) for n in range(40)]
    await asyncio.sleep(0)
    await storage.close()
    outcomes = await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 30)
    for outcome in outcomes:
        assert isinstance(outcome, (Order, RuntimeError)), outcome
    with contextlib.suppress(RuntimeError):
        await orders.get("o1")
