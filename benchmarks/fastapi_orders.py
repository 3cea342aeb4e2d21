"""The orders REST API written the usual FastAPI way: the baseline nexus REST is compared to.

It serves the same two routes as the nexus gateway for ``nexus.orders.v1.OrdersService``
(``POST /v1/orders`` with the order as JSON body, ``GET /v1/orders/{id}``), answers with
the same proto3 JSON (lowerCamel names, int64 as strings, enums by name, RFC 3339
timestamps, default values left out), checks the same rules as
``plugins/orders/validation.py`` with pydantic, and stores through the same nexus
repository (``Storage`` on SQLite, namespace ``plugins/business/orders``, a repository of
``orders_pb2.Order``), converting pydantic models to and from protobuf messages.

With ``--jwt-secret-file`` both routes require ``Authorization: Bearer <token>``, checked
the usual FastAPI way: ``HTTPBearer`` and an ``async`` dependency that verifies the JWT
with PyJWT (HS256, audience and issuer "nexus", exp/iat/iss/aud/sub required) on every
request, the token work nexus does for the same calls (nexus caches verified tokens;
this baseline does not, as most FastAPI apps do not).

Run it the way the bench does (uvicorn with the options the nexus HTTP server uses)::

    .venv/bin/python -m benchmarks.fastapi_orders --port 8001 --data-dir /tmp/fastapi-orders \
        --jwt-secret-file /tmp/secret.key
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import jwt
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from google.protobuf import timestamp_pb2
from nexus.orders.v1 import orders_pb2
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from nexus_grpc.errors import StatusError
from nexus_grpc.storage import Repository, Storage

__all__ = ["NAMESPACE", "Order", "OrderInput", "create_app", "main", "token_dependency"]

#: The namespace the nexus host gives the orders plugin (``plugins/<category>/<name>``).
NAMESPACE = "plugins/business/orders"

# The rules of plugins/orders/validation.py.
MAX_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_NOTE = 500
MAX_UNIT_PRICE = 10**12
ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
CUSTOMER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"

#: int64 fields are JSON strings in proto3 JSON; numbers and strings are accepted on input.
Int64 = Annotated[int, PlainSerializer(str, return_type=str, when_used="json")]


class OrderStatus(enum.StrEnum):
    """``nexus.orders.v1.OrderStatus`` by name, as proto3 JSON writes enums."""

    ORDER_STATUS_UNSPECIFIED = "ORDER_STATUS_UNSPECIFIED"
    ORDER_STATUS_PENDING = "ORDER_STATUS_PENDING"
    ORDER_STATUS_CONFIRMED = "ORDER_STATUS_CONFIRMED"
    ORDER_STATUS_REJECTED = "ORDER_STATUS_REJECTED"
    ORDER_STATUS_CANCELLED = "ORDER_STATUS_CANCELLED"


class _Model(BaseModel):
    """lowerCamel JSON names, proto names accepted too, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
    )


class LineItemInput(_Model):
    """A line item as a client sends it, checked like ``check_order_fields`` does."""

    sku: Annotated[str, Field(pattern=SKU_PATTERN, validate_default=True)] = ""
    quantity: Annotated[int, Field(ge=1, le=MAX_QUANTITY, validate_default=True)] = 0
    unit_price_cents: Annotated[int, Field(ge=0, le=MAX_UNIT_PRICE)] = 0


class OrderInput(_Model):
    """The body of ``POST /v1/orders`` (``CreateOrderRequest.order``).

    Output-only fields are accepted and ignored, as the nexus handler overwrites them.
    """

    id: str = ""
    customer_id: Annotated[str, Field(pattern=CUSTOMER_PATTERN, validate_default=True)] = ""
    items: Annotated[
        list[LineItemInput], Field(min_length=1, max_length=MAX_ITEMS, validate_default=True)
    ] = []
    status: OrderStatus = OrderStatus.ORDER_STATUS_UNSPECIFIED
    total_cents: int = 0
    currency_code: Annotated[str, Field(pattern=CURRENCY_PATTERN, validate_default=True)] = ""
    note: Annotated[str, Field(max_length=MAX_NOTE)] = ""
    cancel_reason: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None


class LineItem(_Model):
    """``nexus.orders.v1.LineItem`` as proto3 JSON."""

    sku: str = ""
    quantity: int = 0
    unit_price_cents: Int64 = 0


class Order(_Model):
    """``nexus.orders.v1.Order`` as proto3 JSON (defaults are left out of responses)."""

    id: str = ""
    customer_id: str = ""
    items: list[LineItem] = []
    status: OrderStatus = OrderStatus.ORDER_STATUS_UNSPECIFIED
    total_cents: Int64 = 0
    currency_code: str = ""
    note: str = ""
    cancel_reason: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None


