"""The price list: the server, not the client, decides what an order costs.

Prices come from the operator's configuration::

    [plugin.orders]
    currency = "EUR"          # the currency of every price (ISO 4217)

    [plugin.orders.prices]    # unit price per SKU, in the smallest currency unit
    BOOK-1 = 1250
    PEN-7 = 199

Without ``prices`` the plugin uses :data:`DEMO_PRICES`, the catalog the README's tour
orders from. A create request may leave ``unit_price_cents`` at 0 or repeat the list
price (a client showing prices sends back what it showed); any other price, a SKU the
list does not have and another currency are refused with INVALID_ARGUMENT rather than
ignored, so a client relying on its own prices learns at once that it cannot.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nexus.orders.v1 import orders_pb2

from nexus_grpc.errors import FieldViolation

#: The catalog used when ``[plugin.orders]`` sets no ``prices``: the README tour's SKUs.
DEMO_PRICES: Mapping[str, int] = {"BOOK-1": 1250, "PEN-7": 199}

#: The contract's bound on a unit price (``LineItem.unit_price_cents``).
MAX_PRICE = 1_000_000_000_000

_CURRENCY = re.compile(r"[A-Z]{3}")


class PriceListError(ValueError):
    """The ``[plugin.orders]`` price configuration is malformed."""


@dataclass(frozen=True)
class PriceList:
    """Unit prices per SKU, all in one currency."""

    currency: str
    prices: Mapping[str, int]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PriceList:
        """The price list of the plugin's ``[plugin.orders]`` table; raises PriceListError."""
        currency = config.get("currency", "EUR")
        if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
            raise PriceListError(
                f"plugin.orders.currency: expected an ISO 4217 code such as EUR, got {currency!r}"
            )
        raw = config.get("prices", DEMO_PRICES)
        if not isinstance(raw, Mapping):
            raise PriceListError(
                "plugin.orders.prices: expected a table of SKU = price in cents, e.g. BOOK-1 = 1250"
            )
        prices: dict[str, int] = {}
        for sku, value in raw.items():
            # Values from environment variables arrive as text; a float is refused, not
            # truncated (12.5 written as euros would otherwise become 12 cents).
            try:
                price = int(value) if isinstance(value, int | str) else -1
            except ValueError:
                price = -1
            if isinstance(value, bool) or not 0 <= price <= MAX_PRICE:
                raise PriceListError(
                    f"plugin.orders.prices.{sku}: expected a whole number of cents from 0 to "
                    f"{MAX_PRICE}, got {value!r}"
                )
            prices[str(sku)] = price
        return cls(currency=currency, prices=prices)

    def apply(self, order: orders_pb2.Order) -> list[FieldViolation]:
        """Set the currency and every item's unit price of a new ``order`` from the list;
        the violations when the client asked for anything else."""
        found = []
        if not order.currency_code:
            order.currency_code = self.currency
        elif order.currency_code != self.currency:
            found.append(
                FieldViolation(
                    "order.currency_code",
                    f"orders are priced in {self.currency}; leave it empty or send {self.currency}",
                )
            )
        for index, item in enumerate(order.items):
            price = self.prices.get(item.sku)
            if price is None:
                found.append(
                    FieldViolation(
                        f"order.items[{index}].sku", f"unknown SKU {item.sku!r}: it has no price"
                    )
                )
            elif item.unit_price_cents not in (0, price):
                found.append(
                    FieldViolation(
                        f"order.items[{index}].unit_price_cents",
                        f"prices are set by the server: {item.sku!r} costs {price}; "
                        "leave it 0 or send that price",
                    )
                )
            else:
                item.unit_price_cents = price
        return found
