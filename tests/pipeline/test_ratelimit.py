"""Rate limits per caller and class (memory and Redis buckets), and the concurrency limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2
from nexus.options.v1 import options_pb2

from nexus_grpc.access.policy import Access, EffectivePolicy
from nexus_grpc.auth.principal import Principal, principal_var
from nexus_grpc.config import LimitsConfig
from nexus_grpc.errors import StatusError
from nexus_grpc.gateway.status import error_body, http_status
from nexus_grpc.pipeline import ErrorStage, chain
from nexus_grpc.ratelimit import (
    ConcurrencyStage,
    MemoryBuckets,
    RateClass,
    RateLimitStage,
    RedisBuckets,
    caller_key,
    parse_rate_classes,
    peer_address,
    rate_limited,
)
from nexus_grpc.routing import Arity, CallHandler, InFlight, MethodInfo


def _limits_service() -> ServiceDescriptor:
    """A service whose default policy names class "bulk", one method overriding it."""
    name = "tests/pipeline/ratelimit_probe.proto"
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(name)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto(
            name=name,
            package="ratelimitprobe.v1",
            syntax="proto3",
            dependency=["nexus/options/v1/options.proto"],
        )
        proto.message_type.add(name="Msg")
        service = proto.service.add(name="Limited")
        service_options: Any = service.options  # the stubs do not type custom options
        service_options.Extensions[options_pb2.default_policy].CopyFrom(
            options_pb2.MethodPolicy(public=True, rate_limit_class="bulk")
        )
        for method, rate_class in [("Bulk", None), ("Login", "login"), ("Typo", "logn")]:
            added = service.method.add(
                name=method,
                input_type=".ratelimitprobe.v1.Msg",
                output_type=".ratelimitprobe.v1.Msg",
            )
            if rate_class is not None:
                method_options: Any = added.options
                method_options.Extensions[options_pb2.policy].CopyFrom(
                    options_pb2.MethodPolicy(public=True, rate_limit_class=rate_class)
                )
        plain = proto.service.add(name="Plain")
        plain.method.add(
            name="Get", input_type=".ratelimitprobe.v1.Msg", output_type=".ratelimitprobe.v1.Msg"
        )
        pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindServiceByName("ratelimitprobe.v1.Limited")


LIMITED = _limits_service()
PLAIN = descriptor_pool.Default().FindServiceByName("ratelimitprobe.v1.Plain")

CLASSES = {
    "default": RateClass("default", rate=100, burst=200),
    "login": RateClass("login", rate=1, burst=3),
    "bulk": RateClass("bulk", rate=10, burst=1),
}


def info(
    method: str, *, service: ServiceDescriptor = LIMITED, policy: EffectivePolicy | None = None
) -> MethodInfo:
    descriptor = service.methods_by_name[method]
    return MethodInfo(
        f"/{service.full_name}/{method}",
        "probe",
        descriptor,
        Arity.of(descriptor),
        InFlight(),
        policy=policy,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeContext:
    """The parts of a servicer context the stages and the error stage use."""

    def __init__(self, peer: str = "ipv4:10.0.0.1:5555") -> None:
        self._peer = peer
        self.aborted: tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]] | None = None

    def peer(self) -> str:
        return self._peer

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str, trailing: Any = ()) -> None:
        self.aborted = (code, details, tuple(trailing))
        raise grpc.aio.AbortError()


async def echo(request: Any, context: Any) -> Any:
    return request


async def run(call: CallHandler, request: Any) -> Any:
    """``call`` as a coroutine, for create_task."""
    return await call(request, FakeContext())


def limited(
    method: str = "Login",
    buckets: Any = None,
    clock: FakeClock | None = None,
    handler: CallHandler = echo,
) -> CallHandler:
    buckets = buckets if buckets is not None else MemoryBuckets(clock=clock or FakeClock())
    return RateLimitStage(buckets, CLASSES).bind(info(method), handler)


async def outcomes(call: CallHandler, count: int, context: Any = None) -> list[bool]:
    results = []
    for _ in range(count):
        try:
            await call("ping", context or FakeContext())
        except StatusError as error:
            if error.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            results.append(False)
        else:
            results.append(True)
    return results


# Classes -------------------------------------------------------------------------------


def test_classes_come_from_the_limits_configuration() -> None:
    classes = parse_rate_classes(LimitsConfig().rate_classes)
    assert classes["login"] == RateClass("login", rate=1.0, burst=10.0)
    assert classes["default"].refill_seconds == 2.0
    with pytest.raises(ValueError, match="rate must be > 0"):
        RateClass("x", rate=0, burst=1)
    with pytest.raises(ValueError, match="burst must be >= 1"):
        RateClass("x", rate=1, burst=0.5)
    with pytest.raises(ValueError, match=r"expected rate and burst, got \['rate'\]"):
        parse_rate_classes({"x": {"rate": 1.0}})
    with pytest.raises(ValueError, match="is configured as"):
        parse_rate_classes({"y": RateClass("x", 1, 1)})


async def test_the_class_is_the_methods_then_the_services_then_default() -> None:
    memory = MemoryBuckets()
    stage = RateLimitStage(memory, CLASSES)
    assert stage.bind(info("Login"), echo) is not echo
    # Read from the descriptors when the method info carries no resolved policy.
    for method, service, expected in [
        ("Login", LIMITED, "login"),
        ("Bulk", LIMITED, "bulk"),
        ("Get", PLAIN, "default"),
    ]:
        memory_before = len(memory)
        call = stage.bind(info(method, service=service), echo)
        await call("ping", FakeContext())
        assert len(memory) == memory_before + 1
        assert (expected, "peer:10.0.0.1") in memory._buckets
    # The host's resolved policy (its own services get one) wins.
    host_policy = EffectivePolicy(path="/x/Y", access=Access.PUBLIC, rate_limit_class="bulk")
    call = stage.bind(info("Login", policy=host_policy), echo)
    await call("ping", FakeContext("ipv4:10.9.9.9:1"))
    assert ("bulk", "peer:10.9.9.9") in memory._buckets


def test_an_unknown_class_fails_at_bind_time_naming_method_and_class() -> None:
    stage = RateLimitStage(MemoryBuckets(), CLASSES)
    with pytest.raises(
        ValueError,
        match=r"/ratelimitprobe\.v1\.Limited/Typo .*class 'logn', which is not configured \(configured: bulk, default, login\)",
    ):
        stage.bind(info("Typo"), echo)
    without_default = RateLimitStage(MemoryBuckets(), {"login": CLASSES["login"]})
    with pytest.raises(ValueError, match="class 'default'"):
        without_default.bind(info("Get", service=PLAIN), echo)


# Bucket math ---------------------------------------------------------------------------


async def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    buckets = MemoryBuckets(clock=clock)
    login = CLASSES["login"]  # 1 token per second, 3 at most
    decisions = [await buckets.take(login, "k") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].retry_after == pytest.approx(1.0)
    clock.advance(0.25)
    denied = await buckets.take(login, "k")
    assert not denied.allowed and denied.retry_after == pytest.approx(0.75)
    clock.advance(0.75)
    assert (await buckets.take(login, "k")).allowed
    assert not (await buckets.take(login, "k")).allowed
    # A long pause refills to the burst, never beyond it.
    clock.advance(3600)
    assert [(await buckets.take(login, "k")).allowed for _ in range(4)] == [True, True, True, False]


async def test_a_clock_going_backwards_adds_no_tokens() -> None:
    clock = FakeClock()
    buckets = MemoryBuckets(clock=clock)
    bulk = CLASSES["bulk"]
    assert (await buckets.take(bulk, "k")).allowed
    clock.advance(-10)
    assert not (await buckets.take(bulk, "k")).allowed


async def test_a_cost_above_the_burst_is_never_allowed() -> None:
    decision = await MemoryBuckets().take(CLASSES["login"], "k", cost=4)
    assert not decision.allowed and decision.retry_after == float("inf")


async def test_memory_is_bounded_by_evicting_the_least_recently_used_buckets() -> None:
    clock = FakeClock()
    buckets = MemoryBuckets(max_buckets=2, clock=clock)
    login = CLASSES["login"]
    await buckets.take(login, "a")
    await buckets.take(login, "b")
    await buckets.take(login, "a")  # a is now the most recently used
    await buckets.take(login, "c")
    assert len(buckets) == 2
    assert set(buckets._buckets) == {("login", "a"), ("login", "c")}
    with pytest.raises(ValueError, match="max_buckets"):
        MemoryBuckets(max_buckets=0)


# Callers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:5555", "127.0.0.1"),
        ("ipv6:[::1]:5555", "::1"),
        ("ipv6:%5B::1%5D:45926", "::1"),
        ("ipv6:%5B2001:db8::7%5D:443", "2001:db8::7"),
        ("ipv6:%5B::ffff:10.1.2.3%5D:80", "10.1.2.3"),
        ("unix:/run/nexus.sock", "unix:/run/nexus.sock"),
        ("unknown", "unknown"),
    ],
)
def test_the_peer_address_drops_the_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address


def test_the_caller_is_the_principal_else_the_peer_address() -> None:
    context = FakeContext("ipv4:192.0.2.7:40000")
    assert caller_key(context) == "peer:192.0.2.7"
    token = principal_var.set(Principal(subject="alice"))
    try:
        assert caller_key(context) == "sub:alice"
    finally:
        principal_var.reset(token)


async def test_principals_have_buckets_of_their_own() -> None:
    call = limited("Login")
    for subject, expected in [("alice", [True] * 3 + [False]), ("bob", [True] * 3 + [False])]:
        token = principal_var.set(Principal(subject=subject))
        try:
            assert await outcomes(call, 4) == expected
        finally:
            principal_var.reset(token)
    # The anonymous caller on the same connection is a third caller.
    assert await outcomes(call, 1) == [True]


async def test_anonymous_callers_are_limited_by_address_whatever_their_port() -> None:
    call = limited("Login")
    assert await outcomes(call, 2, FakeContext("ipv4:198.51.100.1:1000")) == [True, True]
    assert await outcomes(call, 2, FakeContext("ipv4:198.51.100.1:2000")) == [True, False]
    assert await outcomes(call, 1, FakeContext("ipv6:%5B2001:db8::1%5D:3000")) == [True]


async def test_classes_are_separate_buckets_for_the_same_caller() -> None:
    memory = MemoryBuckets(clock=FakeClock())
    assert await outcomes(limited("Bulk", memory), 2) == [True, False]
    assert await outcomes(limited("Login", memory), 1) == [True]


# The refusal ---------------------------------------------------------------------------


async def test_an_empty_bucket_refuses_with_retry_info_and_retry_after() -> None:
    clock = FakeClock()
    reached: list[str] = []

    async def handler(request: Any, context: Any) -> str:
        reached.append(request)
        return "ok"

    call = limited("Login", clock=clock, handler=handler)
    assert await outcomes(call, 3) == [True] * 3
    clock.advance(0.2)
    with pytest.raises(StatusError) as refused:
        await call("ping", FakeContext())
    error = refused.value
    assert len(reached) == 3  # the handler never saw the refused call
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == "rate limit of class 'login' reached; retry in 0.8s"
    assert error.reason == "RATE_LIMITED"
    assert error.metadata == {"retry_after": "1", "rate_limit_class": "login"}
    (retry_info,) = error.details
    assert isinstance(retry_info, error_details_pb2.RetryInfo)
    assert retry_info.retry_delay.ToMilliseconds() == 800
    # REST: 429 with RetryInfo and the ErrorInfo metadata in the google.rpc.Status body.
    assert http_status(error.code) == 429
    body = error_body(error)
    assert body["details"][0]["metadata"]["retry_after"] == "1"
    assert body["details"][1] == {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "0.800s",
    }


def test_retry_hints_round_up() -> None:
    error = rate_limited("bulk", 2.0001)
    assert error.message == "rate limit of class 'bulk' reached; retry in 2.1s"
    assert error.metadata["retry_after"] == "3"
    tiny = rate_limited("bulk", 0.00001)
    assert tiny.message.endswith("retry in 0.1s") and tiny.metadata["retry_after"] == "1"
    assert tiny.details[0].retry_delay.ToMilliseconds() == 1  # type: ignore[attr-defined]


async def test_a_refusal_leaves_over_grpc_as_resource_exhausted_with_details() -> None:
    buckets = MemoryBuckets(clock=FakeClock())
    call = chain([ErrorStage(), RateLimitStage(buckets, CLASSES)], info("Bulk"), echo)
    await call("ping", FakeContext())
    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        await call("ping", context)
    assert context.aborted is not None
    code, message, trailing = context.aborted
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message == "rate limit of class 'bulk' reached; retry in 0.1s"
    status = status_pb2.Status.FromString(dict(trailing)["grpc-status-details-bin"])
    retry_info = error_details_pb2.RetryInfo()
    assert status.details[1].Unpack(retry_info)
    assert retry_info.retry_delay.ToMilliseconds() == 100


# Redis ---------------------------------------------------------------------------------


@pytest.fixture
async def redis_buckets(redis_url: str) -> AsyncIterator[list[RedisBuckets]]:
    """Two bucket stores on one Redis, as two host instances would have."""
    stores = [RedisBuckets.from_url(redis_url), RedisBuckets.from_url(redis_url)]
    try:
        yield stores
    finally:
        for store in stores:
            await store.aclose()


async def test_redis_buckets_are_shared_by_every_instance(
    redis_buckets: list[RedisBuckets],
) -> None:
    first, second = redis_buckets
    login = CLASSES["login"]
    allowed = [
        (await store.take(login, "sub:alice")).allowed for store in (first, second, first, second)
    ]
    assert allowed == [True, True, True, False]
    denied = await first.take(login, "sub:alice")
    assert not denied.allowed
    assert 0.9 < denied.retry_after <= 1.0
    assert (await second.take(login, "sub:bob")).allowed


async def test_redis_buckets_expire_when_they_would_be_full(
    redis_buckets: list[RedisBuckets],
) -> None:
    store = redis_buckets[0]
    login = CLASSES["login"]
    await store.take(login, "peer:10.0.0.1")
    key = store.key(login, "peer:10.0.0.1")
    assert key == "nexus:ratelimit:login:peer:10.0.0.1"
    ttl = await store.client.pttl(key)
    # One token spent at 1 per second: full again after 1 s (+1 s of slack).
    assert 1000 < ttl <= 2000
    await store.take(login, "peer:10.0.0.1")
    await store.take(login, "peer:10.0.0.1")
    assert 3000 < await store.client.pttl(key) <= 4000


async def test_redis_buckets_refill_on_the_servers_clock(redis_buckets: list[RedisBuckets]) -> None:
    store = redis_buckets[0]
    fast = RateClass("fast", rate=50, burst=1)  # a token every 20 ms
    assert (await store.take(fast, "k")).allowed
    denied = await store.take(fast, "k")
    assert not denied.allowed and 0 < denied.retry_after <= 0.02
    await asyncio.sleep(0.03)
    assert (await store.take(fast, "k")).allowed


async def test_redis_buckets_survive_a_script_cache_flush(
    redis_buckets: list[RedisBuckets],
) -> None:
    store = redis_buckets[0]
    assert (await store.take(CLASSES["login"], "k")).allowed
    await store.client.script_flush()
    assert 1 <= (await store.take(CLASSES["login"], "k")).remaining < 1.5


async def test_the_stage_with_redis_buckets_refuses_like_the_memory_one(
    redis_buckets: list[RedisBuckets],
) -> None:
    call = limited("Bulk", redis_buckets[0])
    assert await outcomes(call, 2) == [True, False]


async def test_an_unreachable_redis_refuses_calls_fast_with_unavailable(unused_port: int) -> None:
    store = RedisBuckets.from_url(f"redis://127.0.0.1:{unused_port}/0")
    reached: list[Any] = []

    async def handler(request: Any, context: Any) -> None:
        reached.append(request)

    try:
        call = limited("Login", store, handler=handler)
        started = time.monotonic()
        with pytest.raises(StatusError) as refused:
            await call("ping", FakeContext())
        assert time.monotonic() - started < 1.0
    finally:
        await store.aclose()
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert refused.value.message == "rate limiter unavailable"
    assert refused.value.reason == "RATE_LIMITER_UNAVAILABLE"
    assert reached == []  # fails closed


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# Concurrency ---------------------------------------------------------------------------


async def test_calls_beyond_the_concurrency_limit_are_refused_across_methods() -> None:
    stage = ConcurrencyStage(2)
    release = asyncio.Event()

    async def slow(request: Any, context: Any) -> Any:
        await release.wait()
        return request

    first = stage.bind(info("Login"), slow)
    second = stage.bind(info("Get", service=PLAIN), slow)  # another method, same limit
    running = [
        asyncio.create_task(run(first, "a")),
        asyncio.create_task(run(second, "b")),
    ]
    await asyncio.sleep(0)
    assert stage.active == 2
    with pytest.raises(StatusError) as refused:
        await first("c", FakeContext())
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.message == "too many concurrent calls (limit 2)"
    assert refused.value.reason == "TOO_MANY_CONCURRENT_CALLS"
    release.set()
    assert await asyncio.gather(*running) == ["a", "b"]
    assert stage.active == 0
    assert await first("d", FakeContext()) == "d"


async def test_failed_and_cancelled_calls_free_their_slot() -> None:
    stage = ConcurrencyStage(1)

    async def fail(request: Any, context: Any) -> None:
        raise RuntimeError("bug")

    async def hang(request: Any, context: Any) -> None:
        await asyncio.sleep(30)

    with pytest.raises(RuntimeError):
        await stage.bind(info("Login"), fail)("x", FakeContext())
    task = asyncio.create_task(run(stage.bind(info("Login"), hang), "x"))
    await asyncio.sleep(0)
    assert stage.active == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stage.active == 0


def test_no_concurrency_limit_costs_nothing() -> None:
    assert ConcurrencyStage(0).bind(info("Login"), echo) is echo
    with pytest.raises(ValueError, match=">= 0"):
        ConcurrencyStage(-1)
