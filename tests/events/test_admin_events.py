"""Operating the event bus through the admin service: dead letters, redrive, replay,
stats, their CLI, and the event metrics on /metrics — on both bus backends.

A test plugin, ``sink``, consumes ``StockReserved``; files in a control folder steer
it: ``broken`` makes it fail on events whose order id starts with "poison", ``gate``
holds it until removed, and it appends each order id it handled to ``handled``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from nexus.inventory.v1 import inventory_pb2
from prometheus_client.parser import text_string_to_metric_families

from nexus_grpc.config import EventsConfig
from nexus_grpc.errors import NotFoundError
from nexus_grpc.events import Envelope, MemoryBus, seal
from nexus_grpc.events.redis_bus import RedisBus
from nexus_grpc.testing import RunningHost, running_host
from tests.fixtures.cli import run_cli

pytestmark = pytest.mark.usefixtures("probe_stubs")

EVENT = "nexus.inventory.v1.StockReserved"
STREAM = f"nexus:events:{EVENT}"

SINK_MANIFEST = """\
name = "sink"
version = "1"
category = "business"
description = "Consumes StockReserved for the event operations tests."
services = ["probe.v1.ProbeService"]
consumes = ["nexus.inventory.v1.StockReserved"]
"""

SINK_CODE = """\
import asyncio
from pathlib import Path

from nexus.inventory.v1 import inventory_pb2
from probe.v1 import probe_pb2, probe_pb2_grpc

from nexus_grpc import Plugin
from nexus_grpc.events import subscribe


class Sink(probe_pb2_grpc.ProbeServiceServicer):
    def __init__(self, ctx):
        self._control = Path(ctx.config["control"])

    async def Sleep(self, request, context):
        return probe_pb2.SleepResponse()

    @subscribe(inventory_pb2.StockReserved)
    async def on_reserved(self, event, delivery):
        while (self._control / "gate").exists():
            await asyncio.sleep(0.01)
        if (self._control / "broken").exists() and event.order_id.startswith("poison"):
            raise RuntimeError(f"cannot handle {event.order_id}")
        with (self._control / "handled").open("a") as handled:
            handled.write(event.order_id + "\\n")


plugin = Plugin(services=[Sink])
"""


@dataclass
class Shop:
    """A host with the sink plugin, an admin stub and the sink's control folder."""

    running: RunningHost
    backend: str
    control: Path
    admin: Any
    redis_url: str = ""

    def handled(self) -> list[str]:
        path = self.control / "handled"
        return path.read_text().split() if path.exists() else []

    def stub(self, token: str | None) -> Any:
        return admin_pb2_grpc.AdminServiceStub(self.running.channel(token))

    async def publish(self, order_id: str, **envelope: str) -> Envelope:
        event = seal(inventory_pb2.StockReserved(order_id=order_id), source="test", **envelope)
        await self.running.host.bus.publish(event)
        return event

    async def dead_letters(self, **request: Any) -> list[admin_pb2.DeadLetter]:
        reply = await self.admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest(**request))
        return list(reply.dead_letters)

    async def stats(self) -> admin_pb2.EventGroupStats:
        reply = await self.admin.GetEventStats(admin_pb2.GetEventStatsRequest())
        [group] = [g for g in reply.groups if g.group == "sink"]
        return group


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def write_sink(root: Path) -> Path:
    folder = root / "plugins" / "sink"
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(SINK_MANIFEST)
    (folder / "__init__.py").write_text(SINK_CODE)
    control = root / "control"
    control.mkdir()
    return control


