"""The orders plugin over gRPC, through the real host, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2, status_pb2
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.testing import running_host


@pytest.fixture(params=["sqlite", "postgresql"])
async def orders(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[orders_pb2_grpc.OrdersServiceStub]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    async with running_host(plugins=["orders"], data_dir=tmp_path, storage_url=url) as host:
        yield orders_pb2_grpc.OrdersServiceStub(host.channel(host.token()))


def new_order(
    customer: str = "c1", quantity: int = 2, price: int = 250
) -> orders_pb2.CreateOrderRequest:
    return orders_pb2.CreateOrderRequest(
        order=orders_pb2.Order(
            customer_id=customer,
            currency_code="EUR",
            items=[orders_pb2.LineItem(sku="SKU-1", quantity=quantity, unit_price_cents=price)],
        )
    )


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = status_pb2.Status.FromString(
        dict(error.trailing_metadata())["grpc-status-details-bin"]
    )
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError("no BadRequest detail")


async def test_create_then_get_returns_the_stored_order(
    orders: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    created = await orders.CreateOrder(new_order(quantity=3, price=199))
    assert len(created.id) == 32
    assert created.status == orders_pb2.ORDER_STATUS_PENDING
    assert created.total_cents == 597
    assert created.create_time.seconds > 0
    assert created.create_time == created.update_time
    fetched = await orders.GetOrder(orders_pb2.GetOrderRequest(id=created.id))
    assert fetched == created


async def test_client_chosen_id_makes_create_idempotent(
    orders: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    request = new_order()
    request.order_id = "order-42"
    assert (await orders.CreateOrder(request)).id == "order-42"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.CreateOrder(request)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_invalid_create_lists_every_violation_and_stores_nothing(
    orders: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    # The contract's field rules are checked first, by the pipeline...
    request = orders_pb2.CreateOrderRequest(
        order=orders_pb2.Order(
            customer_id="",
            currency_code="euro",
            items=[orders_pb2.LineItem(sku="", quantity=0, unit_price_cents=-1)],
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.CreateOrder(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(caught.value)) == {
        "order.items[0].sku",
        "order.items[0].quantity",
        "order.items[0].unit_price_cents",
    }
    # ...then the rules only the handler knows (what a create needs).
    request.order.items[0].CopyFrom(orders_pb2.LineItem(sku="S", quantity=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.CreateOrder(request)
    assert set(violations(caught.value)) == {"order.customer_id", "order.currency_code"}
    assert "order.customer_id: required" in (caught.value.details() or "")
    listed = await orders.ListOrders(orders_pb2.ListOrdersRequest())
    assert list(listed.orders) == []


async def test_get_unknown_order_is_not_found_with_resource_info(
    orders: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.GetOrder(orders_pb2.GetOrderRequest(id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "order 'nope' not found"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.GetOrder(orders_pb2.GetOrderRequest(id=""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_filters_orders_and_pages(orders: orders_pb2_grpc.OrdersServiceStub) -> None:
    for index in range(7):
        await orders.CreateOrder(
            new_order(customer="alice" if index % 2 else "bob", quantity=index + 1)
        )
    bobs = await orders.ListOrders(orders_pb2.ListOrdersRequest(customer_id="bob"))
    assert {o.customer_id for o in bobs.orders} == {"bob"} and len(bobs.orders) == 4

    seen: list[int] = []
    token = ""
    while True:
        page = await orders.ListOrders(
            orders_pb2.ListOrdersRequest(page_size=3, page_token=token, order_by="total_cents desc")
        )
        assert len(page.orders) <= 3
        seen += [o.total_cents for o in page.orders]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == 7

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.ListOrders(orders_pb2.ListOrdersRequest(order_by="customer_id"))
    assert "order_by" in violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.ListOrders(orders_pb2.ListOrdersRequest(page_size=-1))
    assert "page_size" in violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.ListOrders(orders_pb2.ListOrdersRequest(page_token="garbage"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_update_changes_only_masked_fields(orders: orders_pb2_grpc.OrdersServiceStub) -> None:
    created = await orders.CreateOrder(new_order())
    change = orders_pb2.Order(
        id=created.id,
        note="leave at the door",
        customer_id="someone-else",
        items=[orders_pb2.LineItem(sku="SKU-2", quantity=1, unit_price_cents=1000)],
    )
    updated = await orders.UpdateOrder(
        orders_pb2.UpdateOrderRequest(
            order=change, update_mask=field_mask_pb2.FieldMask(paths=["note", "items"])
        )
    )
    assert updated.note == "leave at the door"
    assert updated.customer_id == "c1"
    assert updated.total_cents == 1000
    assert updated.update_time.ToNanoseconds() >= created.update_time.ToNanoseconds()
    assert await orders.GetOrder(orders_pb2.GetOrderRequest(id=created.id)) == updated

    for mask, field in ((["status"], "update_mask"), ([], "update_mask")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await orders.UpdateOrder(
                orders_pb2.UpdateOrderRequest(
                    order=change, update_mask=field_mask_pb2.FieldMask(paths=mask)
                )
            )
        assert field in violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.UpdateOrder(
            orders_pb2.UpdateOrderRequest(
                order=orders_pb2.Order(id="missing", note="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["note"]),
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancel_is_final(orders: orders_pb2_grpc.OrdersServiceStub) -> None:
    created = await orders.CreateOrder(new_order())
    cancelled = await orders.CancelOrder(
        orders_pb2.CancelOrderRequest(id=created.id, reason="changed my mind")
    )
    assert cancelled.status == orders_pb2.ORDER_STATUS_CANCELLED
    assert cancelled.cancel_reason == "changed my mind"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.CancelOrder(orders_pb2.CancelOrderRequest(id=created.id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is ORDER_STATUS_CANCELLED and cannot be cancelled" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.UpdateOrder(
            orders_pb2.UpdateOrderRequest(
                order=orders_pb2.Order(id=created.id, note="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["note"]),
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_concurrent_updates_lose_nothing(orders: orders_pb2_grpc.OrdersServiceStub) -> None:
    created = await orders.CreateOrder(new_order())

    async def set_note(text: str) -> orders_pb2.Order:
        return await orders.UpdateOrder(
            orders_pb2.UpdateOrderRequest(
                order=orders_pb2.Order(id=created.id, note=text),
                update_mask=field_mask_pb2.FieldMask(paths=["note"]),
            )
        )

    results = await asyncio.gather(*(set_note(f"note {i}") for i in range(10)))
    assert len(results) == 10
    final = await orders.GetOrder(orders_pb2.GetOrderRequest(id=created.id))
    assert final.note in {f"note {i}" for i in range(10)}


async def test_watch_streams_existing_then_live_changes(
    orders: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    first = await orders.CreateOrder(new_order(customer="w"))
    await orders.CreateOrder(new_order(customer="other"))
    stream = orders.WatchOrders(
        orders_pb2.WatchOrdersRequest(customer_id="w", include_existing=True)
    )
    existing = await asyncio.wait_for(stream.read(), 5)
    assert existing.change_type == orders_pb2.CHANGE_TYPE_EXISTING
    assert existing.order.id == first.id

    await orders.CreateOrder(new_order(customer="other"))  # filtered out
    second = await orders.CreateOrder(new_order(customer="w"))
    await orders.CancelOrder(orders_pb2.CancelOrderRequest(id=first.id))
    created = await asyncio.wait_for(stream.read(), 5)
    assert (created.change_type, created.order.id) == (orders_pb2.CHANGE_TYPE_CREATED, second.id)
    cancelled = await asyncio.wait_for(stream.read(), 5)
    assert (cancelled.change_type, cancelled.order.id) == (
        orders_pb2.CHANGE_TYPE_CANCELLED,
        first.id,
    )
    stream.cancel()
