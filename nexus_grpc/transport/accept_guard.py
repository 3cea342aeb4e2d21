"""Accepting connections at the open-file limit without a log storm.

When ``accept()`` fails with EMFILE/ENFILE/ENOBUFS/ENOMEM, asyncio's selector loop
(CPython 3.11/3.12 ``BaseSelectorEventLoop._accept_connection``) reports the error,
stops watching the socket and schedules a retry one second later — but then goes on
looping up to ``backlog`` times (2048 for us): every failed call logs a traceback and
schedules one more retry. Measured on a host at its fd limit: ~5,600 tracebacks a second
on the "asyncio" logger while the loop spends its time failing accepts.

:class:`GuardedSocket` makes every ``accept()`` after such a failure, in the same pass of
the loop, report "nothing to accept", so asyncio logs once, retries once a second, and
keeps serving the connections it has; accepting resumes by itself once descriptors free
up. :class:`AcceptErrorLog` lets one of those records through per interval, without the
traceback, with the number it held back.

A socket shared by several processes (a worker's HTTP socket) stops listening for all
of them when one ends its listening; every ``accept()`` then fails with EINVAL, which
asyncio logs with a traceback and retries at once, for ever, at full CPU. The guard
stops accepting on it instead, and says so once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

__all__ = ["AcceptErrorLog", "GuardedSocket", "install_accept_error_log"]

_log = logging.getLogger("nexus.http")

_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The message asyncio's selector loop reports a resource failure of accept() with.
_ACCEPT_MESSAGE = "socket.accept() out of system resource"
#: SO_LINGER on with a 0 s timeout: close() sends a reset.
_RESET = struct.pack("ii", 1, 0)


class GuardedSocket(socket.socket):
    """A listening socket whose ``accept`` fails at most once per pass of the event loop.

    With a ``screen`` (the port's allow-list), a connection it refuses is closed inside
    ``accept``: the event loop never sees it, so no transport, protocol or TLS handshake
    is made for it and not a byte of it is read.
    """

    _resting = False
    #: Called with each accepted peer's address; False refuses the connection.
    screen: Callable[[Any], bool] | None = None

    def accept(self) -> tuple[socket.socket, Any]:
        """``socket.accept``; after a resource error, "would block" until the loop moves on."""
        if self._resting:
            raise BlockingIOError(errno.EAGAIN, "resting after a resource error")
        try:
            while True:
                conn, address = super().accept()
                screen = self.screen
                if screen is None or screen(address):
                    return conn, address
                # Refused: reset, so the client sees "connection reset" at once rather
                # than an end of stream it could take for an empty answer.
                with conn:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        except OSError as error:
            if error.errno == errno.EINVAL:
                self._stop_accepting()
                raise BlockingIOError(errno.EAGAIN, "the socket no longer listens") from None
            if error.errno in _RESOURCE_ERRORS:
                # asyncio removes the reader and retries in a second; the flag only has to
                # stop the rest of this pass's accept loop.
                self._resting = True
                asyncio.get_running_loop().call_soon(self._wake)
            raise

    def _wake(self) -> None:
        self._resting = False

    def _stop_accepting(self) -> None:
        # The event loop watches the socket for connections to accept: no more.
        asyncio.get_running_loop().remove_reader(self.fileno())
        _log.warning(
            "the listening socket on port %s no longer listens (another process holding "
            "it ended its listening): no new connections are accepted on it here",
            self.getsockname()[1],
        )


class AcceptErrorLog(logging.Filter):
    """Passes one accept resource error per ``interval`` seconds, with a count of the rest."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._next = 0.0
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop or rewrite records of failed accepts; keep everything else."""
        message = record.getMessage()
        if not message.startswith(_ACCEPT_MESSAGE):
            return True
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return False
        error = record.exc_info[1] if record.exc_info else None
        held, self._held = self._held, 0
        self._next = now + self.interval
        record.msg = (
            "cannot accept connections: %s (the open-file limit is reached?); "
            "existing connections are served, accepting is retried every second; "
            "%d more such errors in the last %gs were not logged"
        )
        record.args = (error or message, held, self.interval)
        record.exc_info = None
        record.exc_text = None
        record.levelno = logging.WARNING
        record.levelname = "WARNING"
        return True


_installed: AcceptErrorLog | None = None


def install_accept_error_log(interval: float = 60.0) -> AcceptErrorLog:
    """Attach one :class:`AcceptErrorLog` to the "asyncio" logger (idempotent)."""
    global _installed
    if _installed is None:
        _installed = AcceptErrorLog(interval)
        logging.getLogger("asyncio").addFilter(_installed)
    return _installed
