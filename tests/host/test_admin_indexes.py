"""The storage indexes through the admin service: listed for every type any process
built them for, and retired by an operator for a type no process declares any more."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from nexus.orders.v1 import orders_pb2

from nexus_grpc.config import StorageConfig
from nexus_grpc.storage.declared import declared_indexes
from nexus_grpc.testing import RunningHost, running_host
from tests.fixtures.cli import run_cli
from tests.storage import connected
from tests.storage.test_indexes import item_type

ORDER = "nexus.orders.v1.Order"
#: Long enough that nothing retired in a test is dropped during it.
DELAY = 600.0


@dataclass
class Admin:
    running: RunningHost
    url: str
    stub: Any


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    url = f"sqlite:///{tmp_path}/nexus.db"
    async with running_host(
        plugins=["orders"],
        data_dir=tmp_path / "data",
        storage_url=url,
        storage=StorageConfig(index_drop_delay=DELAY),
        http=True,
    ) as running:
        stub = admin_pb2_grpc.AdminServiceStub(running.channel(running.token("ops")))
        yield Admin(running, url, stub)


async def _removed_plugins_type(url: str) -> tuple[str, set[str]]:
    """A type whose indexes another process built (its plugin since removed): its name
    and its indexes' names."""
    gone = item_type({"owner": "string"}, [["owner"]], name="Gone")
    async with connected(url) as storage:
        await storage.apply_indexes([gone])
    return gone.DESCRIPTOR.full_name, {i.name for i in declared_indexes(gone.DESCRIPTOR)}


async def _listed(admin: Admin) -> list[admin_pb2.StorageIndex]:
    return list((await admin.stub.ListIndexes(admin_pb2.ListIndexesRequest())).indexes)


async def test_every_process_s_indexes_are_listed(admin: Admin) -> None:
    gone, names = await _removed_plugins_type(admin.url)
    listed = await _listed(admin)
    orders = {i.name for i in listed if i.message_type == ORDER}
    assert orders and orders == {i.name for i in declared_indexes(orders_pb2.Order.DESCRIPTOR)}
    assert {i.name for i in listed if i.message_type == gone} == names
    assert all(i.definition and not i.HasField("retire_time") for i in listed)


async def test_an_operator_retires_the_indexes_of_a_removed_plugin_s_type(admin: Admin) -> None:
    gone, names = await _removed_plugins_type(admin.url)
    reply = await admin.stub.RetireIndexes(admin_pb2.RetireIndexesRequest(message_type=gone))
    assert set(reply.retired) == names and not reply.dropped and not reply.kept
    assert reply.drop_delay == DELAY
    listed = await _listed(admin)
    assert not [i for i in listed if i.message_type == gone]
    retired = {i.name: i for i in listed if i.HasField("retire_time")}
    assert set(retired) == names
    now = time.time()
    assert all(not i.message_type for i in retired.values())
    assert all(abs(i.retire_time.seconds - now) < 60 for i in retired.values())
    # Again: nothing is recorded for it any more.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await admin.stub.RetireIndexes(admin_pb2.RetireIndexesRequest(message_type=gone))
    assert again.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_type_this_host_loads_is_refused(admin: Admin) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.stub.RetireIndexes(admin_pb2.RetireIndexesRequest(message_type=ORDER))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "contract of nexus.orders.v1.Order loaded" in (refused.value.details() or "")
    assert not [i for i in await _listed(admin) if i.HasField("retire_time")]
    assert ORDER in {i.message_type for i in await _listed(admin)}


async def test_rest_bad_names_and_permissions(admin: Admin) -> None:
    running = admin.running
    headers = {"Authorization": f"Bearer {running.token('ops')}"}
    async with httpx.AsyncClient(base_url=running.http_url, headers=headers) as client:
        unknown = await client.post(
            "/v1/admin/indexes:retire", json={"messageType": "acme.notes.v1.Note"}
        )
        assert unknown.status_code == 404
        bad = await client.post("/v1/admin/indexes:retire", json={"messageType": "not a type"})
        assert bad.status_code == 400 and "message_type" in bad.text
        listed = await client.get("/v1/admin/indexes")
        assert listed.status_code == 200
        assert ORDER in {i["messageType"] for i in listed.json()["indexes"]}
    # Authentication comes before any work, the request's validation included.
    async with httpx.AsyncClient(base_url=running.http_url) as anonymous:
        refused = await anonymous.post("/v1/admin/indexes:retire", json={"messageType": "x y"})
        assert refused.status_code == 401
    reader = admin_pb2_grpc.AdminServiceStub(
        running.channel(running.token("reader", grants=["storage.read:all"]))
    )
    assert (await reader.ListIndexes(admin_pb2.ListIndexesRequest())).indexes
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await reader.RetireIndexes(admin_pb2.RetireIndexesRequest(message_type=ORDER))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_cli_lists_and_retires(admin: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    gone, names = await _removed_plugins_type(admin.url)
    target = ("--address", admin.running.address, "--token", admin.running.token("ops"))

    code, out, _ = await run_cli(capsys, "storage", "indexes", *target)
    assert code == 0 and gone in out and ORDER in out
    code, out, _ = await run_cli(capsys, "storage", "retire-indexes", gone, *target)
    assert code == 0
    assert out.splitlines() == [
        f"nexus storage: retired {name}; dropped after {DELAY:g}s" for name in sorted(names)
    ]
    code, out, _ = await run_cli(capsys, "storage", "indexes", "--json", *target)
    listed = json.loads(out)
    assert code == 0 and {i["name"] for i in listed if "retireTime" in i} == names
    code, _, err = await run_cli(capsys, "storage", "retire-indexes", ORDER, *target)
    assert code == 1 and "FAILED_PRECONDITION" in err
