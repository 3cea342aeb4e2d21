"""What one gRPC client connection can hold, and for how long.

A unary call's handler only starts once its request message has arrived, so a client
that opens calls and never finishes their messages is out of the pipeline's reach;
these limits are the transport's. Each test drives a raw HTTP/2 client (h2) against a
host whose limit is small, and checks what the server did: the call's status, a reset
stream, a GOAWAY, a closed connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc.config import ServerConfig
from nexus_grpc.testing import RunningHost, running_host
from nexus_grpc.transport.grpc_server import fd_bounded_connections
from tests.security.conftest import PROBE_DIR
from tests.security.h2client import RawH2, grpc_frame

CHECK = "/grpc.health.v1.Health/Check"
MESSAGE = grpc_frame(health_pb2.HealthCheckRequest().SerializeToString())
#: Generous bound for limits of about a second, on a slow shared machine.
WITHIN = 20.0
# HTTP/2 error codes (RFC 9113 section 7).
REFUSED_STREAM = 0x7
ENHANCE_YOUR_CALM = 0xB

# Limits that stay out of the way unless a test lowers them.
QUIET = ServerConfig(
    request_read_timeout=0,
    max_connection_idle=0,
    max_connection_age=0,
)

HostFactory = Callable[[ServerConfig], Awaitable[RunningHost]]


@pytest.fixture
async def start_host(tmp_path: Path) -> AsyncIterator[HostFactory]:
    """Starts a host (health service only) with the given server limits."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(server: ServerConfig) -> RunningHost:
            return await stack.enter_async_context(
                running_host(plugins=["none"], plugin_dirs=[], data_dir=tmp_path, server=server)
            )

        yield start


@pytest.fixture
async def connections() -> AsyncIterator[list[RawH2]]:
    """Raw connections, closed after the test."""
    opened: list[RawH2] = []
    yield opened
    for connection in opened:
        await connection.close()


async def connect(host: RunningHost, opened: list[RawH2]) -> RawH2:
    connection = await RawH2.connect(host.address)
    opened.append(connection)
    return connection


async def test_a_call_whose_request_message_never_arrives_ends_at_the_read_timeout(
    start_host: HostFactory, connections: list[RawH2]
) -> None:
    host = await start_host(replace(QUIET, request_read_timeout=1.0))
    client = await connect(host, connections)
    silent = await client.open_call(CHECK)
    half_sent = await client.open_call(CHECK, body=MESSAGE[:3])
    assert await client.wait(
        lambda: client.stream_ended(silent) and client.stream_ended(half_sent), WITHIN
    )
    for stream in (silent, half_sent):
        assert client.streams[stream].grpc_status == "4"
        message = client.streams[stream].headers["grpc-message"]
        assert "request message did not arrive within 1s" in message
    # The connection still serves whole calls.
    whole = await client.open_call(CHECK, body=MESSAGE, end=True)
    assert await client.wait(lambda: client.stream_ended(whole), WITHIN)
    assert client.streams[whole].grpc_status == "0"


async def test_a_call_that_half_closes_without_a_message_is_an_error(
    start_host: HostFactory, connections: list[RawH2]
) -> None:
    host = await start_host(replace(QUIET, request_read_timeout=30.0))
    client = await connect(host, connections)
    empty = await client.open_call(CHECK, end=True)
    assert await client.wait(lambda: client.stream_ended(empty), WITHIN)
    assert client.streams[empty].grpc_status == str(grpc.StatusCode.INTERNAL.value[0])


async def test_the_read_timeout_leaves_whole_calls_and_client_deadlines_alone(
    start_host: HostFactory,
) -> None:
    host = await start_host(replace(QUIET, request_read_timeout=1.0))
    stub = health_pb2_grpc.HealthStub(host.channel())
    reply = await stub.Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("read_timeout", "grpc_timeout"),
    [
        (600.0, "500m"),  # the client's deadline is the shorter bound
        (1.0, "99999999H"),  # a deadline of years must not lift the read bound
    ],
    ids=["client-deadline-shorter", "client-deadline-longer"],
)
async def test_a_missing_message_ends_at_the_shorter_of_deadline_and_read_timeout(
    start_host: HostFactory, connections: list[RawH2], read_timeout: float, grpc_timeout: str
) -> None:
    host = await start_host(replace(QUIET, request_read_timeout=read_timeout))
    client = await connect(host, connections)
    stream = await client.open_call(CHECK, grpc_timeout=grpc_timeout)
    assert await client.wait(lambda: client.stream_ended(stream), WITHIN)
    assert client.streams[stream].grpc_status == "4"


async def test_calls_beyond_max_concurrent_streams_are_refused(
    start_host: HostFactory, connections: list[RawH2]
) -> None:
    host = await start_host(replace(QUIET, max_concurrent_streams=3))
    client = await connect(host, connections)
    assert await client.wait(lambda: client.remote_max_streams == 3, WITHIN)
    client.ignore_stream_limit()
    held = [await client.open_call(CHECK) for _ in range(3)]
    extra = await client.open_call(CHECK)
    assert await client.wait(lambda: client.stream_ended(extra), WITHIN)
    assert client.streams[extra].reset == REFUSED_STREAM
    assert not any(client.stream_ended(stream) for stream in held)


