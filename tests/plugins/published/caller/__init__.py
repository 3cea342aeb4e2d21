"""Test plugin calling other plugins' services in-process (see test_published_services.py).

It serves ``probe.v1.ProbeService`` so a test can make a real call as some user:
``Sleep`` runs the coroutine the test put in its harness (handed over as the plugin's
``harness`` setting) inside that call, and keeps what it returned or raised. The start
hook, run outside any call, asks who the plugin is and reads a stock: the inventory
plugin (loaded after "caller" by name) must be serving by then. The handler of the
``StockReserved`` events the plugin publishes asks who it is, and which request id its
calls carry.
"""

from typing import Any

from nexus.auth.v1 import auth_pb2, auth_pb2_grpc
from nexus.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from probe.v1 import probe_pb2, probe_pb2_grpc
from transcode.v1 import transcode_pb2, transcode_pb2_grpc

from nexus_grpc import Plugin, PluginContext
from nexus_grpc.events import Delivery, subscribe


class Caller(probe_pb2_grpc.ProbeServiceServicer):
    """Runs the test's scenario inside a real call."""

    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self._harness = ctx.config["harness"]

    async def Sleep(self, request: probe_pb2.SleepRequest, context: Any) -> probe_pb2.SleepResponse:
        try:
            self._harness.outcomes.append(await self._harness.inside_call(self._ctx))
        except Exception as error:
            self._harness.outcomes.append(error)
        return probe_pb2.SleepResponse()

    @subscribe(inventory_pb2.StockReserved)
    async def on_reserved(self, event: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        assert self._ctx.services is not None
        auth = self._ctx.services.client(auth_pb2_grpc.AuthServiceStub)
        transcode = self._ctx.services.client(transcode_pb2_grpc.TranscodeServiceStub)
        me = await auth.WhoAmI(auth_pb2.WhoAmIRequest())
        seen = await transcode.Inspect(transcode_pb2.InspectRequest())
        self._harness.events.append((me.subject, seen.metadata["x-request-id"]))


async def start(ctx: PluginContext) -> None:
    assert ctx.services is not None
    harness = ctx.config["harness"]
    harness.context = ctx
    auth = ctx.services.client(auth_pb2_grpc.AuthServiceStub)
    inventory = ctx.services.client(inventory_pb2_grpc.InventoryServiceStub)
    harness.at_start = (
        await auth.WhoAmI(auth_pb2.WhoAmIRequest()),
        await inventory.GetStock(inventory_pb2.GetStockRequest(sku="BOOK-1")),
    )


plugin = Plugin(services=[Caller], on_start=start)
