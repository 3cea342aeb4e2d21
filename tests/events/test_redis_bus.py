"""The Redis Streams bus: groups, sharing, takeover, dead letters, replay, outages, stop.

Each RedisBus stands for one host process; several in one test are several processes.
Timings are shrunk (claim_idle 0.2 s, 50 ms blocking reads, 10 ms backoff) so the
whole file runs in seconds against a real redis-server.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from nexus.inventory.v1 import inventory_pb2

from nexus_grpc.errors import NotFoundError
from nexus_grpc.events import Delivery, seal
from nexus_grpc.events._redis_streams import time_to_id
from nexus_grpc.events.redis_bus import BusUnavailableError, RedisBus
from nexus_grpc.logs import request_id_var
from tests.fixtures.redis import OwnRedis

EVENT = "nexus.inventory.v1.StockReserved"
STREAM = f"nexus:events:{EVENT}"

BusFactory = Callable[..., RedisBus]


async def eventually(check: Callable[[], bool | Awaitable[bool]], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await _value(check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def groups_ready(bus: RedisBus, *groups: str) -> None:
    """Wait until ``groups`` exist on the stream: new groups start at "$", so events
    published before would not be theirs."""
    deadline = time.monotonic() + 5
    while True:
        try:
            found = {info["name"].decode() for info in await bus.client.xinfo_groups(STREAM)}
        except aioredis.ResponseError:  # no stream yet
            found = set()
        if found >= set(groups):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"groups {groups} not created in time")
        await asyncio.sleep(0.01)


async def _value(result: bool | Awaitable[bool]) -> bool:
    return await result if inspect.isawaitable(result) else result


def event(order_id: str, correlation_id: str = "") -> Any:
    return seal(
        inventory_pb2.StockReserved(order_id=order_id), source="t", correlation_id=correlation_id
    )


@pytest.fixture
async def make_bus() -> AsyncIterator[Callable[..., RedisBus]]:
    """RedisBus instances with test timings; all stopped at the end of the test."""
    buses: list[RedisBus] = []

    def make(url: str, **options: Any) -> RedisBus:
        settings: dict[str, Any] = {
            "claim_idle": 0.2,
            "block": 0.05,
            "backoff": 0.01,
            "timeout": 0.5,
        }
        settings.update(options)
        bus = RedisBus(url, **settings)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.stop(grace=0)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the shared test server, to look at (or play a dead consumer)."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def backlog(bus: RedisBus, group: str) -> int:
    """Events ``group`` has not handled yet: read and unacknowledged, or not read."""
    [stats] = [g for g in await bus.stats() if g.group == group]
    return stats.pending + stats.lag


def recorder(into: list[str]) -> Callable[[Any, Delivery], Awaitable[None]]:
    async def handle(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        into.append(message.order_id)

    return handle


async def test_every_group_gets_each_event_once_in_order(
    redis_url: str, make_bus: BusFactory
) -> None:
    bus = make_bus(redis_url)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    correlations: list[str] = []

    async def handle_b(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        correlations.append(request_id_var.get())
        seen["b"].append(message.order_id)

    bus.subscribe("a", EVENT, recorder(seen["a"]))
    bus.subscribe("b", EVENT, handle_b)
    await bus.start()
    await groups_ready(bus, "a", "b")
    for index in range(50):
        await bus.publish(event(str(index), correlation_id=f"r-{index}"))
    expected = [str(i) for i in range(50)]
    await eventually(lambda: len(seen["a"]) >= 50 and len(seen["b"]) >= 50)
    await bus.stop(grace=1)
    assert seen["a"] == seen["b"] == expected
    assert correlations == [f"r-{i}" for i in range(50)]
    assert request_id_var.get() == ""


async def test_two_processes_in_one_group_share_the_work_once(
    redis_url: str, make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    handled: dict[str, list[str]] = {"one": [], "two": []}

    def worker(name: str) -> Callable[[Any, Delivery], Awaitable[None]]:
        async def handle(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
            await asyncio.sleep(0.002)  # long enough for the other process to read too
            handled[name].append(message.order_id)

        return handle

    # A long claim_idle: nobody crashes here, and a loaded CI machine stalling the
    # event loop past a short one would let a consumer take over live work (allowed,
    # at least once, but this test counts exactly-once in the normal case).
    one = make_bus(redis_url, batch=2, claim_idle=5)
    two = make_bus(redis_url, batch=2, claim_idle=5)
    one.subscribe("shop", EVENT, worker("one"))
    two.subscribe("shop", EVENT, worker("two"))
    await one.start()
    await two.start()
    await groups_ready(one, "shop")
    for index in range(60):
        await one.publish(event(str(index)))
    await eventually(lambda: len(handled["one"]) + len(handled["two"]) >= 60)
    await asyncio.sleep(0.2)  # nothing is handled a second time
    everything = handled["one"] + handled["two"]
    assert sorted(everything, key=int) == [str(i) for i in range(60)]  # each exactly once
    assert handled["one"] and handled["two"]  # both did some of it
    # Each process handles what it got in stream order.
    assert handled["one"] == sorted(handled["one"], key=int)
    assert handled["two"] == sorted(handled["two"], key=int)
    assert (await raw.xpending(STREAM, "shop"))["pending"] == 0


async def test_an_entry_a_dead_consumer_read_is_taken_over_and_handled_once(
    redis_url: str, make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    # A process that read an entry and was killed (-9) before acknowledging it: what is
    # left of it in Redis is exactly a consumer with a pending entry, as here.
    await raw.xgroup_create(STREAM, "shop", id="$", mkstream=True)
    publisher = make_bus(redis_url)
    await publisher.publish(event("lost-in-a-crash"))
    taken: Any = await raw.xreadgroup("shop", "dead:1:x", {STREAM: ">"}, count=10)
    assert len(taken[0][1]) == 1

    attempts: list[int] = []
    handled: list[str] = []

    async def handle(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        handled.append(message.order_id)

    survivor = make_bus(redis_url)
    survivor.subscribe("shop", EVENT, handle)
    await survivor.start()
    await eventually(lambda: handled == ["lost-in-a-crash"])
    assert attempts == [2]  # the dead consumer's delivery counts
    await asyncio.sleep(0.5)
    assert handled == ["lost-in-a-crash"]
    assert (await raw.xpending(STREAM, "shop"))["pending"] == 0


async def test_a_consumer_stopped_mid_handler_leaves_its_entry_to_the_survivor(
    redis_url: str, make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    started = asyncio.Event()

    async def hangs(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        started.set()
        await asyncio.Event().wait()  # never returns

    handled: list[str] = []
    victim = make_bus(redis_url)
    victim.subscribe("shop", EVENT, hangs)
    await victim.start()
    await groups_ready(victim, "shop")
    await victim.publish(event("e-1"))
    await asyncio.wait_for(started.wait(), 5)
    await victim.stop(grace=0.05)  # the handler is cancelled, the entry not acknowledged
    assert (await raw.xpending(STREAM, "shop"))["pending"] == 1

    survivor = make_bus(redis_url)
    survivor.subscribe("shop", EVENT, recorder(handled))
    await survivor.start()
    await eventually(lambda: handled == ["e-1"])
    await asyncio.sleep(0.3)
    assert handled == ["e-1"]
    assert (await raw.xpending(STREAM, "shop"))["pending"] == 0


async def test_a_poison_event_is_dead_lettered_and_redriven_to_its_group_only(
    redis_url: str, make_bus: BusFactory
) -> None:
    bus = make_bus(redis_url, max_attempts=3)
    fixed = False
    handled: list[str] = []
    attempts: list[int] = []
    audited: list[str] = []

    async def handle(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        if message.order_id == "poison" and not fixed:
            attempts.append(delivery.attempt)
            raise RuntimeError("cannot handle this one")
        handled.append(message.order_id)

    bus.subscribe("orders", EVENT, handle)
    bus.subscribe("audit", EVENT, recorder(audited))
    await bus.start()
    await groups_ready(bus, "orders", "audit")
    for order_id in ("1", "poison", "2"):
        await bus.publish(event(order_id, correlation_id="r-1"))
    await eventually(lambda: handled == ["1", "2"] and len(audited) == 3)
    assert attempts == [1, 2, 3]

    [dead] = await bus.list_dead_letters("orders")
    assert (dead.group, dead.attempts, dead.stream) == ("orders", 3, STREAM)
    assert dead.error == "RuntimeError: cannot handle this one"
    assert dead.envelope.correlation_id == "r-1"
    assert [d.id for d in await bus.list_dead_letters()] == [dead.id]  # every group
    [local] = bus.dead_letters()
    assert (local.group, local.attempts, local.error) == ("orders", 3, dead.error)

    fixed = True
    await bus.redrive("orders", dead.id)
    await eventually(lambda: handled == ["1", "2", "poison"])
    await asyncio.sleep(0.2)
    assert audited == ["1", "poison", "2"]  # the other group did not get it again
    assert await bus.list_dead_letters() == []
    with pytest.raises(NotFoundError):
        await bus.redrive("orders", dead.id)
    assert await backlog(bus, "orders") == 0


async def test_a_transient_failure_is_retried_and_attempts_are_counted(
    redis_url: str, make_bus: BusFactory
) -> None:
    bus = make_bus(redis_url)
    attempts: list[int] = []

    async def flaky(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt < 3:
            raise ConnectionError("database briefly away")

    bus.subscribe("g", EVENT, flaky)
    await bus.start()
    await groups_ready(bus, "g")
    await bus.publish(event("x"))
    await eventually(lambda: attempts == [1, 2, 3])
    await bus.stop(grace=1)
    assert bus.dead_letters() == []


async def test_replay_redelivers_to_that_group_only(
    redis_url: str, make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    bus = make_bus(redis_url)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    bus.subscribe("a", EVENT, recorder(seen["a"]))
    bus.subscribe("b", EVENT, recorder(seen["b"]))
    await bus.start()
    await groups_ready(bus, "a", "b")
    for index in range(5):
        await bus.publish(event(str(index)))
    await eventually(lambda: len(seen["a"]) == len(seen["b"]) == 5)
    entries: Any = await raw.xrange(STREAM)
    third = entries[2][0].decode()

    await bus.replay("a", EVENT, since_id=third)
    await eventually(lambda: len(seen["a"]) == 8)
    assert seen["a"] == ["0", "1", "2", "3", "4", "2", "3", "4"]

    milliseconds = int(entries[3][0].decode().split("-")[0])
    await bus.replay("b", EVENT, since_time=milliseconds / 1000)
    await eventually(lambda: len(seen["b"]) >= 7)
    await asyncio.sleep(0.2)
    assert seen["b"][:5] == ["0", "1", "2", "3", "4"]
    # From that millisecond on, inclusive (earlier events may share the millisecond).
    replayed = seen["b"][5:]
    assert replayed == ["0", "1", "2", "3", "4"][-len(replayed) :]
    assert len(seen["a"]) == 8  # replaying b did not touch a


async def test_replay_from_an_event_id_finds_it_across_pages(
    redis_url: str,
    make_bus: BusFactory,
    raw: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nexus_grpc.events.redis_bus as redis_bus

    monkeypatch.setattr(redis_bus, "_EVENT_SEARCH_PAGE", 3)  # several pages, few entries
    bus = make_bus(redis_url)
    seen: list[str] = []
    bus.subscribe("g", EVENT, recorder(seen))
    await bus.start()
    await groups_ready(bus, "g")
    published = [event(str(index)) for index in range(10)]
    for envelope in published:
        await bus.publish(envelope)
    # An entry that is not an envelope, and one quoting the id without being that event:
    # neither is taken for it.
    target = published[2]
    await raw.xadd(STREAM, {"envelope": b"\xff" + target.id.encode()})
    await raw.xadd(STREAM, {"other": target.id.encode()})
    # A second copy, as an outbox relays an event whose first publish it did not see
    # succeed: the replay starts at the first one.
    await bus.publish(target)
    await eventually(lambda: len(seen) == 11)
    entries: Any = await raw.xrange(STREAM)

    position = await bus.replay("g", EVENT, since_event_id=target.id)
    assert position < entries[2][0].decode()  # just before the event's first entry
    await eventually(lambda: len(seen) == 20)
    assert seen[11:] == [str(index) for index in (*range(2, 10), 2)]

    with pytest.raises(NotFoundError, match="event 'gone' not found"):
        await bus.replay("g", EVENT, since_event_id="gone")
    with pytest.raises(ValueError, match="event id is empty"):
        await bus.replay("g", EVENT, since_event_id="")
    with pytest.raises(ValueError, match="one of since_id, since_time, since_event_id"):
        await bus.replay("g", EVENT, since_event_id=target.id, since_time=time.time())


async def test_replay_from_an_event_id_while_redis_is_down_is_unavailable(
    own_redis: OwnRedis, make_bus: BusFactory
) -> None:
    bus = make_bus(own_redis.url)
    own_redis.stop()
    with pytest.raises(BusUnavailableError):
        await bus.replay("g", EVENT, since_event_id="any")


async def test_more_publishers_than_connections_wait_their_turn_and_health_stays(
    redis_url: str, make_bus: BusFactory
) -> None:
    bus = make_bus(redis_url, max_connections=2)
    changes: list[bool] = []

    async def on_health(healthy: bool) -> None:
        changes.append(healthy)

    bus.on_health(on_health)
    seen: list[str] = []
    bus.subscribe("g", EVENT, recorder(seen))
    await bus.start()
    await groups_ready(bus, "g")
    await asyncio.gather(*(bus.publish(event(str(index))) for index in range(300)))
    await eventually(lambda: len(seen) == 300)
    assert bus.healthy() and False not in changes


async def test_a_pool_with_no_free_connection_is_busy_not_unreachable(redis_url: str) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from nexus_grpc.events._redis_streams import is_pool_exhausted, is_unreachable

    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=0.05)
    held = await pool.get_connection()
    try:
        with pytest.raises(RedisConnectionError) as caught:
            await pool.get_connection()
        assert is_pool_exhausted(caught.value)
        assert not is_unreachable(caught.value)
    finally:
        await pool.release(held)
        await pool.disconnect()
    refused = RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    assert is_unreachable(refused) and not is_pool_exhausted(refused)


async def test_publishing_while_redis_is_down_fails_clearly_and_health_follows(
    own_redis: OwnRedis, make_bus: BusFactory
) -> None:
    bus = make_bus(own_redis.server.url)
    changes: list[bool] = []

    async def on_health(healthy: bool) -> None:
        changes.append(healthy)

    handled: list[str] = []
    bus.on_health(on_health)
    bus.subscribe("shop", EVENT, recorder(handled))
    await bus.start()
    await groups_ready(bus, "shop")
    await bus.publish(event("before"))
    await eventually(lambda: handled == ["before"])
    assert bus.healthy()

    own_redis.stop()
    with pytest.raises(BusUnavailableError) as caught:
        await bus.publish(event("while-down"))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert not bus.healthy()
    assert changes == [False]

    own_redis.start()  # its append-only file brings the streams and groups back
    await eventually(lambda: bus.healthy())
    assert changes == [False, True]
    await bus.publish(event("after"))
    await eventually(lambda: handled == ["before", "after"])


async def test_stop_does_not_ack_an_unfinished_handlers_entry(
    redis_url: str, make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    bus = make_bus(redis_url)
    bus.subscribe("g", EVENT, slow)
    await bus.start()
    await groups_ready(bus, "g")
    await bus.publish(event("x"))
    await asyncio.wait_for(started.wait(), 5)
    began = time.monotonic()
    await bus.stop(grace=0.1)
    assert time.monotonic() - began < 2
    assert cancelled.is_set()
    summary = await raw.xpending(STREAM, "g")
    assert summary["pending"] == 1  # still waiting for a consumer to handle it
    assert await raw.xlen(STREAM) == 1


async def test_stop_lets_a_running_handler_finish_within_grace(
    redis_url: str, make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    started = asyncio.Event()
    done: list[str] = []

    async def slow(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(0.2)
        done.append(message.order_id)

    bus = make_bus(redis_url)
    bus.subscribe("g", EVENT, slow)
    await bus.start()
    await groups_ready(bus, "g")
    await bus.publish(event("x"))
    await asyncio.wait_for(started.wait(), 5)
    await bus.stop(grace=5)
    assert done == ["x"]
    assert (await raw.xpending(STREAM, "g"))["pending"] == 0


async def test_stats_count_read_and_unread_events(redis_url: str, make_bus: BusFactory) -> None:
    gate = asyncio.Event()
    handled: list[str] = []

    async def gated(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        await gate.wait()
        handled.append(message.order_id)

    bus = make_bus(redis_url)
    bus.subscribe("g", EVENT, gated)
    await bus.start()
    await groups_ready(bus, "g")
    for index in range(3):
        await bus.publish(event(str(index)))
    assert await backlog(bus, "g") == 3  # read and pending, or not read yet: 3 either way
    gate.set()
    await eventually(lambda: len(handled) == 3)

    async def drained() -> bool:  # once the last ack is in
        return await backlog(bus, "g") == 0

    await eventually(drained)


# Operations: replay bounds, malformed ids, labels, corrupt dead letters -----------------


async def test_replay_never_moves_a_group_past_events_it_has_not_read(
    redis_url: str, make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    # The group read one event, then two wait, unread, while its process is down.
    read: list[str] = []
    first = make_bus(redis_url)
    first.subscribe("g", EVENT, recorder(read))
    await first.start()
    await groups_ready(first, "g")
    await first.publish(event("read"))
    await eventually(lambda: read == ["read"])
    await first.stop(grace=1)
    operator = make_bus(redis_url)
    for order_id in ("unread-1", "unread-2"):
        await operator.publish(event(order_id))
    [group] = await raw.xinfo_groups(STREAM)
    position = group["last-delivered-id"].decode()

    # "Handle again from <a time to come / an id not reached yet>" has nothing to
    # handle again; moving the group there would skip the two unread events for good.
    assert await operator.replay("g", EVENT, since_time=time.time() + 3600) == position
    assert await operator.replay("g", EVENT, since_id="99999999999999-0") == position
    assert await operator.replay("g", EVENT, since_id=f"{2**64 - 1}-{2**64 - 1}") == position

    handled: list[str] = []
    second = make_bus(redis_url)
    second.subscribe("g", EVENT, recorder(handled))
    await second.start()
    await eventually(lambda: handled == ["unread-1", "unread-2"])


async def test_replay_of_a_group_missing_on_the_stream_starts_no_later_than_its_end(
    redis_url: str, make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    operator = make_bus(redis_url)
    await operator.publish(event("kept"))
    assert await operator.replay("new", EVENT, since_time=time.time() + 3600) == (
        (await raw.xrange(STREAM))[-1][0].decode()
    )
    await operator.publish(event("after"))
    handled: list[str] = []
    bus = make_bus(redis_url)
    bus.subscribe("new", EVENT, recorder(handled))
    await bus.start()
    await eventually(lambda: handled == ["after"])


@pytest.mark.parametrize(
    "entry_id", [f"{2**64}-0", f"1-{2**64}", "99999999999999999999999999-0", "1-", "abc", ""]
)
async def test_ids_redis_cannot_parse_are_malformed_not_an_outage(
    redis_url: str, make_bus: BusFactory, entry_id: str
) -> None:
    bus = make_bus(redis_url)
    bus.subscribe("g", EVENT, recorder([]))
    with pytest.raises(ValueError, match="is not a stream entry id"):
        await bus.redrive("g", entry_id)
    with pytest.raises(ValueError, match="is not a stream entry id"):
        await bus.list_dead_letters(after=("g", entry_id))
    with pytest.raises(ValueError, match="is not a stream entry id"):
        await bus.replay("g", EVENT, since_id=entry_id)


def test_a_replay_time_starts_at_its_own_millisecond() -> None:
    base = 1_800_000_000_000
    for ms in range(base, base + 2000):
        assert time_to_id(ms / 1000) == f"{ms}-0"
    assert time_to_id((base + 0.999) / 1000) == f"{base}-0"  # within it: included
    assert time_to_id(-5.0) == "0-0"
    with pytest.raises(ValueError, match="not a time"):
        time_to_id(float("inf"))


async def test_handled_counts_are_labelled_with_consumed_types_only(
    redis_url: str, make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    # Whatever lands on a stream (another version's events, a hand-made entry), the
    # metric labels stay those the group consumes: no label per stray type.
    bus = make_bus(redis_url, max_attempts=1)
    bus.subscribe("g", EVENT, recorder([]))
    await bus.start()
    await groups_ready(bus, "g")
    stray = event("stray")
    stray.type = "evil.Type-1234"
    await raw.xadd(STREAM, {"envelope": stray.SerializeToString()})
    await raw.xadd(STREAM, {"envelope": b"\xff not an envelope"})
    await bus.publish(event("fine"))

    async def settled() -> bool:
        return len(await bus.list_dead_letters("g")) == 2 and any(
            outcome == "ok" for _, _, outcome in bus.counters.handled
        )

    await eventually(settled)
    assert {event_type for _, event_type, _ in bus.counters.handled} == {EVENT}
    assert bus.counters.handled[("g", EVENT, "dead_letter")] == 2


async def test_a_corrupt_dead_letter_is_listed_not_blamed_on_the_page_token(
    redis_url: str, make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    bus = make_bus(redis_url)
    bus.subscribe("g", EVENT, recorder([]))
    await raw.xadd(
        "nexus:dead:g",
        {"envelope": b"\xff", "group": "other", "attempts": "many", "error": b"\xff\xfe"},
    )
    [dead] = await bus.list_dead_letters()
    assert (dead.group, dead.attempts, dead.envelope.type) == ("g", 0, "")
    assert dead.error == "\ufffd\ufffd"


async def test_replay_redelivers_an_entry_whose_handler_is_running(
    redis_url: str, make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    gate = asyncio.Event()
    handled: list[str] = []

    async def gated(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        await gate.wait()
        handled.append(message.order_id)

    bus = make_bus(redis_url)
    bus.subscribe("g", EVENT, gated)
    await bus.start()
    await groups_ready(bus, "g")
    await bus.publish(event("a"))

    async def in_handler() -> bool:  # read, not acknowledged
        return (await raw.xpending(STREAM, "g"))["pending"] == 1

    await eventually(in_handler)
    await bus.publish(event("b"))  # not read yet: the worker is busy with "a"
    [first] = await raw.xrange(STREAM, count=1)
    await bus.replay("g", EVENT, since_id=first[0].decode())
    gate.set()  # the running handler finishes and acknowledges as usual...
    await eventually(lambda: len(handled) == 3)
    assert handled == ["a", "a", "b"]  # ...and "a" is delivered again, "b" once

    async def settled() -> bool:
        return await backlog(bus, "g") == 0

    await eventually(settled)
    await asyncio.sleep(0.2)
    assert handled == ["a", "a", "b"]
