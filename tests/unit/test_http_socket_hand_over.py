"""The HTTP server on a socket it shares (a worker's, with its supervisor and its slot's
next worker): stopping for good ends the socket's listening for every holder, so no
connection queues where nobody will accept it; a rolling restart's hand-over leaves it
listening for the next worker."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import pytest

from nexus_grpc.transport.accept_guard import GuardedSocket
from nexus_grpc.transport.http_server import HttpServer
from nexus_grpc.transport.listen_address import http_listen_address


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI app: 200 "hello"."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def connects(port: int) -> bool:
    """Whether a TCP handshake with 127.0.0.1:``port`` completes (queued or accepted)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


@asynccontextmanager
async def serving_on_a_kept_socket() -> AsyncIterator[
    tuple[socket.socket, GuardedSocket, HttpServer]
]:
    """An ``HttpServer`` serving on a copy of a socket kept open here, as a worker serves
    on its supervisor's: (the kept socket, the server's copy, the server)."""
    # The supervisor's copy: bound, never listened on by it.
    kept = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        kept.bind(("127.0.0.1", 0))
        shared = GuardedSocket(fileno=os.dup(kept.fileno()))
        server = HttpServer(cast(Any, hello), "127.0.0.1:0", listening=shared)
        assert server.bind() == kept.getsockname()[1]
        await server.start()
        yield kept, shared, server
    finally:
        kept.close()


@pytest.mark.parametrize("hand_over", [True, False], ids=["handed over", "stopped"])
async def test_a_shared_socket_keeps_listening_only_when_handed_over(hand_over: bool) -> None:
    async with serving_on_a_kept_socket() as (kept, shared, server):
        port = kept.getsockname()[1]
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "hello"
        await server.stop(1.0, hand_over=hand_over)
        # The server's own descriptor is closed either way; the kept one decides.
        assert shared.fileno() == -1 and kept.fileno() != -1
        assert connects(port) is hand_over


def test_the_http_address_binds_as_one_process_binds_it() -> None:
    assert http_listen_address(":8080") == (socket.AF_INET, ("127.0.0.1", 8080))
    assert http_listen_address("localhost:0") == (socket.AF_INET, ("localhost", 0))
    assert http_listen_address("[::]:443") == (socket.AF_INET6, ("::", 443))
    for bad in ("127.0.0.1:http", "127.0.0.1:70000", "127.0.0.1:-1"):
        with pytest.raises(ValueError, match=r"invalid literal|not from 0 to 65535"):
            http_listen_address(bad)


async def test_a_socket_whose_listening_another_holder_ended_is_left_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving_on_a_kept_socket() as (kept, _, server):
        port = kept.getsockname()[1]
        # Another holder (a worker stopping on its own) ends the socket's listening:
        # accept() fails with EINVAL from then on, which asyncio would log and retry
        # at once, for ever.
        kept.shutdown(socket.SHUT_RDWR)
        await asyncio.sleep(0.3)
        asyncio_errors = [r for r in caplog.records if r.name == "asyncio"]
        ours = [r for r in caplog.records if "no longer listens" in r.getMessage()]
        assert asyncio_errors == [] and len(ours) == 1
        assert not connects(port)
        await server.stop(1.0)


@pytest.mark.parametrize("hand_over", [True, False], ids=["handed over", "stopped"])
async def test_a_connection_accepted_in_the_turn_the_server_stops_accepting_is_answered(
    hand_over: bool,
) -> None:
    async with serving_on_a_kept_socket() as (kept, _, server):
        loop = asyncio.get_running_loop()
        # uvicorn's main loop has seen its exit flag already, so stop() stops accepting
        # in its first step: the loop turn it runs in is then known (private names, for
        # that only).
        assert server._server is not None and server._task is not None
        server._server.should_exit = True
        await server._task
        bell, ring = socket.socketpair()
        stops: list[asyncio.Task[None]] = []

        def start_stop() -> None:
            loop.remove_reader(ring)
            stops.append(asyncio.create_task(server.stop(5.0, hand_over=hand_over)))

        loop.add_reader(ring, start_stop)
        try:
            # Ready before the client: the loop's next turn starts the stop, then accepts
            # the client, whose transport comes a turn later, after the stop's first step.
            bell.send(b"!")
            client = socket.create_connection(kept.getsockname(), timeout=5)
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            # Holding the loop: the handshake and the request reach the server's socket.
            time.sleep(0.05)  # noqa: ASYNC251
            with client:
                answer = await asyncio.to_thread(client.recv, 64)
            await stops[0]
        finally:
            loop.remove_reader(ring)
            bell.close()
            ring.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer
