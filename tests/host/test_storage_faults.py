"""A host whose storage fails: UNAVAILABLE on every transport, health NOT_SERVING until
a probe finds it works, events waiting instead of dead-lettered, no secrets in the log.

The failures are real: a SQLite database on a tmpfs the test fills up, a PostgreSQL
database switched to read-only, a table dropped under a running host.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import stat
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc
from nexus.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from nexus.orders.v1 import events_pb2 as order_events
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.config import EventsConfig, StorageConfig
from nexus_grpc.events import seal
from nexus_grpc.events.bus import UNAVAILABLE
from nexus_grpc.gateway.grpcweb import decode_frames, encode_frame
from nexus_grpc.storage import RECORDS_TABLE
from nexus_grpc.testing import RunningHost, running_host
from tests.fixtures.disk import SmallDisk
from tests.fixtures.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]
MAX_ATTEMPTS = 3
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def new_order(sku: str, quantity: int) -> orders_pb2.CreateOrderRequest:
    return orders_pb2.CreateOrderRequest(
        order=orders_pb2.Order(
            customer_id="c1",
            currency_code="EUR",
            items=[orders_pb2.LineItem(sku=sku, quantity=quantity)],
        )
    )


async def health(host: RunningHost, service: str) -> int:
    reply = await health_pb2_grpc.HealthStub(host.channel()).Check(
        health_pb2.HealthCheckRequest(service=service)
    )
    return int(reply.status)


def shop(data_dir: Path, storage_url: str = "") -> object:
    return running_host(
        plugins=["orders", "inventory"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=data_dir,
        storage_url=storage_url,
        http=True,
        events=EventsConfig(max_attempts=MAX_ATTEMPTS, retry_backoff=0.01),
        storage=StorageConfig(probe_interval=0.05),
    )


async def test_a_full_disk_is_unavailable_everywhere_and_events_wait_for_the_repair(
    small_disk: SmallDisk,
) -> None:
    async with shop(small_disk.path / "data") as host:  # type: ignore[attr-defined]
        assert isinstance(host, RunningHost)
        channel = host.channel(host.token())
        orders = orders_pb2_grpc.OrdersServiceStub(channel)
        inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
        await inventory.SetStock(inventory_pb2.SetStockRequest(sku="PEN-7", available=5))
        created = await orders.CreateOrder(new_order("PEN-7", 2))

        async def confirmed() -> bool:
            got = await orders.GetOrder(orders_pb2.GetOrderRequest(id=created.id))
            return bool(got.status == orders_pb2.ORDER_STATUS_CONFIRMED)

        await eventually(confirmed)
        assert await health(host, "nexus.storage") == SERVING

        small_disk.fill()
        try:
            # gRPC: UNAVAILABLE with a short cause, no SQL.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await orders.CreateOrder(new_order("PEN-7", 1))
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert raised.value.details() == "storage unavailable: disk full"
            # REST: 503 with the same message.
            async with httpx.AsyncClient(
                base_url=host.http_url, headers={"authorization": f"Bearer {host.token()}"}
            ) as client:
                answer = await client.post(
                    "/v1/orders",
                    json={
                        "customerId": "c1",
                        "currencyCode": "EUR",
                        "items": [{"sku": "PEN-7", "quantity": 1}],
                    },
                )
                assert answer.status_code == 503
                assert answer.json()["message"] == "storage unavailable: disk full"
                assert "INSERT" not in answer.text
                # gRPC-Web: the same status in the trailer frame.
                web = await client.post(
                    "/nexus.orders.v1.OrdersService/CreateOrder",
                    content=encode_frame(0, new_order("PEN-7", 1).SerializeToString()),
                    headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
                )
                [(_, trailer)] = [f for f in decode_frames(web.content) if f[0] == 0x80]
                assert "grpc-status:14\r\n" in trailer.decode()
                assert "grpc-message:storage unavailable: disk full" in unquote(trailer.decode())
                scraped = (await client.get("/metrics")).text
            assert 'nexus_storage_unavailable_total{cause="disk full"}' in scraped
            assert "nexus_storage_healthy 0.0" in scraped
            # Health: the storage and the host as a whole stop serving.
            assert await health(host, "nexus.storage") == NOT_SERVING
            assert await health(host, "") == NOT_SERVING
            # An event whose handler needs the storage waits: it is not dead-lettered.
            cancelled = orders_pb2.Order()
            cancelled.CopyFrom(created)
            cancelled.status = orders_pb2.ORDER_STATUS_CANCELLED
            await host.host.bus.publish(
                seal(order_events.OrderCancelled(order=cancelled), source="orders")
            )
            key = ("inventory", "nexus.orders.v1.OrderCancelled", UNAVAILABLE)
            counters = host.host.bus.counters  # type: ignore[attr-defined]

            async def waited_past_the_attempts() -> bool:
                return bool(counters.handled.get(key, 0) > MAX_ATTEMPTS + 1)

            await eventually(waited_past_the_attempts)
            assert host.host.bus.dead_letters() == []
        finally:
            small_disk.free()

        async def serving_again() -> bool:
            return await health(host, "nexus.storage") == SERVING and await health(host, "") == (
                SERVING
            )

        await eventually(serving_again)

        async def released() -> bool:
            stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="PEN-7"))
            return (stock.available, stock.reserved) == (5, 0)

        await eventually(released)  # the waiting event was handled after the repair
        assert host.host.bus.dead_letters() == []
        assert (await orders.CreateOrder(new_order("PEN-7", 1))).id


async def test_a_read_only_postgres_is_unavailable_until_repaired(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    async with shop(tmp_path, postgres_url) as host:  # type: ignore[attr-defined]
        assert isinstance(host, RunningHost)
        orders = orders_pb2_grpc.OrdersServiceStub(host.channel(host.token()))
        await orders.CreateOrder(new_order("PEN-7", 1))
        _read_only(postgres_server, database, on=True)
        try:
            details = set()
            for _ in range(3):  # the first may meet a pooled connection that was cut
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await orders.CreateOrder(new_order("PEN-7", 1))
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                details.add(raised.value.details())
            assert "storage unavailable: read-only database" in details
            assert await health(host, "nexus.storage") == NOT_SERVING
        finally:
            _read_only(postgres_server, database, on=False)

        async def serving_again() -> bool:
            return await health(host, "nexus.storage") == SERVING

        await eventually(serving_again)
        assert (await orders.CreateOrder(new_order("PEN-7", 1))).id


def _read_only(server: PostgresServer, database: str, *, on: bool) -> None:
    server.psql(
        f'ALTER DATABASE "{database}" SET default_transaction_read_only = {"on" if on else "off"}'
    )
    server.psql(  # the setting applies to new sessions: cut the pooled ones
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )


async def test_a_storage_error_creating_a_user_logs_no_password_hash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_host(
        plugins=["auth"], plugin_dirs=[REPO / "plugins"], data_dir=tmp_path, http=True
    ) as host:
        users = auth_pb2_grpc.AuthServiceStub(host.channel(host.token()))
        # A failure that is nobody's outage (INTERNAL), raised by the very INSERT that
        # carries the password record: SQLite fails it on malformed JSON.
        with sqlite3.connect(tmp_path / "nexus.db") as raw:
            raw.execute(
                f"CREATE TRIGGER refuse_hashes BEFORE INSERT ON {RECORDS_TABLE} "
                "WHEN instr(NEW.payload, 'scrypt$') > 0 BEGIN SELECT json('{broken'); END"
            )
        username = f"user-{uuid.uuid4().hex[:12]}"  # in no source line a traceback shows
        with caplog.at_level(logging.DEBUG), pytest.raises(grpc.aio.AioRpcError) as raised:
            await users.CreateUser(
                auth_pb2.CreateUserRequest(
                    user=auth_pb2.User(username=username), password="correct horse battery"
                )
            )
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "malformed JSON" in caplog.text  # the log still says what went wrong
    assert "scrypt$" not in caplog.text
    assert username not in caplog.text
    assert "correct horse" not in caplog.text


async def test_every_file_the_host_creates_in_its_data_dir_is_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"  # created by the host
    async with running_host(
        plugins=["auth", "orders"], plugin_dirs=[REPO / "plugins"], data_dir=data
    ) as host:
        orders = orders_pb2_grpc.OrdersServiceStub(host.channel(host.token()))
        await orders.CreateOrder(new_order("PEN-7", 1))  # the WAL has something in it
        found = {path.relative_to(data).as_posix(): path for path in data.rglob("*")}
        assert {"nexus.db", "nexus.db-wal", "nexus.db-shm", "jwt-hs256.key"} <= set(found)
        for name, path in found.items():
            expected = 0o700 if path.is_dir() else 0o600
            assert stat.S_IMODE(path.stat().st_mode) == expected, name
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
