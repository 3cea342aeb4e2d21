"""The orders plugin's servicer on a plain grpc.aio server: the gRPC baselines.

No nexus host around it: the generated ``add_OrdersServiceServicer_to_server`` registers
the very ``OrdersService`` class the plugin serves on ``grpc.aio.server()`` with no
options and no interceptors, and the servicer gets a :class:`PluginContext` whose
storage is the same kind of namespace nexus gives it (SQLite, ``plugins/business/orders``).

With ``--echo-stubs`` (the folder where the echo contract, ``transcode.v1``, was compiled)
the server also answers ``transcode.v1.TranscodeService/Echo`` by returning its request,
parsed and serialized as nexus does: the ceiling nexus's echo through its full pipeline is
compared with.

Two variants, both measured by the bench:

* no options (**no pipeline**): the servicer alone, the baseline of nexus's goal for
  its pipeline (nexus gRPC >= 0.9x this). A client's ``authorization`` metadata is
  received and ignored.
* ``--jwt-secret-file``: every method first verifies the caller's bearer JWT with PyJWT
  (HS256, audience and issuer "nexus", exp/iat/iss/aud/sub required), the token work
  nexus does for the same calls, and aborts with UNAUTHENTICATED when it is missing or
  invalid. The check wraps each servicer method (no server interceptor: the cheapest
  way to do the same work on grpc.aio).

    .venv/bin/python -m benchmarks.bare_grpc --port 50061 --data-dir /tmp/bare-orders
    .venv/bin/python -m benchmarks.bare_grpc --port 50062 --data-dir /tmp/bare-jwt \\
        --jwt-secret-file /tmp/secret.key
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc import PluginContext
from nexus_grpc.storage import Storage
from plugins.orders.service import OrdersService

__all__ = ["JwtServicer", "main", "serve", "token_problem"]

NAMESPACE = "plugins/business/orders"
#: What nexus's verifier requires of a token too (it also requires ``typ``).
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
_BEARER = "bearer "


def token_problem(metadata: Any, secret: bytes) -> str | None:
    """Why the call's bearer token is not acceptable; None when it verifies."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            if value[: len(_BEARER)].lower() != _BEARER:
                return "authorization must be 'Bearer <token>'"
            try:
                jwt.decode(
                    value[len(_BEARER) :].strip(),
                    secret,
                    algorithms=["HS256"],
                    audience="nexus",
                    issuer="nexus",
                    options={"require": REQUIRED_CLAIMS},
                )
            except jwt.PyJWTError:
                return "invalid token"
            return None
    return "this method needs a bearer token"


class JwtServicer:
    """``servicer`` with every RPC method behind a bearer-token check.

    Registered with the generated ``add_..._to_server`` in place of the servicer: the
    registration reads one attribute per method, and gets the wrapped method.
    """

    def __init__(self, servicer: object, service: str, secret: bytes) -> None:
        descriptor = orders_pb2.DESCRIPTOR.services_by_name[service]
        for method in descriptor.methods:
            behavior = getattr(servicer, method.name)
            setattr(self, method.name, _checked(behavior, secret))


def _checked(behavior: Callable[..., Any], secret: bytes) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def streamed(request: Any, context: Any) -> AsyncIterator[Any]:
            problem = token_problem(context.invocation_metadata(), secret)
            if problem is not None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
            async for response in behavior(request, context):
                yield response

        return streamed

    async def unary(request: Any, context: Any) -> Any:
        problem = token_problem(context.invocation_metadata(), secret)
        if problem is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        return await behavior(request, context)

    return unary


#: The echo method's service, as the bench's nexus serves it.
ECHO_SERVICE = "transcode.v1.TranscodeService"


def echo_handler(stubs: Path) -> grpc.GenericRpcHandler:
    """``Echo`` of the echo contract compiled in ``stubs``: it answers its request."""
    sys.path.insert(0, str(stubs))
    module = importlib.import_module("transcode.v1.transcode_pb2")
    request_type: Any = module.EchoRequest

    async def echo(request: Any, context: Any) -> Any:
        return request

    handler = grpc.unary_unary_rpc_method_handler(
        echo,
        request_deserializer=request_type.FromString,
        response_serializer=request_type.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(ECHO_SERVICE, {"Echo": handler})


async def serve(
    address: str, data_dir: Path, jwt_secret: bytes | None = None, echo_stubs: Path | None = None
) -> None:
    """Serve OrdersService on ``address`` until SIGTERM or SIGINT; SQLite in ``data_dir``.

    With ``jwt_secret`` every call must carry a bearer JWT signed with it (HS256). With
    ``echo_stubs`` the echo method is served too.
    """
    storage = await Storage.connect(f"sqlite+aiosqlite:///{data_dir / 'nexus.db'}")
    context = PluginContext(
        name="orders",
        category="business",
        config={},
        storage=storage.namespace(NAMESPACE),
        logger=logging.getLogger("nexus.plugins.orders"),
        data_dir=data_dir,
    )
    servicer: Any = OrdersService(context)
    if jwt_secret is not None:
        servicer = JwtServicer(servicer, "OrdersService", jwt_secret)
    server = grpc.aio.server()
    orders_pb2_grpc.add_OrdersServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    if echo_stubs is not None:
        server.add_generic_rpc_handlers((echo_handler(echo_stubs),))
    server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop(1)
        # Calls the client abandoned (h2load stops with calls in flight) may still be
        # finishing their database work: let them, before the storage goes away under them.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=5)
        await storage.close()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument(
        "--jwt-secret-file",
        type=Path,
        help="HMAC secret: require a bearer JWT (HS256) signed with it on every call",
    )
    parser.add_argument(
        "--echo-stubs",
        type=Path,
        help="folder of the compiled echo contract (transcode.v1): serve its Echo too",
    )
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = args.jwt_secret_file.read_bytes() if args.jwt_secret_file else None
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(f"{args.host}:{args.port}", data_dir, secret, args.echo_stubs))


if __name__ == "__main__":
    main()
