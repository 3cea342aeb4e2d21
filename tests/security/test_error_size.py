"""Errors never repeat a request's values unbounded (issue 9, class 13).

A status travels in trailers on gRPC and gRPC-Web, and gRPC clients refuse metadata
past 8-16 KiB with RESOURCE_EXHAUSTED: an error quoting a 20,000-character value used
to arrive as that instead of its own code. Each example is sent over gRPC, REST and
gRPC-Web; the real code must arrive, with small trailers and a small body.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote as urlquote

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from nexus.auth.v1 import auth_pb2
from nexus.inventory.v1 import inventory_pb2
from nexus.orders.v1 import orders_pb2

from nexus_grpc.bounded import MESSAGE_LIMIT, STATUS_LIMIT
from nexus_grpc.testing import RunningHost, running_host
from tests.security.conftest import REPO

HUGE = 20_000
#: grpc-core's default soft limit on received metadata: everything must stay under it.
METADATA_SOFT_LIMIT = 8 * 1024


@dataclass(frozen=True)
class Case:
    """One call whose error quotes a huge value: gRPC path, request, REST route."""

    name: str
    path: str
    request: Message
    rest_method: str
    rest_path: str
    rest_body: Any
    code: grpc.StatusCode


def _cases() -> list[Case]:
    role = "r" * HUGE
    username = "u" * HUGE
    mask_path = "p" * HUGE
    order_id = "o" * HUGE
    return [
        Case(
            "role",
            "/nexus.auth.v1.AuthService/SetUserRoles",
            auth_pb2.SetUserRolesRequest(username="alice", roles=[role]),
            "POST",
            "/v1/users/alice:setRoles",
            {"roles": [role]},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        Case(
            "username",
            "/nexus.auth.v1.AuthService/SetUserRoles",
            auth_pb2.SetUserRolesRequest(username=username),
            "POST",
            f"/v1/users/{username}:setRoles",
            {},
            grpc.StatusCode.NOT_FOUND,
        ),
        Case(
            "field-mask path",
            "/nexus.orders.v1.OrdersService/UpdateOrder",
            orders_pb2.UpdateOrderRequest(
                order=orders_pb2.Order(id="o-1"),
                update_mask=field_mask_pb2.FieldMask(paths=[mask_path]),
            ),
            "PATCH",
            f"/v1/orders/o-1?updateMask={mask_path}",
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        Case(
            "order id",
            "/nexus.inventory.v1.InventoryService/Reserve",
            inventory_pb2.ReserveRequest(
                order_id=order_id, lines=[inventory_pb2.ReservationLine(sku="s", quantity=1)]
            ),
            "POST",
            f"/v1/reservations/{order_id}",
            {"lines": [{"sku": "s", "quantity": 1}]},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]


CASES = _cases()


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[RunningHost]:
    async with running_host(
        plugins=["auth", "orders", "inventory"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path,
        http=True,
    ) as host:
        yield host


def _size(metadata: Any) -> int:
    return sum(len(key) + len(value) for key, value in metadata or ())


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_huge_value_gets_its_real_error_over_grpc(host: RunningHost, case: Case) -> None:
    call = host.channel(host.token()).unary_unary(
        case.path,
        request_serializer=type(case.request).SerializeToString,
        response_deserializer=bytes,
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call(case.request, timeout=10)
    error = failure.value
    assert error.code() == case.code, error.details()
    assert len(error.details().encode()) <= MESSAGE_LIMIT + 64
    trailers = error.trailing_metadata()
    assert _size(trailers) < METADATA_SOFT_LIMIT
    details = dict(trailers)["grpc-status-details-bin"]
    assert isinstance(details, bytes) and len(details) <= STATUS_LIMIT
    assert status_pb2.Status.FromString(details).code == case.code.value[0]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_huge_value_gets_its_real_error_over_rest(host: RunningHost, case: Case) -> None:
    async with httpx.AsyncClient(base_url=host.http_url, timeout=10) as http:
        response = await http.request(
            case.rest_method,
            urlquote(case.rest_path, safe="/:?="),
            json=case.rest_body,
            headers={"authorization": f"Bearer {host.token()}"},
        )
    body = response.json()
    assert body["code"] == case.code.value[0], body["message"][:300]
    assert len(response.content) < 2 * STATUS_LIMIT
    assert len(body["message"].encode()) <= MESSAGE_LIMIT + 64


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_huge_value_gets_its_real_error_over_grpc_web(
    host: RunningHost, case: Case
) -> None:
    payload = case.request.SerializeToString()
    async with httpx.AsyncClient(base_url=host.http_url, timeout=10) as http:
        response = await http.post(
            case.path,
            content=struct.pack(">BI", 0, len(payload)) + payload,
            headers={
                "content-type": "application/grpc-web+proto",
                "authorization": f"Bearer {host.token()}",
            },
        )
    raw = response.content
    # The trailer frame is the last one: flag 0x80, 4-byte length, then the block.
    frames: list[tuple[int, bytes]] = []
    while raw:
        flag, length = struct.unpack(">BI", raw[:5])
        frames.append((flag, raw[5 : 5 + length]))
        raw = raw[5 + length :]
    flag, block = frames[-1]
    assert flag == 0x80
    assert len(block) < METADATA_SOFT_LIMIT
    trailers = dict(line.split(":", 1) for line in block.decode().split("\r\n") if line)
    assert trailers["grpc-status"] == str(case.code.value[0]), trailers["grpc-message"][:300]
    status = status_pb2.Status.FromString(base64.b64decode(trailers["grpc-status-details-bin"]))
    assert status.code == case.code.value[0]


async def test_the_order_id_is_refused_under_its_own_name(host: RunningHost) -> None:
    # It was refused by the storage layer under the stored record's field, "id".
    request = inventory_pb2.ReserveRequest(
        order_id="o" * 300, lines=[inventory_pb2.ReservationLine(sku="s", quantity=1)]
    )
    call = host.channel(host.token()).unary_unary(
        "/nexus.inventory.v1.InventoryService/Reserve",
        request_serializer=inventory_pb2.ReserveRequest.SerializeToString,
        response_deserializer=bytes,
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call(request, timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details().startswith("order_id: ")
