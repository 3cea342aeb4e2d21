"""uvicorn's httptools protocol with the limits an exposed HTTP port needs.

uvicorn times out only idle keep-alive connections: a client that connects and sends
nothing, sends its headers a byte at a time, or stops halfway through a body holds a
socket (and a file descriptor) forever, and httptools buffers a header of any size. This
protocol adds, per connection:

- a header timer, from accept (first request) or the first byte of a later request, until
  the headers are complete: 408 when some of the request came, a plain close when none did;
- a body timer, restarted by every piece of body, until the request is fully read: 408
  before the response started, a close after (the app sees ``http.disconnect``);
- limits on the request line plus header bytes and on the header count: 431, then close;
- the trailer section of a chunked request (after its last chunk) under the same limits,
  in count and bytes, and timed like headers (one deadline from its first byte, not
  restarted per piece): 431 or 408 while nothing was answered, else a close. Its fields
  are read and dropped, never added to the request's headers: nexus has no use for
  request trailers, RFC 9110 (6.5.1) lets a recipient discard them, and a field arriving
  while the app runs must not change the headers it already checked;
- a request answered before it was fully read (say a 401, 404 or 413 that never reads
  the body): the rest is read and dropped for at most the body timeout (in all, not per
  piece) and 64 MiB, then the connection closes (nginx's lingering close) instead of
  being kept alive for a client that can drip the body for ever;
- a cap on open connections shared by the listener: beyond it the connection idle the
  longest (never sent a byte, or between keep-alive requests) is closed, as nginx reuses
  keep-alive connections when it runs out, else the new one;
- trusted proxies: from one, the client named by ``X-Forwarded-For``/``Forwarded``
  becomes the request's client address (``scope["client"]``), and is checked against
  the port's allow/deny lists once the headers are read (403 when refused). Peers the
  lists refuse never get here: the listening socket resets them (:mod:`.allow_list`).

Timers are set per phase, not per byte: a request that arrives in one packet arms none.
Nothing times the app: a long server stream or a slow handler is not cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from nexus_grpc.config import ConfigError, HttpConfig
from nexus_grpc.errors import ERROR_DOMAIN
from nexus_grpc.tls.identity import tls_extension
from nexus_grpc.transport.allow_list import RefusedConnections
from nexus_grpc.transport.netpolicy import (
    NetworkPolicy,
    TrustedProxies,
    forwarded_hops,
    parse_address,
)

__all__ = ["HttpLimits", "limited_protocol"]

# Request phases. A connection starts in _HEADERS: its first request's header timer runs
# from accept, which is what times out clients that connect and never send. _TRAILERS is
# the trailer section of a chunked body, from its first byte seen.
_HEADERS = 0
_BODY = 1
_TRAILERS = 2
_DONE = 3

# _header_raw when the current request began in a read that also held the end of an
# earlier one: that read's bytes are not all this request's, so they are not counted.
_UNCOUNTED = -1

# After an error answer, how long and how much of the rest of the request is read and
# dropped before closing. Closing with unread data makes the kernel send a reset, which can
# reach the client before it reads the answer (nginx's lingering_close does the same).
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 256 * 1024
# After the app answered a request it did not read all of (401, 404, 413 before reading
# the body), how much more of it is read and dropped; how long is the body timeout, as a
# whole rather than per piece (nginx's lingering_time is 30 s, like that default). A
# client such as httpx sends its whole body before reading the answer: closing on it
# sooner turns a 413 for a 5 MB body into a reset. Go reads 256 KiB and then closes.
_DRAIN_BYTES = 64 * 1024 * 1024
# Seconds between two warnings that the connection cap closed connections.
_WARNING_INTERVAL = 60.0

_log = logging.getLogger("nexus.http")


@dataclass(frozen=True)
class HttpLimits:
    """The connection and header limits of one HTTP listener (defaults: ``HttpConfig``'s)."""

    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int
    max_header_bytes: int
    max_headers: int

    @classmethod
    def from_config(cls, config: HttpConfig) -> HttpLimits:
        """The limits in ``config``, checked (every one must be positive)."""
        limits = cls(
            header_timeout=config.header_timeout,
            body_timeout=config.body_timeout,
            keepalive_timeout=config.keepalive_timeout,
            max_connections=config.max_connections,
            max_header_bytes=config.max_header_bytes,
            max_headers=config.max_headers,
        )
        for name, value in vars(limits).items():
            if value <= 0:
                raise ConfigError(f"http.{name}: expected a value > 0, got {value!r}")
        return limits


@dataclass
class _Book:
    """State shared by the connections of one listener: the limits and who is open."""

    limits: HttpLimits
    #: The port's allow/deny lists, and the proxies whose forwarding headers are believed.
    policy: NetworkPolicy = field(default_factory=lambda: NetworkPolicy("http"))
    proxies: TrustedProxies = field(default_factory=TrustedProxies)
    refused: RefusedConnections = field(default_factory=RefusedConnections)
    #: Whether connection_made has to look at the peer's address (proxies configured).
    screens: bool = False
    #: Open connections (only counted: the cap is on their number).
    open: dict[LimitedHttpProtocol, None] = field(default_factory=dict)
    #: Connections by when they last became idle (accept, a response completed with
    #: nothing of the next request read), the longest idle first. Moved to the end when
    #: one becomes idle again; one that became busy since stays in place until the cap
    #: looks for a connection to close and drops it (so a request pays one O(1) move,
    #: and each connection looked at is dropped or closed: O(1) per accept amortized).
    idle: OrderedDict[LimitedHttpProtocol, None] = field(default_factory=OrderedDict)
    #: Connections closed because the cap was reached since the last warning.
    shed: int = 0
    #: When (loop time) the next warning about the cap may be logged.
    next_warning: float = 0.0

    def note_shed(self, now: float) -> None:
        """Count a connection closed by the cap; warn at most once a minute, with the count."""
        self.shed += 1
        if now >= self.next_warning:
            _log.warning(
                "http.max_connections (%d) reached: closed %d connection(s) (the oldest idle "
                "one, or the new one when none is idle) since the last such warning",
                self.limits.max_connections,
                self.shed,
            )
            self.shed = 0
            self.next_warning = now + _WARNING_INTERVAL

    def close_oldest_idle(self) -> bool:
        """Close the connection idle the longest; False when none is idle."""
        idle = self.idle
        while idle:
            victim, _ = idle.popitem(last=False)
            # Busy since, or closed by its own timer (listed until connection_lost): it
            # is put back when it becomes idle again.
            if victim._is_idle():
                self.open.pop(victim, None)
                victim.transport.close()
                return True
        return False


class _Rejected(Exception):
    """Raised from a parser callback to stop parsing a request over a header limit."""


def _error_response(status: int, phrase: str, code: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer with a google.rpc.Status JSON body, closing the connection."""
    body = json.dumps(
        {
            "code": code,
            "message": message,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason,
                    "domain": ERROR_DOMAIN,
                }
            ],
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


# The per-request overrides call the base class by name: ``super()`` builds an object on
# every call, and these run on every request.
_base = HttpToolsProtocol

# google.rpc.Code values.
_RESOURCE_EXHAUSTED = 8
_DEADLINE_EXCEEDED = 4
_PERMISSION_DENIED = 7


class LimitedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header/body timers, header limits and a connection cap."""

    # Slots, not instance attributes: uvicorn's protocol already has 28, and past 30 an
    # instance dict stops sharing keys, which slows every attribute access in uvicorn's
    # code too (in a protocol-only benchmark, about half of what this class added).
    __slots__ = (
        "_answer",
        "_began",
        "_chunk",
        "_header_raw",
        "_lingering",
        "_mark",
        "_phase",
        "_proxied",
        "_running",
        "_spanned",
        "_timer",
        "_tls",
        "_trailer_bytes",
        "_trailers",
        "_unbodied",
    )

    _book: _Book
    _too_many_headers: bytes
    _headers_too_large: bytes
    _header_timeout_answer: bytes
    _body_timeout_answer: bytes
    _too_many_trailers: bytes
    _trailers_too_large: bytes
    _trailer_timeout_answer: bytes
    _forbidden_answer: bytes
    _unresolved_answer: bytes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _HEADERS
        #: When the current phase's clock started (accept, first byte, last body piece).
        self._mark = 0.0
        self._timer: asyncio.TimerHandle | None = None
        #: Bytes of whole chunks received while the current request's headers (or
        #: trailers) were incomplete: a lower bound of their size. _UNCOUNTED when the
        #: request began in a read holding the end of the one before.
        self._header_raw = 0
        #: Length of the chunk being parsed.
        self._chunk = 0
        #: The current request's headers came in more than one chunk.
        self._spanned = False
        #: Some of the current request has come (else a timeout closes without answering).
        self._began = False
        self._answer: bytes | None = None
        self._lingering = 0
        #: Trailer fields of the current request and their size, as request headers are
        #: counted (name, value and 4 bytes of ": " and CRLF each).
        self._trailers = 0
        self._trailer_bytes = 0
        #: 1 when a chunk header was the last thing parsed (no body since): the chunk may
        #: be the last one, whose trailer section is not body and does not call on_body.
        #: 2 while a read that began so has brought no body either: then all of it is in
        #: the trailer section (a data chunk's first byte would have come first).
        self._unbodied = 0
        #: The request being answered while later pipelined ones wait in
        #: ``self.pipeline`` (uvicorn keeps no reference to it then): told of a
        #: disconnect like them, else a stream such as a watch runs on for ever.
        self._running: RequestResponseCycle | None = None
        #: The peer is a trusted proxy: each request's client comes from its headers.
        self._proxied = False
        #: ``scope["extensions"]`` of this connection's requests over TLS (None: plaintext).
        self._tls: dict[str, Any] | None = None

    # Connection lifecycle

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            # Once per connection (after its handshake): the peer's verified certificate,
            # as the gRPC port reports it, for the pipeline's auth stage.
            self._tls = tls_extension(ssl_object)
        book = self._book
        if book.screens:
            self._screen()
        if len(book.open) >= book.limits.max_connections:
            book.note_shed(self.loop.time())
            if not book.close_oldest_idle():
                # Every connection is busy: refuse this one rather than one mid-request.
                transport.close()
                return
        book.open[self] = None
        book.idle[self] = None
        self._mark = self.loop.time()
        self._timer = self.loop.call_at(self._mark + book.limits.header_timeout, self._on_timer)

    def _screen(self) -> None:
        """Note whether the peer is a trusted proxy."""
        address = parse_address(self.client[0]) if self.client else None
        self._proxied = self._book.proxies.trusts(address)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        book = self._book
        book.open.pop(self, None)
        book.idle.pop(self, None)
        if self.pipeline:
            self._disconnect_pipeline()
        super().connection_lost(exc)

    def _is_idle(self) -> bool:
        """Nothing of a request read and nothing being answered: closing it loses no work."""
        if self.transport.is_closing():
            return False
        if self._phase == _HEADERS:
            return not self._began
        cycle = self.cycle
        return (
            self._phase == _DONE
            and (cycle is None or cycle.response_complete)
            and not self.pipeline
        )

    def _became_idle(self) -> None:
        idle = self._book.idle
        try:
            idle.move_to_end(self)
        except KeyError:  # dropped by the cap while it was busy
            idle[self] = None

    def _disconnect_pipeline(self) -> None:
        """Tell the running request and the queued ones that the client is gone.

        uvicorn tells only the last request read (``self.cycle``).
        """
        cycles = [cycle for cycle, _ in self.pipeline]
        if self._running is not None:
            cycles.append(self._running)
        for cycle in cycles:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()

    # Reading

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._linger(len(data))
            return
        self._unset_keepalive_if_required()
        reading_headers = self._phase == _HEADERS
        if self._unbodied:
            self._unbodied = 2
        self._chunk = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._answer is not None:
                self._reject(self._answer)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        phase = self._phase
        if phase in (_BODY, _TRAILERS):
            if self._unbodied == 2:
                # All of this read came after the last chunk's header: trailer section,
                # which httptools holds in memory (an unfinished field) until it ends.
                if phase == _BODY:
                    self._enter_trailers()
                self._header_raw += len(data)
                if self._header_raw > self._book.limits.max_header_bytes:
                    self._reject(self._trailers_too_large)
            elif phase == _BODY:
                self._mark = now = self.loop.time()
                self._arm(now + self._book.limits.body_timeout)
            # (Trailers that began in this read have their deadline armed.)
        elif phase == _HEADERS:
            limits = self._book.limits
            self._spanned = True
            if reading_headers and self._header_raw >= 0:
                # httptools holds an unfinished header in memory: stop before it grows.
                # (Only whole chunks count here, so this never overestimates.)
                self._header_raw += len(data)
                if self._header_raw > limits.max_header_bytes:
                    self._reject(self._headers_too_large)
                    return
            else:
                # A later request began in this chunk, after bytes of the one before
                # (pipelined): its header clock and byte count start now.
                self._header_raw = 0
                self._mark = self.loop.time()
            self._arm(self._mark + limits.header_timeout)
        elif self.cycle is None or self.cycle.response_complete:
            # Bytes between requests that began none (blank lines): time them as headers,
            # since the keep-alive timer was just cancelled.
            self._phase = _HEADERS
            self._began = False
            self._became_idle()
            self._mark = self.loop.time()
            self._arm(self._mark + self._book.limits.header_timeout)

    def on_message_begin(self) -> None:
        _base.on_message_begin(self)
        if self._tls is not None:
            self.scope["extensions"] = self._tls
        # Began after an earlier request in the same read: that read is not all ours.
        self._header_raw = _UNCOUNTED if self._began else 0
        self._phase = _HEADERS
        self._began = True
        self._unbodied = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's on_header, for the header section only (a call to it would cost a
        # frame per header).
        if self._phase:
            self._on_trailer(name, value)
            return
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def _on_trailer(self, name: bytes, value: bytes) -> None:
        """Count a trailer field against the header limits and drop it."""
        if self._phase == _BODY:
            self._enter_trailers()
        limits = self._book.limits
        self._trailers += 1
        self._trailer_bytes += len(name) + len(value) + 4
        if self._trailers > limits.max_headers:
            self._answer = self._too_many_trailers
            raise _Rejected
        if self._trailer_bytes > limits.max_header_bytes:
            self._answer = self._trailers_too_large
            raise _Rejected

    def _enter_trailers(self) -> None:
        self._phase = _TRAILERS
        self._trailers = self._trailer_bytes = self._header_raw = 0
        self._mark = now = self.loop.time()
        self._arm(now + self._book.limits.header_timeout)

    def on_chunk_header(self) -> None:
        self._unbodied = 1

    def on_body(self, body: bytes) -> None:
        self._unbodied = 0
        _base.on_body(self, body)

    def on_headers_complete(self) -> None:
        limits = self._book.limits
        if len(self.headers) > limits.max_headers:
            self._answer = self._too_many_headers
            raise _Rejected
        # Summing the headers costs ~1 us: only when they came in several chunks or in
        # one larger than the limit (a request in one small packet is under it).
        if self._spanned or self._chunk > limits.max_header_bytes:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > limits.max_header_bytes:
                self._answer = self._headers_too_large
                raise _Rejected
            self._spanned = False
        if self._proxied:
            self._forwarded_client()
        self._phase = _BODY
        previous = self.cycle
        _base.on_headers_complete(self)
        if self.pipeline and self._running is None:
            # Queued behind ``previous``, still answering.
            self._running = previous

    def _forwarded_client(self) -> None:
        """The client a trusted proxy forwarded this request for, as the request's
        client; refused (403) when the port's lists refuse it."""
        book = self._book
        peer = parse_address(self.client[0]) if self.client else None
        assert peer is not None  # _proxied only for a peer that is an address
        proxies = book.proxies
        found = proxies.client_address(peer, forwarded_hops(self.headers, proxies.header))
        client = found.address
        if found.unresolved and book.policy.active:
            # The client is unknown: judging the proxy's address instead would let it
            # (and everyone behind it) through an allow list meant for clients.
            book.refused.note("http", "forwarded_unknown", str(peer))
            self._answer = self._unresolved_answer
            raise _Rejected
        if client != peer:
            # Port 0: the client's port is the proxy's business, not known here.
            self.scope["client"] = (str(client), 0)
        if book.policy.active and not book.policy.permits(client):
            book.refused.note("http", "forwarded_denied", str(client))
            self._answer = self._forbidden_answer
            raise _Rejected

    def on_message_complete(self) -> None:
        self._phase = _DONE
        _base.on_message_complete(self)

    def on_response_complete(self) -> None:
        pipeline = self.pipeline
        if pipeline:
            # uvicorn starts the next queued request: it runs now, with a reference to
            # it kept in ``pipeline`` only while others wait behind it. (Not idle, and
            # not answered early: that one has not answered yet.)
            self._running = pipeline[-1][0] if len(pipeline) > 1 else None
            _base.on_response_complete(self)
            return
        _base.on_response_complete(self)
        # Nothing was queued: the request that completed is the last one read.
        phase = self._phase
        if phase == _DONE:
            # _became_idle, inlined: this runs on every keep-alive request. (If the
            # connection is closing, the cap skips it and connection_lost drops it.)
            idle = self._book.idle
            try:
                idle.move_to_end(self)
            except KeyError:
                idle[self] = None
        elif phase != _HEADERS and not self.transport.is_closing():
            # Answered before the request was fully read: no keep-alive for a client
            # that could drip the rest for ever, the body timer restarting at each byte.
            self._unset_keepalive_if_required()
            self._linger_then_close(self._book.limits.body_timeout, _DRAIN_BYTES)

    # Timers

    def _arm(self, deadline: float) -> None:
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                # It fires no later than needed and re-arms itself from the latest mark.
                return
            timer.cancel()
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._lingering:
            return
        now = self.loop.time()
        limits = self._book.limits
        if self._phase == _HEADERS:
            deadline = self._mark + limits.header_timeout
            if now < deadline:
                self._timer = self.loop.call_at(deadline, self._on_timer)
            elif self._began:
                self._reject(self._header_timeout_answer)
            else:
                # Never sent a byte of this request: nothing to answer.
                self.transport.close()
        elif self._phase == _BODY:
            cycle = self.cycle
            if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                # The app has not read what came, or has not asked for the body yet: the
                # client is waiting for us, not the other way round.
                self._mark = now
            deadline = self._mark + limits.body_timeout
            if now < deadline:
                self._timer = self.loop.call_at(deadline, self._on_timer)
            else:
                self._reject(self._body_timeout_answer)
        elif self._phase == _TRAILERS:
            if self.flow.read_paused:
                # Not reading (the app has body to take first): the client cannot go on.
                self._mark = now
            deadline = self._mark + limits.header_timeout
            if now < deadline:
                self._timer = self.loop.call_at(deadline, self._on_timer)
            else:
                self._reject(self._trailer_timeout_answer)

    # Answers

    def _reject(self, answer: bytes) -> None:
        """Answer ``answer`` when the connection owes no other response, then close."""
        self._cancel_timer()
        cycle = self.cycle
        if self._phase == _HEADERS:
            # ``cycle`` is the previous request's: answer unless it is still responding.
            can_answer = cycle is None or cycle.response_complete
        else:
            # ``cycle`` is this request's: once it answered (say 401 before reading the
            # body), a second answer would be taken for the next request's. Queued
            # behind an earlier pipelined request still answering, this answer would
            # land inside that one's response.
            can_answer = not self.pipeline and (cycle is None or not cycle.response_started)
        if cycle is not None and not cycle.response_complete:
            # The handler sees a disconnect and its writes are dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        if self.pipeline:
            self._disconnect_pipeline()
        if not can_answer:
            self.transport.close()
            return
        self.transport.write(answer)
        self._linger_then_close(_LINGER_SECONDS, _LINGER_BYTES)

    def _linger_then_close(self, seconds: float, max_bytes: int) -> None:
        """Read and drop what the client still sends, within bounds, then close.

        Our side is shut down first, so the client sees the end of the answers.
        """
        self._cancel_timer()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = max_bytes
        self.flow.resume_reading()
        self._timer = self.loop.call_later(seconds, self.transport.close)

    def _linger(self, received: int) -> None:
        # _lingering is the number of bytes still allowed (non-zero while lingering).
        self._lingering -= received
        if self._lingering <= 0:
            self._lingering = -1
            self.transport.close()


def limited_protocol(
    limits: HttpLimits,
    *,
    policy: NetworkPolicy | None = None,
    proxies: TrustedProxies | None = None,
    refused: RefusedConnections | None = None,
) -> type[LimitedHttpProtocol]:
    """A protocol class for one listener: its connections share ``limits`` and one cap,
    the port's allow/deny lists and trusted proxies, and the refusal counter."""
    book = _Book(limits)
    if policy is not None:
        book.policy = policy
    if proxies is not None:
        book.proxies = proxies
    if refused is not None:
        book.refused = refused
    book.screens = bool(book.proxies.networks)
    too_large = f"request line and headers are larger than {limits.max_header_bytes} bytes"
    too_many = f"request has more than {limits.max_headers} header fields"
    too_large_trailers = f"request trailers are larger than {limits.max_header_bytes} bytes"
    too_many_trailers = f"request has more than {limits.max_headers} trailer fields"

    class ListenerHttpProtocol(LimitedHttpProtocol):
        _book = book
        _headers_too_large = _error_response(
            431,
            "Request Header Fields Too Large",
            _RESOURCE_EXHAUSTED,
            "HEADERS_TOO_LARGE",
            too_large,
        )
        _too_many_headers = _error_response(
            431,
            "Request Header Fields Too Large",
            _RESOURCE_EXHAUSTED,
            "TOO_MANY_HEADERS",
            too_many,
        )
        _header_timeout_answer = _error_response(
            408,
            "Request Timeout",
            _DEADLINE_EXCEEDED,
            "HEADER_TIMEOUT",
            f"request headers not complete within {limits.header_timeout:g} s",
        )
        _body_timeout_answer = _error_response(
            408,
            "Request Timeout",
            _DEADLINE_EXCEEDED,
            "BODY_TIMEOUT",
            f"no request body received for {limits.body_timeout:g} s",
        )
        _trailers_too_large = _error_response(
            431,
            "Request Header Fields Too Large",
            _RESOURCE_EXHAUSTED,
            "TRAILERS_TOO_LARGE",
            too_large_trailers,
        )
        _too_many_trailers = _error_response(
            431,
            "Request Header Fields Too Large",
            _RESOURCE_EXHAUSTED,
            "TOO_MANY_TRAILERS",
            too_many_trailers,
        )
        _trailer_timeout_answer = _error_response(
            408,
            "Request Timeout",
            _DEADLINE_EXCEEDED,
            "TRAILER_TIMEOUT",
            f"request trailers not complete within {limits.header_timeout:g} s",
        )
        _forbidden_answer = _error_response(
            403,
            "Forbidden",
            _PERMISSION_DENIED,
            "ADDRESS_DENIED",
            "your network address may not call this host (http.allow/http.deny)",
        )
        _unresolved_answer = _error_response(
            403,
            "Forbidden",
            _PERMISSION_DENIED,
            "ADDRESS_UNKNOWN",
            "the trusted proxy's request has no http.forwarded_header, or it names a client "
            "hop that is no IP address, so http.allow/http.deny cannot judge the client",
        )

    return ListenerHttpProtocol
