"""Checks on order requests that the contract's field rules cannot express.

Everything a field rule can say lives in ``proto/nexus/orders/v1/orders.proto``
(``nexus.options.v1.rules``) and is enforced by the host's validation stage before a
handler runs: id formats, item counts, SKUs, quantities, prices, note and reason
lengths, page size and status values, and that ``order`` is present. What is left here
depends on the method or on the request itself: what create requires of an order,
``update_mask`` and the fields it names, and ``order_by``. Prices and currency are the
price list's business (``prices.py``).
"""

from __future__ import annotations

import re

from nexus.orders.v1 import orders_pb2

from nexus_grpc.bounded import quote
from nexus_grpc.errors import FieldViolation, InvalidArgumentError

ORDER_BY_FIELDS = ("create_time", "update_time", "total_cents")
UPDATABLE_FIELDS = ("customer_id", "note")
#: Fields fixed once the order is placed: stock was reserved for its items and their
#: prices were set in its currency. Naming them in an update is FAILED_PRECONDITION.
FROZEN_FIELDS = ("items", "currency_code")
#: What a create request must carry (the currency defaults to the price list's).
_CREATE_REQUIRED = ("customer_id", "items")

_CUSTOMER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_CURRENCY = re.compile(r"[A-Z]{3}")


def check_order_fields(
    order: orders_pb2.Order, prefix: str, fields: tuple[str, ...]
) -> list[FieldViolation]:
    """Violations in the given client-settable ``fields`` of ``order``.

    Only what applies to those fields alone (required on create, or when an update
    names them); the contract's rules on the items and the note are checked by the host.
    """
    found = []
    if "customer_id" in fields and not _CUSTOMER.fullmatch(order.customer_id):
        found.append(
            FieldViolation(
                f"{prefix}.customer_id",
                "required: 1-64 letters, digits or _.@- starting with a letter or digit",
            )
        )
    if "items" in fields and not order.items:
        found.append(FieldViolation(f"{prefix}.items", "at least one item is required"))
    if "currency_code" in fields and not _CURRENCY.fullmatch(order.currency_code):
        found.append(FieldViolation(f"{prefix}.currency_code", "an ISO 4217 code such as EUR"))
    return found


def validate_create(request: orders_pb2.CreateOrderRequest) -> None:
    """Raise InvalidArgumentError unless the order has what creating one requires."""
    fields = _CREATE_REQUIRED + (("currency_code",) if request.order.currency_code else ())
    _raise_if(check_order_fields(request.order, "order", fields))


def validate_list(request: orders_pb2.ListOrdersRequest) -> tuple[str, bool]:
    """Check the ordering; return the order-by field and whether it descends."""
    field, descending = "create_time", True
    if request.order_by:
        parts = request.order_by.split()
        if (
            len(parts) not in (1, 2)
            or parts[0] not in ORDER_BY_FIELDS
            or (len(parts) == 2 and parts[1] not in ("asc", "desc"))
        ):
            _raise_if(
                [
                    FieldViolation(
                        "order_by",
                        f"must be one of {', '.join(ORDER_BY_FIELDS)}, "
                        "optionally followed by asc or desc",
                    )
                ]
            )
        field, descending = parts[0], len(parts) == 2 and parts[1] == "desc"
    return field, descending


def validate_update(request: orders_pb2.UpdateOrderRequest) -> tuple[str, ...]:
    """Check the update request; return the field names to change.

    Frozen fields pass here: the handler refuses them once it knows the order exists.
    """
    found = []
    if not request.order.id:
        found.append(FieldViolation("order.id", "required"))
    paths = tuple(request.update_mask.paths)
    if not paths:
        found.append(FieldViolation("update_mask", "required: name the fields to change"))
    for path in paths:
        if path not in UPDATABLE_FIELDS and path not in FROZEN_FIELDS:
            found.append(
                FieldViolation(
                    "update_mask",
                    f"field {quote(path)} cannot be changed; "
                    f"changeable: {', '.join(UPDATABLE_FIELDS)}",
                )
            )
    if not found:
        found += check_order_fields(request.order, "order", tuple(set(paths) - set(FROZEN_FIELDS)))
    _raise_if(found)
    return paths


def _raise_if(found: list[FieldViolation]) -> None:
    if found:
        raise InvalidArgumentError(found)
