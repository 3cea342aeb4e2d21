"""The routing table: immutable generations, one owner per path, in-flight counting."""

import asyncio

import pytest
from grpc_health.v1 import health_pb2

from nexus_grpc.routing import Arity, InFlight, MethodInfo, Route, Router, RoutingTable

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]


def route(plugin: str, method: str = "Check") -> Route:
    descriptor = HEALTH.methods_by_name[method]
    info = MethodInfo(
        f"/grpc.health.v1.Health/{method}", plugin, descriptor, Arity.of(descriptor), InFlight()
    )

    async def call(request: object, context: object) -> None:
        return None

    return Route(info=info, call=call, grpc_handler=None)  # type: ignore[arg-type]


def test_arity_comes_from_the_descriptor() -> None:
    assert Arity.of(HEALTH.methods_by_name["Check"]) is Arity.UNARY_UNARY
    assert Arity.of(HEALTH.methods_by_name["Watch"]) is Arity.UNARY_STREAM
    assert Arity.UNARY_STREAM.grpc_type == "server_stream"


def test_adding_routes_makes_a_new_generation_and_keeps_the_old_one() -> None:
    router = Router()
    first = router.table
    second = router.add([route("a")])
    assert second.generation == first.generation + 1
    assert first.routes == {}
    assert (
        router.lookup("/grpc.health.v1.Health/Check")
        is second.routes["/grpc.health.v1.Health/Check"]
    )
    assert second.services() == ["grpc.health.v1.Health"]
    assert second.plugin_of("grpc.health.v1.Health") == "a"
    with pytest.raises(TypeError):
        second.routes["/x"] = route("b")  # type: ignore[index]


def test_a_path_has_one_owner() -> None:
    router = Router()
    router.add([route("a")])
    with pytest.raises(
        ValueError, match="served by plugin 'a' already; plugin 'b' cannot serve it too"
    ):
        router.add([route("b")])


def test_removing_a_plugin_leaves_the_others_and_notifies_listeners() -> None:
    router = Router()
    seen: list[int] = []
    router.on_change(lambda table: seen.append(table.generation))
    router.add([route("a", "Check"), route("b", "Watch")])
    table = router.remove_plugin("a")
    assert [r.plugin for r in table.routes.values()] == ["b"]
    assert seen == [1, 2]
    assert isinstance(table, RoutingTable)


async def test_in_flight_waits_for_the_last_call() -> None:
    counter = InFlight()
    assert await counter.wait_idle(0.01)
    counter.enter()
    counter.enter()
    assert not await counter.wait_idle(0.01)
    counter.leave()

    async def finish_later() -> None:
        await asyncio.sleep(0.01)
        counter.leave()

    task = asyncio.create_task(finish_later())
    assert await counter.wait_idle(1)
    await task
    assert counter.count == 0


async def test_a_cancellation_racing_the_last_call_is_not_lost() -> None:
    # The drain that waits is cancelled in the same turn as the last call ends: it must
    # end cancelled, not report an idle server (Python 3.11's wait_for dropped this).
    counter = InFlight()
    counter.enter()
    waiter = asyncio.create_task(counter.wait_idle(5))
    await asyncio.sleep(0)
    counter.leave()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