async def wait_for_groups(redis_url: str, *names: str) -> None:
    """New Redis groups start at "$": publish only once the groups exist."""
    client = aioredis.Redis.from_url(redis_url)
    try:

        async def ready() -> bool:
            try:
                groups = await client.xinfo_groups(STREAM)
            except aioredis.ResponseError:
                return False
            return {info["name"].decode() for info in groups} >= set(names)

        await eventually(ready)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def shop(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Shop]:
    control = write_sink(tmp_path)
    redis_url = ""
    events = EventsConfig(max_attempts=2, retry_backoff=0.01)
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_url")
        events = EventsConfig(
            backend="redis", redis_url=redis_url, max_attempts=2, retry_backoff=0.01
        )
    async with running_host(
        plugins=["sink"],
        plugin_dirs=[tmp_path / "plugins"],
        data_dir=tmp_path / "data",
        plugin_config={"sink": {"control": str(control)}},
        events=events,
        http=True,
    ) as running:
        if redis_url:
            await wait_for_groups(redis_url, "sink")
        admin = admin_pb2_grpc.AdminServiceStub(running.channel(running.token("admin")))
        yield Shop(running, request.param, control, admin, redis_url)


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations of a failed call."""
    found: dict[str, str] = {}
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad_request = error_details_pb2.BadRequest()
                    detail.Unpack(bad_request)
                    found.update({v.field: v.description for v in bad_request.field_violations})
    return found


async def failing(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def a_dead_letter(shop: Shop) -> admin_pb2.DeadLetter:
    """poison-1 dead-lettered after 2 attempts, then ok-1 handled; the group idle."""
    (shop.control / "broken").touch()
    await shop.publish("poison-1")
    await shop.publish("ok-1")

    async def settled() -> bool:
        group = await shop.stats()
        return (
            len(await shop.dead_letters()) == 1
            and "ok-1" in shop.handled()
            and (group.pending, group.lag) == (0, 0)
        )

    await eventually(settled)
    [dead] = await shop.dead_letters()
    return dead


def handled_at_least(shop: Shop, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(shop.handled()) >= count

    return check


def metric_samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


# Dead letters and redrive ------------------------------------------------------------


async def test_a_poison_event_is_listed_then_redriven_and_handled(shop: Shop) -> None:
    (shop.control / "broken").touch()
    published = await shop.publish("poison-1", subject="order-9", correlation_id="req-7")
    await shop.publish("ok-1")

    async def dead_lettered() -> bool:
        return len(await shop.dead_letters(group="sink")) == 1 and "ok-1" in shop.handled()

    await eventually(dead_lettered)
    [dead] = await shop.dead_letters(group="sink")
    assert dead.id and dead.group == "sink"
    assert (dead.attempts, dead.error) == (2, "RuntimeError: cannot handle poison-1")
    event = dead.event
    assert (event.id, event.type, event.source) == (published.id, EVENT, "test")
    assert (event.subject, event.correlation_id) == ("order-9", "req-7")
    assert event.time == published.time
    payload = inventory_pb2.StockReserved()
    assert event.payload.Unpack(payload) and payload.order_id == "poison-1"
    if shop.backend == "redis":
        assert dead.entry_id  # the event's entry in its stream: a replay starting point
    else:
        assert dead.entry_id == ""
    assert [d.id for d in await shop.dead_letters()] == [dead.id]  # every group
    assert (await shop.stats()).dead_letters == 1

    (shop.control / "broken").unlink()  # the handler is fixed
    await shop.admin.RedriveDeadLetter(admin_pb2.RedriveDeadLetterRequest(group="sink", id=dead.id))

    async def handled() -> bool:
        return "poison-1" in shop.handled()

    await eventually(handled)
    assert shop.handled() == ["ok-1", "poison-1"]
    assert await shop.dead_letters() == []
    assert (await shop.stats()).dead_letters == 0

    again = await failing(
        shop.admin.RedriveDeadLetter(admin_pb2.RedriveDeadLetterRequest(group="sink", id=dead.id))
    )
    assert again.code() == grpc.StatusCode.NOT_FOUND
    assert dead.id in (again.details() or "")

    # Administrative calls are audited, with their outcome.
    records = await shop.admin.ListAuditRecords(
        admin_pb2.ListAuditRecordsRequest(action="admin.call", page_size=100)
    )
    redrives = [r for r in records.records if r.target.endswith("/RedriveDeadLetter")]
    assert [r.outcome for r in redrives] == [admin_pb2.OUTCOME_FAILED, admin_pb2.OUTCOME_SUCCEEDED]
    assert {r.actor for r in redrives} == {"admin"}


async def test_a_redriven_event_failing_again_is_a_new_dead_letter(shop: Shop) -> None:
    dead = await a_dead_letter(shop)
    await shop.admin.RedriveDeadLetter(admin_pb2.RedriveDeadLetterRequest(group="sink", id=dead.id))

    async def dead_again() -> bool:
        letters = await shop.dead_letters()
        return len(letters) == 1 and letters[0].id != dead.id

    await eventually(dead_again)
    [again] = await shop.dead_letters()
    assert again.event.id == dead.event.id
    assert again.entry_id == dead.entry_id  # still points at where the event came from


async def test_dead_letters_come_in_pages_oldest_first(shop: Shop) -> None:
    (shop.control / "broken").touch()
    for index in range(3):
        await shop.publish(f"poison-{index}")

    async def all_dead() -> bool:
        return len(await shop.dead_letters()) == 3

    await eventually(all_dead)
    first = await shop.admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest(page_size=2))
    assert first.next_page_token
    second = await shop.admin.ListDeadLetters(
        admin_pb2.ListDeadLettersRequest(page_size=2, page_token=first.next_page_token)
    )
    assert second.next_page_token == ""
    letters = [*first.dead_letters, *second.dead_letters]
    orders = []
    for dead in letters:
        payload = inventory_pb2.StockReserved()
        dead.event.payload.Unpack(payload)
        orders.append(payload.order_id)
    assert orders == ["poison-0", "poison-1", "poison-2"]

    other_filter = await failing(
        shop.admin.ListDeadLetters(
            admin_pb2.ListDeadLettersRequest(group="sink", page_token=first.next_page_token)
        )
    )
    assert other_filter.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in violations(other_filter)


async def test_bad_requests_name_the_field(shop: Shop) -> None:
    admin = shop.admin
    cases: list[tuple[Awaitable[Any], str]] = [
        (
            admin.RedriveDeadLetter(admin_pb2.RedriveDeadLetterRequest(group="nope", id="1")),
            "group",
        ),
        (admin.RedriveDeadLetter(admin_pb2.RedriveDeadLetterRequest(group="sink", id="x!")), "id"),
        (admin.RedriveDeadLetter(admin_pb2.RedriveDeadLetterRequest(id="1")), "group"),
        (admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest(group="nope")), "group"),
        (admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest(page_token="%%%")), "page_token"),
        (
            admin.ReplayEvents(
                admin_pb2.ReplayEventsRequest(group="sink", event_type="nexus.orders.v1.Nope")
            ),
            "event_type",
        ),
        (
            admin.ReplayEvents(admin_pb2.ReplayEventsRequest(group="nope", event_type=EVENT)),
            "group",
        ),
    ]
    # Ids past what Redis can parse (64 bits a part) are malformed, not an outage.
    too_big = f"{2**64}-0"
    cases += [
        (
            admin.RedriveDeadLetter(admin_pb2.RedriveDeadLetterRequest(group="sink", id=too_big)),
            "id",
        ),
        (
            admin.ListDeadLetters(
                admin_pb2.ListDeadLettersRequest(page_token=token_after(too_big))
            ),
            "page_token",
        ),
    ]
    if shop.backend == "redis":
        for since in ("yesterday", f"1-{2**64}", ""):
            bad_start = admin_pb2.ReplayEventsRequest(
                group="sink", event_type=EVENT, since_entry_id=since
            )
            cases.append((admin.ReplayEvents(bad_start), "since_entry_id"))
    for call, field in cases:
        error = await failing(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in violations(error), (field, error.details())
    unknown_group = await failing(
        admin.RedriveDeadLetter(admin_pb2.RedriveDeadLetterRequest(group="nope", id="1"))
    )
    assert "consumer groups: sink" in (unknown_group.details() or "")


def token_after(entry_id: str, group: str = "sink", group_filter: str = "") -> str:
    """A page token as the service makes them, continuing after ``entry_id``."""
    body = json.dumps({"v": 1, "g": group_filter, "a": [group, entry_id]}).encode()
    return base64.urlsafe_b64encode(body).rstrip(b"=").decode()


async def test_two_admins_redriving_one_dead_letter_redrive_it_once(shop: Shop) -> None:
    dead = await a_dead_letter(shop)
    (shop.control / "broken").unlink()
    request = admin_pb2.RedriveDeadLetterRequest(group="sink", id=dead.id)
    outcomes = await asyncio.gather(
        *(shop.admin.RedriveDeadLetter(request) for _ in range(2)), return_exceptions=True
    )
    errors = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert [e.code() for e in errors] == [grpc.StatusCode.NOT_FOUND]

    async def handled() -> bool:
        return "poison-1" in shop.handled()

    await eventually(handled)
    await asyncio.sleep(0.2)
    assert shop.handled().count("poison-1") == 1
    assert await shop.dead_letters() == []


# Replay ------------------------------------------------------------------------------


@pytest.mark.parametrize("shop", ["redis"], indirect=True)
async def test_replay_makes_the_group_handle_earlier_events_again(shop: Shop) -> None:
    for order_id in ("a", "b", "c"):
        await shop.publish(order_id)

    await eventually(handled_at_least(shop, 3))
    client = aioredis.Redis.from_url(shop.redis_url)
    try:
        entries = await client.xrange(STREAM)
    finally:
        await client.aclose()
    second = entries[1][0].decode()

    reply = await shop.admin.ReplayEvents(
        admin_pb2.ReplayEventsRequest(group="sink", event_type=EVENT, since_entry_id=second)
    )
    assert reply.position  # the id just before `second`
    await eventually(handled_at_least(shop, 5))
    assert shop.handled() == ["a", "b", "c", "b", "c"]

    since = timestamp_pb2.Timestamp()
    since.FromMilliseconds(int(entries[0][0].decode().split("-")[0]))
    await shop.admin.ReplayEvents(
        admin_pb2.ReplayEventsRequest(group="sink", event_type=EVENT, since_time=since)
    )
    await eventually(handled_at_least(shop, 8))
    assert shop.handled()[5:] == ["a", "b", "c"]

    oldest = await shop.admin.ReplayEvents(
        admin_pb2.ReplayEventsRequest(group="sink", event_type=EVENT)
    )
    assert oldest.position == "0"
    await eventually(handled_at_least(shop, 11))
    await asyncio.sleep(0.2)
    assert shop.handled() == ["a", "b", "c", "b", "c", "a", "b", "c", "a", "b", "c"]


@pytest.mark.parametrize("shop", ["redis"], indirect=True)
async def test_replay_from_an_event_id_over_grpc_rest_and_the_cli(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    published = [await shop.publish(order_id) for order_id in ("a", "b", "c")]
    await eventually(handled_at_least(shop, 3))

    await shop.admin.ReplayEvents(
        admin_pb2.ReplayEventsRequest(
            group="sink", event_type=EVENT, since_event_id=published[1].id
        )
    )
    await eventually(handled_at_least(shop, 5))

    async with httpx.AsyncClient(base_url=shop.running.http_url) as http:
        reply = await http.post(
            "/v1/admin/events/groups/sink:replay",
            json={"eventType": EVENT, "sinceEventId": published[2].id},
            headers={"authorization": f"Bearer {shop.running.token('admin')}"},
        )
    assert reply.status_code == 200, reply.text
    await eventually(handled_at_least(shop, 6))

    target = ("--address", shop.running.address, "--token", shop.running.token("admin"))
    code, out, err = await run_cli(
        capsys, "events", "replay", "sink", EVENT, "--since-event", published[0].id, *target
    )
    assert code == 0, err
    await eventually(handled_at_least(shop, 9))
    await asyncio.sleep(0.2)
    assert shop.handled() == ["a", "b", "c", "b", "c", "c", "a", "b", "c"]

    missing = await failing(
        shop.admin.ReplayEvents(
            admin_pb2.ReplayEventsRequest(group="sink", event_type=EVENT, since_event_id="gone")
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert missing.details() == "event 'gone' not found"
    empty = await failing(
        shop.admin.ReplayEvents(
            admin_pb2.ReplayEventsRequest(group="sink", event_type=EVENT, since_event_id="")
        )
    )
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "since_event_id" in violations(empty)
    code, out, err = await run_cli(
        capsys, "events", "replay", "sink", EVENT, "--since-event", " ", *target
    )
    assert (code, out) == (2, "")
    assert "argument --since-event: is empty" in err


def float_trap_after(milliseconds: int) -> int:
    """The first millisecond from ``milliseconds`` on that ns / 1e9 * 1000 lands below."""
    while int(milliseconds * 1_000_000 / 1e9 * 1000) == milliseconds:
        milliseconds += 1
    return milliseconds


@pytest.mark.parametrize("shop", ["redis"], indirect=True)
async def test_replay_since_a_time_starts_at_that_millisecond_not_before(shop: Shop) -> None:
    # Two events stored one millisecond apart (ids chosen, in the near future so they
    # come after anything in the stream); replaying from the second one's time must
    # not take the first one too.
    moment = float_trap_after(int(time.time() * 1000) + 60_000)
    client = aioredis.Redis.from_url(shop.redis_url)
    try:
        for order_id, entry_id in (("before", f"{moment - 1}-0"), ("at", f"{moment}-0")):
            envelope = seal(inventory_pb2.StockReserved(order_id=order_id), source="test")
            await client.xadd(STREAM, {"envelope": envelope.SerializeToString()}, id=entry_id)
    finally:
        await client.aclose()
    await eventually(handled_at_least(shop, 2))

    since = timestamp_pb2.Timestamp()
    since.FromMilliseconds(moment)
    reply = await shop.admin.ReplayEvents(
        admin_pb2.ReplayEventsRequest(group="sink", event_type=EVENT, since_time=since)
    )
    assert reply.position == f"{moment - 1}-{2**64 - 1}"
    await eventually(handled_at_least(shop, 3))
    await asyncio.sleep(0.2)
    assert shop.handled() == ["before", "at", "at"]


@pytest.mark.parametrize("shop", ["memory"], indirect=True)
async def test_replay_on_the_memory_bus_is_a_failed_precondition(shop: Shop) -> None:
    error = await failing(
        shop.admin.ReplayEvents(admin_pb2.ReplayEventsRequest(group="sink", event_type=EVENT))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        'the memory bus keeps no history; use events.backend = "redis" to replay events'
    )


# Stats and metrics -------------------------------------------------------------------


async def test_stats_show_pending_and_lag_per_group_and_type(shop: Shop) -> None:
    (shop.control / "gate").touch()
    for index in range(3):
        await shop.publish(str(index))

    async def backlog() -> bool:
        group = await shop.stats()
        return group.pending >= 1 and group.pending + group.lag == 3

    await eventually(backlog)
    group = await shop.stats()
    if shop.backend == "memory":
        assert (group.pending, group.lag) == (1, 2)  # one in the handler, two queued
    [per_type] = group.event_types
    assert (per_type.event_type, per_type.pending, per_type.lag) == (
        EVENT,
        group.pending,
        group.lag,
    )
    reply = await shop.admin.GetEventStats(admin_pb2.GetEventStatsRequest())
    assert reply.backend == shop.backend

    async with httpx.AsyncClient(base_url=shop.running.http_url) as client:
        samples = metric_samples((await client.get("/metrics")).text)
    labels = (("group", "sink"),)
    assert samples[("nexus_events_pending", labels)] == group.pending
    assert samples[("nexus_events_lag", labels)] == group.lag

    (shop.control / "gate").unlink()

    async def drained() -> bool:
        group = await shop.stats()
        return (group.pending, group.lag) == (0, 0) and len(shop.handled()) == 3

    await eventually(drained)


async def test_metrics_count_published_and_handled_events(shop: Shop) -> None:
    await a_dead_letter(shop)  # poison-1 (2 attempts, dead), ok-1 (handled)
    headers = {"authorization": f"Bearer {shop.running.token('admin')}"}
    async with httpx.AsyncClient(base_url=shop.running.http_url, headers=headers) as client:
        reply = await client.get("/metrics")
        assert reply.status_code == 200
        samples = metric_samples(reply.text)
        # The same operations over REST, transcoded from the contract's annotations.
        listed = (
            await client.get("/v1/admin/events/dead-letters", params={"group": "sink"})
        ).json()
        stats = (await client.get("/v1/admin/events/stats")).json()
        bad_id = await client.post("/v1/admin/events/groups/sink/dead-letters/x!:redrive", json={})
        assert bad_id.status_code == 400
        assert bad_id.json()["details"][1]["fieldViolations"][0]["field"] == "id"
        redriven = await client.post(
            f"/v1/admin/events/groups/sink/dead-letters/{listed['deadLetters'][0]['id']}:redrive",
            json={},
        )
        assert (redriven.status_code, redriven.json()) == (200, {})
    assert samples[("nexus_events_published_total", (("type", EVENT),))] == 2
    for outcome, count in (("ok", 1), ("retry", 1), ("dead_letter", 1)):
        key = (
            "nexus_events_handled_total",
            (("group", "sink"), ("outcome", outcome), ("type", EVENT)),
        )
        assert samples[key] == count, outcome
    group = (("group", "sink"),)
    assert samples[("nexus_events_dead_letters", group)] == 1
    assert samples[("nexus_events_pending", group)] == 0
    assert samples[("nexus_events_lag", group)] == 0

    [dead] = listed["deadLetters"]
    assert dead["event"]["payload"] == {
        "@type": f"type.googleapis.com/{EVENT}",
        "orderId": "poison-1",
    }
    assert stats["backend"] == shop.backend
    assert stats["groups"][0]["group"] == "sink"


# Access ------------------------------------------------------------------------------


@pytest.mark.parametrize("shop", ["memory"], indirect=True)
async def test_event_operations_need_event_permissions(shop: Shop) -> None:
    requests = {
        "ListDeadLetters": admin_pb2.ListDeadLettersRequest(),
        "GetEventStats": admin_pb2.GetEventStatsRequest(),
        "RedriveDeadLetter": admin_pb2.RedriveDeadLetterRequest(group="sink", id="1"),
        "ReplayEvents": admin_pb2.ReplayEventsRequest(group="sink", event_type=EVENT),
    }
    customer = shop.stub(shop.running.token("alice", grants=("orders.read:all",)))
    plugin_viewer = shop.stub(shop.running.token("bob", grants=("admin.read:all",)))
    for stub in (customer, plugin_viewer):
        for method, request in requests.items():
            error = await failing(getattr(stub, method)(request))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, method
    anonymous = await failing(shop.stub(None).GetEventStats(admin_pb2.GetEventStatsRequest()))
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED

    reader = shop.stub(shop.running.token("carol", grants=("events.read:all",)))
    assert (await reader.GetEventStats(admin_pb2.GetEventStatsRequest())).backend == "memory"
    denied = await failing(reader.RedriveDeadLetter(requests["RedriveDeadLetter"]))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_unreachable_redis_is_unavailable_and_metrics_still_answer(
    tmp_path: Path,
) -> None:
    control = write_sink(tmp_path)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    events = EventsConfig(backend="redis", redis_url=f"redis://127.0.0.1:{port}/0")
    async with running_host(
        plugins=["sink"],
        plugin_dirs=[tmp_path / "plugins"],
        data_dir=tmp_path / "data",
        plugin_config={"sink": {"control": str(control)}},
        events=events,
        http=True,
    ) as running:
        admin = admin_pb2_grpc.AdminServiceStub(running.channel(running.token("admin")))
        for call in (
            admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest()),
            admin.GetEventStats(admin_pb2.GetEventStatsRequest()),
            admin.RedriveDeadLetter(admin_pb2.RedriveDeadLetterRequest(group="sink", id="1-0")),
            admin.ReplayEvents(admin_pb2.ReplayEventsRequest(group="sink", event_type=EVENT)),
        ):
            error = await failing(call)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        async with httpx.AsyncClient(base_url=running.http_url) as client:
            began = time.monotonic()
            reply = await client.get("/metrics")
            assert time.monotonic() - began < 2
        assert reply.status_code == 200
        samples = metric_samples(reply.text)
        assert not [key for key in samples if key[0] == "nexus_events_lag"]  # unknown: left out
        assert any(key[0] == "grpc_server_started_total" for key in samples)  # the rest is there


# CLI ---------------------------------------------------------------------------------


async def test_cli_lists_redrives_and_reports(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = await a_dead_letter(shop)
    target = ("--address", shop.running.address, "--token", shop.running.token("admin"))

    code, out, err = await run_cli(capsys, "events", "dead-letters", *target)
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["ID", "GROUP", "TYPE", "ATTEMPTS", "PUBLISHED", "ERROR"]
    assert row.split()[:4] == [dead.id, "sink", EVENT, "2"]
    assert row.endswith("RuntimeError: cannot handle poison-1")

    code, out, err = await run_cli(
        capsys, "events", "dead-letters", "--group", "sink", "--json", *target
    )
    assert code == 0, err
    [listed] = json.loads(out)
    assert (listed["id"], listed["group"], listed["attempts"]) == (dead.id, "sink", 2)
    assert listed["event"]["payload"]["orderId"] == "poison-1"

    code, out, err = await run_cli(capsys, "events", "stats", *target)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"event bus: {shop.backend}"
    assert lines[2].split() == ["sink", "0", "0", "1"]
    assert lines[3].split() == [EVENT, "0", "0"]
    code, out, err = await run_cli(capsys, "events", "stats", "--json", *target)
    assert json.loads(out)["groups"][0]["deadLetters"] == "1"

    (shop.control / "broken").unlink()
    code, out, err = await run_cli(capsys, "events", "redrive", "sink", dead.id, *target)
    assert (code, out.strip()) == (0, f"nexus events: dead letter {dead.id} redriven to sink")

    async def handled() -> bool:
        return "poison-1" in shop.handled()

    await eventually(handled)
    code, out, err = await run_cli(capsys, "events", "redrive", "sink", dead.id, *target)
    assert code == 1
    assert "NOT_FOUND" in err

    code, out, err = await run_cli(capsys, "events", "dead-letters", *target)
    assert (code, out.strip()) == (0, "no dead letters")

    code, out, err = await run_cli(
        capsys, "events", "replay", "sink", EVENT, "--since", "1h", *target
    )
    if shop.backend == "memory":
        assert code == 1
        assert "FAILED_PRECONDITION: the memory bus keeps no history" in err
    else:
        assert code == 0, err
        assert out.startswith(f"nexus events: sink handles {EVENT} again")

        async def replayed() -> bool:
            return shop.handled().count("poison-1") == 2

        await eventually(replayed)


async def test_cli_says_when_it_cannot_reach_or_is_not_allowed(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = ("--address", f"127.0.0.1:{port}", "--timeout", "0.5")
    code, out, err = await run_cli(capsys, "events", "stats", *nowhere)
    assert (code, out) == (1, "")
    assert f"cannot reach a nexus host at 127.0.0.1:{port}" in err

    here = ("--address", shop.running.address, "--token", "")
    code, out, err = await run_cli(capsys, "events", "stats", *here)
    assert (code, out) == (1, "")
    assert "UNAUTHENTICATED" in err and "--token or $NEXUS_TOKEN" in err

    code, out, err = await run_cli(
        capsys, "events", "replay", "sink", EVENT, "--since", "last tuesday", *here
    )
    assert (code, out) == (2, "")
    assert "neither an ISO 8601 time" in err


async def test_cli_refuses_arguments_that_would_do_something_else(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    await a_dead_letter(shop)
    target = ("--address", shop.running.address, "--token", shop.running.token("admin"))
    replay = ("events", "replay", "sink", EVENT)
    refused = {
        # An empty id (an unset shell variable) is not "from the oldest event kept".
        (*replay, "--since-id", ""): "--since-id",
        # Too far back for a timestamp: an error, not a traceback.
        (*replay, "--since", "99999999999999999999d"): "--since",
        (*replay, "--since", "9" * 400 + "s"): "--since",
        # "At most 0" is not "there are none".
        ("events", "dead-letters", "--limit", "0"): "--limit",
        ("events", "dead-letters", "--limit", "-3"): "--limit",
        ("events", "stats", "--timeout", "0"): "--timeout",
    }
    for argv, option in refused.items():
        code, out, err = await run_cli(capsys, *argv, *target)
        assert (code, out) == (2, ""), argv
        assert f"argument {option}" in err, (argv, err)
        assert "Traceback" not in err
    code, out, err = await run_cli(capsys, "events")
    assert code == 2
    assert "dead-letters" in out + err and "replay" in out + err  # the events commands


# The operations on the buses themselves ------------------------------------------------


def always_failing(into: list[str]) -> Callable[[Any, Any], Awaitable[None]]:
    async def handle(event: inventory_pb2.StockReserved, delivery: Any) -> None:
        into.append(event.order_id)
        raise RuntimeError(f"no {event.order_id}")

    return handle


async def test_memory_dead_letters_have_stable_ids_and_redrive_to_their_group_only() -> None:
    bus = MemoryBus(max_attempts=1)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    bus.subscribe("a", EVENT, always_failing(seen["a"]))
    bus.subscribe("b", EVENT, always_failing(seen["b"]))
    await bus.start()
    try:
        for order_id in ("1", "2"):
            await bus.publish(seal(inventory_pb2.StockReserved(order_id=order_id), source="t"))

        async def all_dead() -> bool:
            return len(await bus.list_dead_letters()) == 4

        await eventually(all_dead)
        letters = await bus.list_dead_letters()
        assert [d.id for d in letters] == ["1", "2", "3", "4"]  # in the order they died
        of_a = [d.id for d in letters if d.group == "a"]
        of_b = [d.id for d in letters if d.group == "b"]
        assert len(of_a) == len(of_b) == 2
        assert [d.id for d in await bus.list_dead_letters("b")] == of_b
        assert [d.id for d in await bus.list_dead_letters(count=2, after=("a", "1"))] == ["2", "3"]

        await bus.redrive("a", of_a[1])
        assert [d.id for d in await bus.list_dead_letters("a")] == of_a[:1]

        async def failed_again() -> bool:
            return len(await bus.list_dead_letters("a")) == 2

        await eventually(failed_again)
        assert seen == {"a": ["1", "2", "2"], "b": ["1", "2"]}  # b did not get it again
        assert [d.id for d in await bus.list_dead_letters("a")] == [of_a[0], "5"]  # a new id
        with pytest.raises(NotFoundError):
            await bus.redrive("b", of_a[0])  # a's, not b's
        with pytest.raises(ValueError, match="not a dead letter id"):
            await bus.redrive("a", "1-0")
        [stats_a, stats_b] = await bus.stats()
        assert (stats_a.group, stats_a.dead_letters, stats_b.dead_letters) == ("a", 2, 2)
        published = bus.counters.published
        assert published == {EVENT: 2}
        assert bus.counters.handled == {
            ("a", EVENT, "dead_letter"): 3,
            ("b", EVENT, "dead_letter"): 2,
        }
    finally:
        await bus.stop(grace=1)


async def test_redis_dead_letters_of_every_group_page_without_gaps_or_repeats(
    redis_url: str,
) -> None:
    bus = RedisBus(redis_url, max_attempts=1, block=0.05, backoff=0.01)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    bus.subscribe("a", EVENT, always_failing(seen["a"]))
    bus.subscribe("b", EVENT, always_failing(seen["b"]))
    await bus.start()
    try:
        await wait_for_groups(redis_url, "a", "b")
        for order_id in ("1", "2", "3"):
            await bus.publish(seal(inventory_pb2.StockReserved(order_id=order_id), source="t"))

        async def all_dead() -> bool:
            return len(await bus.list_dead_letters()) == 6

        await eventually(all_dead)
        everything = await bus.list_dead_letters()
        paged: list[Any] = []
        after = None
        while page := await bus.list_dead_letters(count=1, after=after):
            paged.extend(page)
            after = (page[-1].group, page[-1].id)
        assert [(d.group, d.id) for d in paged] == [(d.group, d.id) for d in everything]
        assert sorted({(d.group, d.id) for d in paged}) == sorted((d.group, d.id) for d in paged)
        assert len(paged) == 6
        with pytest.raises(ValueError, match="not a stream entry id"):
            await bus.list_dead_letters(after=("a", "7"))
        stats = {group.group: group for group in await bus.stats()}
        assert (stats["a"].dead_letters, stats["b"].dead_letters) == (3, 3)
        assert bus.counters.published == {EVENT: 3}
    finally:
        await bus.stop(grace=0)


@pytest.mark.parametrize(
    ("seconds", "nanos", "field"),
    [
        (253_402_300_800, 0, "since_time.seconds"),  # 10000-01-01T00:00:00Z
        (-62_135_596_801, 0, "since_time.seconds"),  # before 0001-01-01
        (0, -1, "since_time.nanos"),
        (0, 1_000_000_000, "since_time.nanos"),
    ],
)
async def test_replay_since_a_time_out_of_range_is_invalid_argument_not_internal(
    shop: Shop, seconds: int, nanos: int, field: str
) -> None:
    request = admin_pb2.ReplayEventsRequest(group="sink", event_type=EVENT)
    request.since_time.seconds = seconds
    request.since_time.nanos = nanos
    error = await failing(shop.admin.ReplayEvents(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(error), error.details()
    assert "Traceback" not in (error.details() or "")


async def test_replay_since_a_time_out_of_range_is_400_over_rest(shop: Shop) -> None:
    headers = {"authorization": f"Bearer {shop.running.token('admin')}"}
    async with httpx.AsyncClient(base_url=shop.running.http_url, headers=headers) as http:
        response = await http.post(
            "/v1/admin/events/groups/sink:replay",
            json={"eventType": EVENT, "sinceTime": "10000-01-01T00:00:00Z"},
        )
    assert response.status_code == 400, response.text
    assert "Traceback" not in response.text
