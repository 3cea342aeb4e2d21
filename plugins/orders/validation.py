"""Checks on order requests; each problem becomes a field violation."""

from __future__ import annotations

import re

from nexus.orders.v1 import orders_pb2

from nexus_grpc.errors import FieldViolation, InvalidArgumentError

MAX_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_NOTE = 500
MAX_PAGE_SIZE = 1000
ORDER_BY_FIELDS = ("create_time", "update_time", "total_cents")
UPDATABLE_FIELDS = ("customer_id", "items", "currency_code", "note")

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CUSTOMER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# Totals are int64 cents; keep every product well inside that.
_MAX_UNIT_PRICE = 10**12


def check_order_fields(
    order: orders_pb2.Order, prefix: str, fields: tuple[str, ...]
) -> list[FieldViolation]:
    """Violations in the given client-settable ``fields`` of ``order``."""
    found = []
    if "customer_id" in fields and not _CUSTOMER.match(order.customer_id):
        found.append(
            FieldViolation(
                f"{prefix}.customer_id",
                "required: 1-64 letters, digits or _.@- starting with a letter or digit",
            )
        )
    if "items" in fields:
        if not order.items:
            found.append(FieldViolation(f"{prefix}.items", "at least one item is required"))
        elif len(order.items) > MAX_ITEMS:
            found.append(FieldViolation(f"{prefix}.items", f"at most {MAX_ITEMS} items"))
        for index, item in enumerate(order.items):
            where = f"{prefix}.items[{index}]"
            if not _SKU.match(item.sku):
                found.append(
                    FieldViolation(f"{where}.sku", "required: 1-64 letters, digits, _ or -")
                )
            if not 1 <= item.quantity <= MAX_QUANTITY:
                found.append(FieldViolation(f"{where}.quantity", f"must be 1 to {MAX_QUANTITY}"))
            if not 0 <= item.unit_price_cents <= _MAX_UNIT_PRICE:
                found.append(
                    FieldViolation(f"{where}.unit_price_cents", f"must be 0 to {_MAX_UNIT_PRICE}")
                )
    if "currency_code" in fields and not _CURRENCY.match(order.currency_code):
        found.append(
            FieldViolation(f"{prefix}.currency_code", "required: an ISO 4217 code such as EUR")
        )
    if "note" in fields and len(order.note) > MAX_NOTE:
        found.append(FieldViolation(f"{prefix}.note", f"at most {MAX_NOTE} characters"))
    return found


def validate_create(request: orders_pb2.CreateOrderRequest) -> None:
    """Raise InvalidArgumentError unless the request can create an order."""
    found = []
    if not request.HasField("order"):
        found.append(FieldViolation("order", "required"))
    else:
        found += check_order_fields(request.order, "order", UPDATABLE_FIELDS)
    if request.order_id and not _ID.match(request.order_id):
        found.append(
            FieldViolation(
                "order_id", "1-63 lower-case letters, digits or - starting with a letter or digit"
            )
        )
    _raise_if(found)


def validate_id(value: str, field: str = "id") -> None:
    """Raise InvalidArgumentError unless ``value`` looks like an order id."""
    if not value:
        _raise_if([FieldViolation(field, "required")])
    if not _ID.match(value):
        _raise_if([FieldViolation(field, "not a valid order id")])


def validate_list(request: orders_pb2.ListOrdersRequest) -> tuple[str, bool]:
    """Check paging and ordering; return the order-by field and whether it descends."""
    found = []
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        found.append(FieldViolation("page_size", f"must be 0 to {MAX_PAGE_SIZE}"))
    field, descending = "create_time", True
    if request.order_by:
        parts = request.order_by.split()
        if (
            len(parts) not in (1, 2)
            or parts[0] not in ORDER_BY_FIELDS
            or (len(parts) == 2 and parts[1] not in ("asc", "desc"))
        ):
            found.append(
                FieldViolation(
                    "order_by",
                    f"must be one of {', '.join(ORDER_BY_FIELDS)}, "
                    "optionally followed by asc or desc",
                )
            )
        else:
            field, descending = parts[0], len(parts) == 2 and parts[1] == "desc"
    if request.status and request.status not in orders_pb2.OrderStatus.values():
        found.append(FieldViolation("status", "unknown order status"))
    _raise_if(found)
    return field, descending


def validate_update(request: orders_pb2.UpdateOrderRequest) -> tuple[str, ...]:
    """Check the update request; return the field names to change."""
    found = []
    if not request.HasField("order"):
        found.append(FieldViolation("order", "required"))
    elif not request.order.id:
        found.append(FieldViolation("order.id", "required"))
    paths = tuple(request.update_mask.paths)
    if not paths:
        found.append(FieldViolation("update_mask", "required: name the fields to change"))
    for path in paths:
        if path not in UPDATABLE_FIELDS:
            found.append(
                FieldViolation(
                    "update_mask",
                    f"field {path!r} cannot be changed; changeable: {', '.join(UPDATABLE_FIELDS)}",
                )
            )
    if not found:
        found += check_order_fields(request.order, "order", paths)
    _raise_if(found)
    return paths


def validate_cancel(request: orders_pb2.CancelOrderRequest) -> None:
    """Raise InvalidArgumentError unless the cancel request is well formed."""
    validate_id(request.id)
    if len(request.reason) > MAX_NOTE:
        _raise_if([FieldViolation("reason", f"at most {MAX_NOTE} characters")])


def _raise_if(found: list[FieldViolation]) -> None:
    if found:
        raise InvalidArgumentError(found)
