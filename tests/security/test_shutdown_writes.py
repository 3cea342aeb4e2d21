"""Responses a client does not read, and bodies a client abandons, on the HTTP port.

- a server stream whose client stopped reading ends after ``http.send_timeout`` with
  DEADLINE_EXCEEDED in the access log and a closed connection, instead of holding its
  handler for good (uvicorn's flow control waits for the client without a limit);
- at shutdown such a stream's final in-band status gets about a second, then the
  connection is closed: the stop does not wait out the grace period, and nothing reaches
  uvicorn as an exception (no "Exception in ASGI application" traceback), also when the
  grace period ends while the final status is being written;
- a client that leaves in the middle of a request body cancels its call (CANCELLED),
  REST and gRPC-Web; a client stream cut short is not handled as complete;
- gRPC-Web answers RESOURCE_EXHAUSTED for a body over ``http.max_body_bytes``, as REST
  answers 413, checking a declared Content-Length before reading.

The non-reading client is a raw socket with a 4 KiB receive buffer that sends lines to
the probe's Echo stream (each echoed back, 60 kB) and never reads the answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_grpc.config import HttpConfig
from nexus_grpc.gateway.grpcweb import decode_frames, encode_frame
from nexus_grpc.testing import RunningHost, running_host

REPO = Path(__file__).resolve().parents[2]
PROBE_DIR = REPO / "tests" / "probe"
ECHO = "/probe.v1.ProbeService/Echo"
COLLECT = "/probe.v1.ProbeService/Collect"
SLEEP = "/probe.v1.ProbeService/Sleep"
#: How long a test waits for the server to do something it should do within ~1-2 s.
PATIENCE = 15.0
LINE = json.dumps({"text": "y" * 60000}).encode() + b"\n"


class Records(logging.Handler):
    """Every log record of the host, kept for the assertions."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        """Records with a traceback, or uvicorn's report of an app that raised."""
        return [
            r.getMessage()
            for r in self.records
            if r.exc_info or "Exception in ASGI application" in r.getMessage()
        ]

    def access(self, path: str) -> list[str]:
        """The access-log codes of the calls to ``path``."""
        return [
            str(getattr(r, "code", ""))
            for r in self.records
            if r.name == "nexus.access" and getattr(r, "method", "") == path
        ]


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def _host(tmp_path: Path, http: HttpConfig, grace: float = 10.0) -> Any:
    return running_host(
        plugins=["probe"],
        plugin_dirs=[PROBE_DIR],
        data_dir=tmp_path,
        http=http,
        grace_period=grace,
        access_log=True,
    )


async def _non_reading_echo(host: RunningHost) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An NDJSON Echo stream fed 200 large lines by a client that reads none of them."""
    address, _, port = host.host.http_address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((address, int(port)))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"POST {ECHO} HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\n"
        "accept: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n".encode()
    )
    for _ in range(200):
        writer.write(b"%x\r\n" % len(LINE) + LINE + b"\r\n")
    return reader, writer


async def _until(condition: Any, patience: float = PATIENCE) -> None:
    """Poll ``condition`` (server state has no event to wait on) for up to ``patience`` s."""
    async with asyncio.timeout(patience):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def _backed_up(host: RunningHost) -> bool:
    """The host's writes to some HTTP connection are paused: its client is not reading."""
    server = host.host._http._server  # type: ignore[union-attr]
    assert server is not None
    return any(c.flow.write_paused for c in server.server_state.connections)


