"""A raw HTTP/2 client for hostile gRPC calls: half-sent messages, idle streams, pings.

grpcio's own client always sends a whole message; these tests need a client that opens
a stream and then does nothing, sends half a frame, or pings too often.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

__all__ = ["RawH2", "StreamOutcome", "grpc_frame"]


def grpc_frame(message: bytes) -> bytes:
    """One length-prefixed, uncompressed gRPC message."""
    return struct.pack(">BI", 0, len(message)) + message


@dataclass
class StreamOutcome:
    """What the server did with one stream."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None
    ended: bool = False

    @property
    def grpc_status(self) -> str | None:
        """The grpc-status of the trailers (or of a trailers-only response)."""
        return self.trailers.get("grpc-status", self.headers.get("grpc-status"))


class RawH2:
    """One cleartext HTTP/2 connection driven by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.streams: dict[int, StreamOutcome] = {}
        #: The error code of the server's GOAWAY, None before one.
        self.goaway: int | None = None
        #: True once the server closed the TCP connection.
        self.closed = False
        self.pings_acked = 0
        #: True once the server's SETTINGS arrived (and were acknowledged).
        self.settled = False

    @classmethod
    async def connect(cls, address: str) -> RawH2:
        """A connection to ``host:port`` with the client preface and SETTINGS sent."""
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        client = cls(reader, writer)
        client._conn.initiate_connection()
        await client._flush()
        return client

    async def open_call(
        self,
        path: str,
        *,
        body: bytes = b"",
        end: bool = False,
        grpc_timeout: str = "",
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> int:
        """Start a gRPC call on a new stream; send ``body`` and end the stream if told."""
        stream_id = self._conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if grpc_timeout:
            headers.append(("grpc-timeout", grpc_timeout))
        headers.extend(metadata)
        self._conn.send_headers(stream_id, headers, end_stream=end and not body)
        if body:
            self._conn.send_data(stream_id, body, end_stream=end)
        self.streams[stream_id] = StreamOutcome()
        await self._flush()
        return stream_id

    @property
    def remote_max_streams(self) -> int | None:
        """The server's SETTINGS_MAX_CONCURRENT_STREAMS as received so far."""
        return self._conn.remote_settings.max_concurrent_streams

    def ignore_stream_limit(self) -> None:
        """Open streams past the server's SETTINGS_MAX_CONCURRENT_STREAMS, as a hostile
        client would (h2 itself refuses to)."""
        settings = self._conn.remote_settings
        settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 2**31 - 1
        settings.acknowledge()

    async def ping(self, payload: bytes = b"12345678") -> None:
        """Send one PING."""
        self._conn.ping(payload)
        await self._flush()

    async def wait(self, done: Callable[[], bool], within: float) -> bool:
        """Read frames until ``done()`` is true or the connection closes; False if ``within``
        seconds pass first."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while not done():
            if self.closed:
                return done()
            remaining = end - loop.time()
            if remaining <= 0:
                return False
            try:
                data = await asyncio.wait_for(self._reader.read(65536), remaining)
            except TimeoutError:
                return done()
            except ConnectionError:
                data = b""
            if not data:
                self.closed = True
                continue
            try:
                events = self._conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.closed = True
                continue
            for event in events:
                self._on(event)
            await self._flush()
        return True

    def stream_ended(self, stream_id: int) -> bool:
        """True once the server ended or reset the stream."""
        outcome = self.streams[stream_id]
        return outcome.ended or outcome.reset is not None

    async def close(self) -> None:
        """Close the socket."""
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.streams[event.stream_id].headers = dict(event.headers)  # type: ignore[arg-type]
        elif isinstance(event, h2.events.TrailersReceived):
            self.streams[event.stream_id].trailers = dict(event.headers)  # type: ignore[arg-type]
        elif isinstance(event, h2.events.DataReceived):
            self.streams[event.stream_id].data += event.data
            self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.streams:
                self.streams[event.stream_id].reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event.error_code
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settled = True
        elif isinstance(event, h2.events.PingAckReceived):
            self.pings_acked += 1

    async def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)
            try:
                await self._writer.drain()
            except ConnectionError:
                self.closed = True
