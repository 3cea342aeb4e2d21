"""Well-known types are checked against their own contracts, on every transport.

The protobuf runtime accepts a Timestamp of year 10000, negative nanos, a Duration of
the wrong sign, any FieldMask path and any Any type URL from the wire; JSON refuses
most of them when parsing. The validation stage checks them wherever a request holds
them, so a handler never sees one (``ToDatetime()`` once raised INTERNAL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import any_pb2, duration_pb2, field_mask_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.access.validation import compile_validator
from nexus_grpc.plugins.services import Services
from nexus_grpc.testing import RunningHost, running_host

REPO = Path(__file__).resolve().parents[2]
MAX_SECONDS = 253_402_300_799
MIN_SECONDS = -62_135_596_800


def violated(message: Any) -> list[str]:
    validate = compile_validator(message.DESCRIPTOR)
    assert validate is not None
    return [violation.field for violation in validate(message)]


@pytest.mark.parametrize(
    ("seconds", "nanos", "fields"),
    [
        (0, 0, []),
        (MAX_SECONDS, 999_999_999, []),
        (MIN_SECONDS, 0, []),
        (MAX_SECONDS + 1, 0, ["seconds"]),
        (MIN_SECONDS - 1, 0, ["seconds"]),
        (0, -1, ["nanos"]),
        (0, 1_000_000_000, ["nanos"]),
        (2**62, -5, ["seconds", "nanos"]),
    ],
)
def test_timestamp_range(seconds: int, nanos: int, fields: list[str]) -> None:
    assert violated(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)) == fields


@pytest.mark.parametrize(
    ("seconds", "nanos", "fields"),
    [
        (0, 0, []),
        (315_576_000_000, 999_999_999, []),
        (-315_576_000_000, -999_999_999, []),
        (0, -5, []),
        (315_576_000_001, 0, ["seconds"]),
        (-315_576_000_001, 0, ["seconds"]),
        (1, -1, ["nanos"]),
        (-1, 1, ["nanos"]),
        (0, 1_000_000_000, ["nanos"]),
    ],
)
def test_duration_range_and_sign(seconds: int, nanos: int, fields: list[str]) -> None:
    assert violated(duration_pb2.Duration(seconds=seconds, nanos=nanos)) == fields


def test_field_mask_paths_are_field_names() -> None:
    mask = field_mask_pb2.FieldMask(paths=["note", "items.quantity", "", "a..b", "x y", "é"])
    assert violated(mask) == ["paths[2]", "paths[3]", "paths[4]", "paths[5]"]


@pytest.mark.parametrize(
    ("type_url", "value", "fields"),
    [
        ("", b"", []),
        ("type.googleapis.com/nexus.orders.v1.Order", b"\x0a\x01x", []),
        ("/pkg.Message", b"", []),
        ("", b"\x0a\x01x", ["type_url"]),
        ("nexus.orders.v1.Order", b"", ["type_url"]),
        ("type.googleapis.com/", b"", ["type_url"]),
        ("type.googleapis.com/not a type", b"", ["type_url"]),
    ],
)
def test_any_type_url(type_url: str, value: bytes, fields: list[str]) -> None:
    assert violated(any_pb2.Any(type_url=type_url, value=value)) == fields


def test_only_types_that_reach_a_well_known_field_get_a_validator() -> None:
    assert compile_validator(orders_pb2.UpdateOrderRequest.DESCRIPTOR) is not None
    assert compile_validator(health_pb2.HealthCheckRequest.DESCRIPTOR) is None


# Over the transports, through a plugin method ------------------------------------------


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[RunningHost]:
    async with running_host(
        plugins=["orders", "auth"], plugin_dirs=[REPO / "plugins"], data_dir=tmp_path, http=True
    ) as running:
        yield running


def bad_request(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError("no google.rpc.BadRequest")


def bad_update() -> orders_pb2.UpdateOrderRequest:
    request = orders_pb2.UpdateOrderRequest(
        order=orders_pb2.Order(id="o-1", note="x"),
        update_mask=field_mask_pb2.FieldMask(paths=["note", "note..x"]),
    )
    request.order.create_time.seconds = MAX_SECONDS + 1
    request.order.update_time.nanos = -1
    return request


EXPECTED = {"order.create_time.seconds", "order.update_time.nanos", "update_mask.paths[1]"}


async def test_a_plugin_method_over_grpc_names_each_bad_well_known_field(
    host: RunningHost,
) -> None:
    stub = orders_pb2_grpc.OrdersServiceStub(host.channel(host.token()))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateOrder(bad_update())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_request(caught.value)) == EXPECTED


async def test_a_plugin_method_in_process_names_each_bad_well_known_field(
    host: RunningHost,
) -> None:
    services = Services(
        host.host.router,
        "tester",
        ["nexus.orders.v1.OrdersService"],
        permissions=("orders.update:all",),
    )
    stub = services.client(orders_pb2_grpc.OrdersServiceStub, as_plugin=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateOrder(bad_update())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_request(caught.value)) == EXPECTED


async def test_a_plugin_method_over_rest_names_a_bad_field_mask_path(host: RunningHost) -> None:
    headers = {"authorization": f"Bearer {host.token()}"}
    async with httpx.AsyncClient(base_url=host.http_url, headers=headers, timeout=10) as http:
        response = await http.patch(
            "/v1/orders/o-1", params={"updateMask": "note,note..x"}, json={"note": "x"}
        )
    assert response.status_code == 400, response.text
    [detail] = [d for d in response.json()["details"] if d["@type"].endswith("BadRequest")]
    assert [v["field"] for v in detail["fieldViolations"]] == ["update_mask.paths[1]"]
