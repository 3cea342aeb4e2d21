"""The orders plugin over gRPC, through the real host, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2, status_pb2
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.testing import running_host

#: The operator's price list of these tests' hosts.
PRICES = {"currency": "EUR", "prices": {"SKU-1": 199, "SKU-2": 1000}}


@pytest.fixture(params=["sqlite", "postgresql"])
async def orders(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[orders_pb2_grpc.OrdersServiceStub]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    async with running_host(
        plugins=["orders"],
        data_dir=tmp_path,
        storage_url=url,
        plugin_config={"orders": PRICES},
    ) as host:
        yield orders_pb2_grpc.OrdersServiceStub(host.channel(host.token()))


def new_order(
    customer: str = "c1", quantity: int = 2, price: int = 0, sku: str = "SKU-1"
) -> orders_pb2.CreateOrderRequest:
    return orders_pb2.CreateOrderRequest(
        order=orders_pb2.Order(
            customer_id=customer,
            currency_code="EUR",
            items=[orders_pb2.LineItem(sku=sku, quantity=quantity, unit_price_cents=price)],
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
    created = await orders.CreateOrder(new_order(quantity=3))
    assert len(created.id) == 32
    assert created.status == orders_pb2.ORDER_STATUS_PENDING
    assert created.items[0].unit_price_cents == 199  # from the price list
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
        items=[orders_pb2.LineItem(sku="SKU-2", quantity=1)],
    )
    updated = await orders.UpdateOrder(
        orders_pb2.UpdateOrderRequest(
            order=change, update_mask=field_mask_pb2.FieldMask(paths=["note"])
        )
    )
    assert updated.note == "leave at the door"
    assert updated.customer_id == "c1"
    assert list(updated.items) == list(created.items)
    assert updated.total_cents == created.total_cents
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


async def test_items_and_currency_are_fixed_once_the_order_is_placed(
    orders: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    # OrderCreated went out with the order: inventory reserves exactly these items, so
    # changing them while it is pending would confirm units never reserved (issue 9).
    created = await orders.CreateOrder(new_order(quantity=1))
    for paths in (["items"], ["currency_code"], ["note", "items"]):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await orders.UpdateOrder(
                orders_pb2.UpdateOrderRequest(
                    order=orders_pb2.Order(
                        id=created.id,
                        note="more please",
                        currency_code="USD",
                        items=[orders_pb2.LineItem(sku="SKU-1", quantity=9999)],
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                )
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "cancel it and create a new order" in (caught.value.details() or "")
    assert await orders.GetOrder(orders_pb2.GetOrderRequest(id=created.id)) == created


async def test_prices_and_currency_come_from_the_price_list(
    orders: orders_pb2_grpc.OrdersServiceStub,
) -> None:
    two_lines = orders_pb2.CreateOrderRequest(
        order=orders_pb2.Order(
            customer_id="c1",
            items=[
                orders_pb2.LineItem(sku="SKU-1", quantity=2),
                orders_pb2.LineItem(sku="SKU-2", quantity=3, unit_price_cents=1000),
            ],
        )
    )
    created = await orders.CreateOrder(two_lines)
    assert [item.unit_price_cents for item in created.items] == [199, 1000]
    assert created.total_cents == 2 * 199 + 3 * 1000
    assert created.currency_code == "EUR"  # the list's, when the client says none

    # A client cannot price its own order, order what has no price, or pick a currency.
    cases = {
        "order.items[0].unit_price_cents": new_order(price=1),
        "order.items[0].sku": new_order(sku="NOT-SOLD"),
        "order.currency_code": new_order(),
    }
    cases["order.currency_code"].order.currency_code = "USD"
    for field, request in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await orders.CreateOrder(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(violations(caught.value)) == {field}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orders.CreateOrder(new_order(price=1))
    assert violations(caught.value) == {
        "order.items[0].unit_price_cents": "prices are set by the server: 'SKU-1' costs 199; "
        "leave it 0 or send that price"
    }
    listed = await orders.ListOrders(orders_pb2.ListOrdersRequest())
    assert [o.id for o in listed.orders] == [created.id]


async def test_price_tampering_and_item_changes_are_refused_over_rest(tmp_path: Path) -> None:
    async with running_host(
        plugins=["orders"], data_dir=tmp_path, http=True, plugin_config={"orders": PRICES}
    ) as host:
        headers = {"authorization": f"Bearer {host.token()}"}
        async with httpx.AsyncClient(base_url=host.http_url, headers=headers) as http:
            body = {"customerId": "c1", "items": [{"sku": "SKU-2", "quantity": 1}]}
            tampered = {**body, "items": [{"sku": "SKU-2", "quantity": 1, "unitPriceCents": "1"}]}
            refused = await http.post("/v1/orders", json=tampered)
            assert refused.status_code == 400
            assert "prices are set by the server: 'SKU-2' costs 1000" in refused.json()["message"]
            unknown = await http.post(
                "/v1/orders", json={**body, "items": [{"sku": "X", "quantity": 1}]}
            )
            assert unknown.status_code == 400
            assert "unknown SKU 'X'" in unknown.json()["message"]

            created = await http.post("/v1/orders", json=body)
            assert created.status_code == 200, created.text
            order = created.json()
            assert (order["totalCents"], order["currencyCode"]) == ("1000", "EUR")
            changed = await http.patch(
                f"/v1/orders/{order['id']}",
                params={"updateMask": "items"},
                json={"items": [{"sku": "SKU-2", "quantity": 9999}]},
            )
            assert changed.status_code == 400
            assert "cancel it and create a new order" in changed.json()["message"]
            assert (await http.get(f"/v1/orders/{order['id']}")).json() == order


async def test_without_a_price_list_the_demo_catalog_prices_orders(tmp_path: Path) -> None:
    async with running_host(plugins=["orders"], data_dir=tmp_path) as host:
        orders = orders_pb2_grpc.OrdersServiceStub(host.channel(host.token()))
        created = await orders.CreateOrder(new_order(sku="BOOK-1", quantity=2))
        assert created.total_cents == 2500


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"prices": {"SKU-1": -5}}, "plugin.orders.prices.SKU-1: expected a whole number"),
        ({"prices": {"SKU-1": "cheap"}}, "plugin.orders.prices.SKU-1: expected a whole number"),
        # Euros written where cents belong: refused, never truncated to 12 cents.
        ({"prices": {"SKU-1": 12.5}}, "plugin.orders.prices.SKU-1: expected a whole number"),
        ({"prices": {"SKU-1": "1.99"}}, "plugin.orders.prices.SKU-1: expected a whole number"),
        ({"prices": ["SKU-1"]}, "plugin.orders.prices: expected a table"),
        ({"currency": "euro"}, "plugin.orders.currency: expected an ISO 4217 code"),
    ],
)
async def test_a_malformed_price_list_fails_the_plugin_with_the_reason(
    tmp_path: Path, config: dict[str, object], message: str
) -> None:
    async with running_host(
        plugins=["orders"], data_dir=tmp_path, plugin_config={"orders": config}
    ) as host:
        record = host.host.plugins.record("orders")
        assert record is not None and record.state == "FAILED"
        assert message in record.error