async def _read_to_close(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(PATIENCE):
        while True:
            try:
                if not await reader.read(1 << 20):
                    return
            except (ConnectionResetError, BrokenPipeError):
                return


@pytest.mark.parametrize("grace", [10.0, 0.3])
async def test_a_stream_its_client_does_not_read_does_not_hold_the_stop(
    tmp_path: Path, probe_stubs: Path, records: Records, grace: float
) -> None:
    # grace 10: the final status gets ~1 s, then the connection is closed; grace 0.3:
    # uvicorn cancels the call while that status is being written.
    context = _host(tmp_path, HttpConfig(address="127.0.0.1:0"), grace)
    host = await context.__aenter__()
    try:
        _reader, writer = await _non_reading_echo(host)
        await _until(lambda: _backed_up(host) and host.host.streams.open == 1)
        started = time.monotonic()
        await host.host.stop()
        took = time.monotonic() - started
    finally:
        await context.__aexit__(None, None, None)
    writer.transport.abort()
    # ~1 s expected; well under the 10 s grace period (and no wait past a short one).
    assert took < 5.0, took
    assert records.tracebacks() == []
    assert records.access(ECHO) == ["Unavailable"]


async def test_a_stream_its_client_stops_reading_ends_after_the_send_timeout(
    tmp_path: Path, probe_stubs: Path, records: Records
) -> None:
    http = HttpConfig(address="127.0.0.1:0", send_timeout=1.0)
    async with _host(tmp_path, http) as host:
        reader, writer = await _non_reading_echo(host)
        await _until(lambda: _backed_up(host) and host.host.streams.open == 1)
        # The handler is released and the connection closed, without the client moving.
        await _until(lambda: host.host.streams.open == 0 and not _backed_up(host))
        await _read_to_close(reader)
        writer.transport.abort()
        await _until(lambda: records.access(ECHO) != [])
        assert records.access(ECHO) == ["DeadlineExceeded"]
        # The host goes on serving.
        async with httpx.AsyncClient(base_url=host.http_url, timeout=PATIENCE) as client:
            answer = await client.post(SLEEP, json={"millis": 1})
            assert answer.status_code == 200
    assert records.tracebacks() == []
    assert any("http.send_timeout" in r.getMessage() for r in records.records)


async def test_a_client_reading_slowly_is_not_cut(
    tmp_path: Path, probe_stubs: Path, records: Records
) -> None:
    # It stops reading, then reads again: each pause is shorter than the send timeout.
    http = HttpConfig(address="127.0.0.1:0", send_timeout=2.0)
    async with _host(tmp_path, http) as host:
        reader, writer = await _non_reading_echo(host)
        writer.write(b"0\r\n\r\n")  # the end of the request body
        await _until(lambda: _backed_up(host))
        tail = b""
        async with asyncio.timeout(60):
            # Up to the end of the chunked response: the stream ended normally.
            for pause in (1.0, 1.0, 1.0, 0):
                await asyncio.sleep(pause)  # buffers full, for less than the send timeout
                resume = time.monotonic()
                while not tail.endswith(b"\r\n0\r\n\r\n") and (
                    not pause or time.monotonic() - resume < 0.3
                ):
                    chunk = await reader.read(1 << 20)
                    assert chunk, "the server closed a stream its client was reading"
                    tail = (tail + chunk)[-16:]
        writer.close()
        await _until(lambda: records.access(ECHO) != [])
    assert records.access(ECHO) == ["OK"]
    assert records.tracebacks() == []


async def _abandon_body(host: RunningHost, path: str, content_type: str, first: bytes) -> None:
    """Send the headers and the start of a 100 kB body, then leave."""
    address, _, port = host.host.http_address.rpartition(":")
    _reader, writer = await asyncio.open_connection(address, int(port))
    writer.write(
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n"
        f"content-length: 100000\r\n\r\n".encode()
        + first
    )
    await writer.drain()
    await asyncio.sleep(0.3)  # the call is reading its body
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize(
    ("path", "content_type", "first"),
    [
        (SLEEP, "application/json", b'{"millis": '),
        (SLEEP, "application/grpc-web+proto", encode_frame(0, b"")[:3]),
        (COLLECT, "application/x-ndjson", b'{"text": "a"}\n{"text": "b"}\n{"te'),
    ],
    ids=["rest", "grpc-web", "rest-client-stream"],
)
async def test_a_client_leaving_mid_body_cancels_its_call(
    tmp_path: Path,
    probe_stubs: Path,
    records: Records,
    path: str,
    content_type: str,
    first: bytes,
) -> None:
    async with _host(tmp_path, HttpConfig(address="127.0.0.1:0")) as host:
        completed = sys.modules["nexus_plugins.probe"].COMPLETED_STREAMS
        completed.clear()
        await _abandon_body(host, path, content_type, first)
        await _until(lambda: records.access(path) != [])
        # Not UNAVAILABLE "server shutting down", not handled as a complete stream.
        assert records.access(path) == ["Canceled"]
        assert completed == []
    assert records.tracebacks() == []


async def _grpc_web(client: httpx.AsyncClient, body: Any, **headers: str) -> dict[str, str]:
    answer = await client.post(
        SLEEP, content=body, headers={"content-type": "application/grpc-web+proto", **headers}
    )
    assert answer.status_code == 200
    trailers = [payload for flag, payload in decode_frames(answer.content) if flag == 0x80]
    lines = trailers[-1].decode().strip().split("\r\n")
    return dict(line.split(":", 1) for line in lines)


async def test_grpc_web_answers_resource_exhausted_for_a_body_over_the_limit(
    tmp_path: Path, probe_stubs: Path
) -> None:
    http = HttpConfig(address="127.0.0.1:0", max_body_bytes=1024)
    async with (
        _host(tmp_path, http) as host,
        httpx.AsyncClient(base_url=host.http_url, timeout=PATIENCE) as client,
    ):
        big = encode_frame(0, b"\x08" + b"\x01" * 2000)
        declared = await _grpc_web(client, big)
        assert declared["grpc-status"] == "8", declared

        async def chunks() -> AsyncIterator[bytes]:
            # No Content-Length: the limit is found while reading.
            for _ in range(4):
                yield big[:600]

        streamed = await _grpc_web(client, chunks())
        assert streamed["grpc-status"] == "8", streamed
        assert "larger than 1024 bytes" in streamed["grpc-message"]
        ok = await _grpc_web(client, encode_frame(0, b"\x08\x01"))
        assert ok["grpc-status"] == "0", ok