def to_proto(order: OrderInput) -> orders_pb2.Order:
    """The client-settable fields of ``order`` as a protobuf message."""
    return orders_pb2.Order(
        customer_id=order.customer_id,
        currency_code=order.currency_code,
        note=order.note,
        items=[
            orders_pb2.LineItem(
                sku=item.sku, quantity=item.quantity, unit_price_cents=item.unit_price_cents
            )
            for item in order.items
        ],
    )


def from_proto(order: orders_pb2.Order) -> Order:
    """A stored protobuf order as the response model."""
    return Order(
        id=order.id,
        customer_id=order.customer_id,
        items=[
            LineItem(sku=item.sku, quantity=item.quantity, unit_price_cents=item.unit_price_cents)
            for item in order.items
        ],
        status=OrderStatus(orders_pb2.OrderStatus.Name(order.status)),
        total_cents=order.total_cents,
        currency_code=order.currency_code,
        note=order.note,
        cancel_reason=order.cancel_reason,
        create_time=_datetime(order, "create_time"),
        update_time=_datetime(order, "update_time"),
    )


def _datetime(order: orders_pb2.Order, field: str) -> datetime | None:
    if not order.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(order, field)
    return stamp.ToDatetime(tzinfo=UTC)


#: What nexus's verifier requires of a token too (it also requires ``typ``).
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


#: The ``Authorization: Bearer`` scheme; missing credentials are answered 401 below.
#: Module level: the dependency's annotation (a string, with ``annotations`` from
#: ``__future__``) is resolved in this module's globals.
BEARER = HTTPBearer(auto_error=False)


def token_dependency(secret: bytes) -> Any:
    """A dependency that verifies the bearer JWT with ``secret``; its claims, or 401."""

    async def verified_claims(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> dict[str, Any]:
        if credentials is None:
            raise HTTPException(
                401, "this route needs a bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                credentials.credentials,
                secret,
                algorithms=["HS256"],
                audience="nexus",
                issuer="nexus",
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError:
            raise HTTPException(
                401, "invalid token", headers={"WWW-Authenticate": "Bearer"}
            ) from None
        return claims

    return verified_claims


def create_app(data_dir: Path, jwt_secret: bytes | None = None) -> FastAPI:
    """The orders app, storing in SQLite at ``data_dir/nexus.db`` (opened by the lifespan).

    With ``jwt_secret`` both routes require a bearer JWT signed with it (HS256).
    """
    repository: list[Repository[orders_pb2.Order]] = []
    # Route dependencies: the routes run after the token was verified (nothing without one).
    auth = [Depends(token_dependency(jwt_secret))] if jwt_secret is not None else []
    url = f"sqlite+aiosqlite:///{data_dir.resolve() / 'nexus.db'}"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = await Storage.connect(url)
        repository.append(storage.namespace(NAMESPACE).repository(orders_pb2.Order))
        try:
            yield
        finally:
            await storage.close()

    app = FastAPI(title="orders (FastAPI baseline)", lifespan=lifespan)

    @app.post(
        "/v1/orders",
        response_model=Order,
        response_model_exclude_defaults=True,
        dependencies=auth,
    )
    async def create_order(
        order: OrderInput,
        order_id: Annotated[str, Query(pattern=ID_PATTERN)] = "",
    ) -> Order:
        """What ``OrdersService.CreateOrder`` does: a pending order with totals and times."""
        message = to_proto(order)
        message.id = order_id
        message.status = orders_pb2.ORDER_STATUS_PENDING
        message.total_cents = sum(i.quantity * i.unit_price_cents for i in message.items)
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        message.create_time.CopyFrom(now)
        message.update_time.CopyFrom(now)
        try:
            created = await repository[0].create(message)
        except StatusError as error:  # ALREADY_EXISTS for a reused order_id
            raise HTTPException(409, error.message) from None
        return from_proto(created)

    @app.get(
        "/v1/orders/{id}",
        response_model=Order,
        response_model_exclude_defaults=True,
        dependencies=auth,
    )
    async def get_order(id: Annotated[str, PathParam(pattern=ID_PATTERN)]) -> Order:
        """What ``OrdersService.GetOrder`` does."""
        found = await repository[0].get(id)
        if found is None:
            raise HTTPException(404, f"order {id!r} not found")
        return from_proto(found)

    return app


def main() -> None:
    """Serve the app with uvicorn as the nexus HTTP server runs: httptools, no access log."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument(
        "--loop",
        default="asyncio",
        help="uvicorn event loop; asyncio (default) is what nexus runs on (asyncio.run)",
    )
    parser.add_argument(
        "--jwt-secret-file",
        type=Path,
        help="HMAC secret: require a bearer JWT (HS256) signed with it on both routes",
    )
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    secret = args.jwt_secret_file.read_bytes() if args.jwt_secret_file else None
    uvicorn.run(
        create_app(args.data_dir, secret),
        host=args.host,
        port=args.port,
        http="httptools",
        loop=args.loop,
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        workers=None,
    )


if __name__ == "__main__":
    main()