async def test_connections_beyond_max_connections_are_closed_and_the_others_serve(
    start_host: HostFactory, connections: list[RawH2]
) -> None:
    host = await start_host(replace(QUIET, max_connections=2))
    held = [await connect(host, connections) for _ in range(2)]
    for client in held:
        assert await client.wait(lambda c=client: c.settled, WITHIN)
    extra = await connect(host, connections)
    assert await extra.wait(lambda: extra.closed, WITHIN)
    # The connections already open still get their calls answered.
    stream = await held[0].open_call(CHECK, body=grpc_frame(b""), end=True)
    assert await held[0].wait(lambda: held[0].stream_ended(stream), WITHIN)
    assert held[0].streams[stream].grpc_status == "0"


def test_the_grpc_connection_cap_fits_under_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fd_bounded_connections(0) == 0
    assert fd_bounded_connections(10**9) == soft * 3 // 8
    assert fd_bounded_connections(5) == 5


async def test_a_connection_without_calls_is_closed_after_max_connection_idle(
    start_host: HostFactory, connections: list[RawH2]
) -> None:
    host = await start_host(replace(QUIET, max_connection_idle=1.0))
    client = await connect(host, connections)
    assert await client.wait(lambda: client.goaway is not None or client.closed, WITHIN)


async def test_max_connection_age_and_grace_end_a_call_that_never_sends_its_message(
    start_host: HostFactory, connections: list[RawH2]
) -> None:
    # With the read timeout off, the connection's age is what ends the held call.
    host = await start_host(replace(QUIET, max_connection_age=1.0, max_connection_age_grace=1.0))
    client = await connect(host, connections)
    held = await client.open_call(CHECK, body=MESSAGE[:3])
    assert await client.wait(lambda: client.closed or client.stream_ended(held), WITHIN)


async def test_pings_on_a_connection_without_calls_get_goaway_enhance_your_calm(
    start_host: HostFactory, connections: list[RawH2]
) -> None:
    host = await start_host(QUIET)
    client = await connect(host, connections)
    for number in range(10):
        if client.goaway is not None or client.closed:
            break
        await client.ping(number.to_bytes(8, "big"))
        await client.wait(lambda: client.goaway is not None, 0.2)
    assert client.goaway == ENHANCE_YOUR_CALM


async def test_a_connection_that_never_says_hello_is_closed_after_the_handshake_timeout(
    start_host: HostFactory,
) -> None:
    host = await start_host(replace(QUIET, handshake_timeout=1.0))
    address, _, port = host.address.rpartition(":")
    reader, writer = await asyncio.open_connection(address, int(port))
    try:
        # The server's SETTINGS, then end of stream: it hung up.
        await asyncio.wait_for(reader.read(), WITHIN)
        assert reader.at_eof()
    finally:
        writer.close()


async def test_metadata_beyond_max_metadata_bytes_is_refused(
    start_host: HostFactory, connections: list[RawH2]
) -> None:
    host = await start_host(replace(QUIET, max_metadata_bytes=2048))
    client = await connect(host, connections)
    # grpc core applies the limit it advertises in SETTINGS once the client acknowledged it.
    assert await client.wait(lambda: client.settled, WITHIN)
    big = await client.open_call(CHECK, body=MESSAGE, end=True, metadata=(("x-big", "a" * 4096),))
    small = await client.open_call(
        CHECK, body=MESSAGE, end=True, metadata=(("x-small", "a" * 512),)
    )
    assert await client.wait(
        lambda: client.stream_ended(big) and client.stream_ended(small), WITHIN
    )
    assert client.streams[big].grpc_status == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    assert client.streams[small].grpc_status == "0"


async def test_a_drained_shutdown_finishes_calls_in_flight_and_ends_held_ones(
    tmp_path: Path, probe_stubs: Path
) -> None:
    from probe.v1 import probe_pb2, probe_pb2_grpc

    # Defaults but the read timeout, which must not be what ends the held call.
    server = replace(ServerConfig(), request_read_timeout=600.0)
    async with running_host(
        plugins=["probe"],
        plugin_dirs=[PROBE_DIR],
        data_dir=tmp_path,
        server=server,
        grace_period=2.0,
    ) as host:
        client = await RawH2.connect(host.address)
        try:
            held = await client.open_call("/probe.v1.ProbeService/Sleep", body=MESSAGE[:2])
            stub = probe_pb2_grpc.ProbeServiceStub(host.channel())
            sleeping = asyncio.ensure_future(stub.Sleep(probe_pb2.SleepRequest(millis=300)))
            await asyncio.sleep(0.1)  # the call is in flight
            await asyncio.wait_for(host.host.stop(), WITHIN)
            reply = await asyncio.wait_for(sleeping, WITHIN)
            assert reply.slept_millis == 300
            assert await client.wait(lambda: client.closed or client.stream_ended(held), WITHIN)
        finally:
            await client.close()
