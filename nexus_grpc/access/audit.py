"""The audit log: denials, logins and administrative actions, kept in storage.

Records live in the host's own namespace (``core/audit``), so no plugin can read or
alter them through the repository API; admins read them with
``nexus.admin.v1.AdminService/ListAuditRecords``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from typing import Any

from google.protobuf import timestamp_pb2
from nexus.admin.v1 import admin_pb2

from nexus_grpc.bounded import clip
from nexus_grpc.errors import is_infrastructure_failure
from nexus_grpc.logs import current_request_id
from nexus_grpc.storage import Namespace, Page

__all__ = ["AuditLog", "Outcome"]

_log = logging.getLogger("nexus.audit")


class Outcome:
    """How an audited action ended (admin.v1.Outcome values)."""

    SUCCEEDED = admin_pb2.OUTCOME_SUCCEEDED
    DENIED = admin_pb2.OUTCOME_DENIED
    FAILED = admin_pb2.OUTCOME_FAILED


class _Throttle:
    """At most ``limit`` records per key and window, over a bounded set of keys."""

    def __init__(self, limit: int, window: float, max_keys: int = 10_000) -> None:
        self._limit = limit
        self._window = window
        self._max_keys = max_keys
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        started, count = self._counts.pop(key, (now, 0))
        if now - started >= self._window:
            started, count = now, 0
        self._counts[key] = (started, count + 1)
        if len(self._counts) > self._max_keys:
            self._counts.popitem(last=False)
        return count < self._limit


class _SuppressedReport:
    """Says in the log that records were suppressed: once when it starts, then one
    summary per window with the count, never a line per suppressed record (a flood
    of bad tokens must not become a flood of log lines either)."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._count = 0
        self._peers: set[str] = set()
        self._since: float | None = None

    def add(self, peer: str) -> None:
        now = time.monotonic()
        if self._since is None or now - self._since >= 2 * self._window:
            # A new flood (or the first one): say so at once, then sum up per window.
            if self._count and self._since is not None:
                self._flush(now - self._since)
            _log.warning(
                "audit records of denied calls from %s are suppressed (flood); "
                "a summary follows every %gs while it lasts",
                peer,
                self._window,
            )
            self._since = now
        self._count += 1
        if len(self._peers) < _MAX_REPORTED_PEERS:
            self._peers.add(peer)
        if now - self._since >= self._window:
            self._flush(now - self._since)
            self._since = now

    def _flush(self, seconds: float) -> None:
        peers = sorted(self._peers)
        _log.warning(
            "%d audit records of denied calls suppressed in %.0fs, from %d peers: %s",
            self._count,
            seconds,
            len(peers),
            ", ".join(peers[:10]) + (" ..." if len(peers) > 10 else ""),
        )
        self._count = 0
        self._peers.clear()


#: Distinct peers a suppression summary counts (the count of records is exact).
_MAX_REPORTED_PEERS = 1000
#: Longest reason stored in a record (it may quote the request).
_REASON_LIMIT = 512


class AuditLog:
    """Writes and lists audit records."""

    def __init__(
        self, namespace: Namespace, *, per_peer_limit: int = 30, window: float = 60.0
    ) -> None:
        self._records = namespace.repository(admin_pb2.AuditRecord)
        # Callers without valid credentials are not rate limited by principal; without
        # this, a flood of bad tokens would be a flood of stored records.
        self._anonymous = _Throttle(per_peer_limit, window)
        self._suppressed = _SuppressedReport(window)

    async def record(
        self,
        *,
        actor: str,
        action: str,
        target: str,
        outcome: int,
        reason: str = "",
        context: Any = None,
        throttle: bool = False,
    ) -> None:
        """Store one record; the request id, transport and peer come from the call.

        ``throttle`` keeps at most a few records per peer and minute (for denials of
        callers who could not authenticate); the rest are only counted in the log.
        """
        if throttle and context is not None and not self._anonymous.allow(context.peer()):
            self._suppressed.add(context.peer())
            return
        stamp = timestamp_pb2.Timestamp()
        stamp.GetCurrentTime()
        record = admin_pb2.AuditRecord(
            id=f"{stamp.seconds:011d}{stamp.nanos:09d}-{uuid.uuid4().hex[:8]}",
            time=stamp,
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,  # type: ignore[arg-type]
            reason=clip(reason, _REASON_LIMIT),
            request_id=current_request_id(),
            transport=getattr(context, "transport", "grpc") if context is not None else "",
            peer=context.peer() if context is not None else "",
        )
        try:
            await self._records.create(record)
        except Exception as error:
            # Losing an audit record must be loud, but must not turn a denial into a
            # 500 or let a failed write change the outcome of the call. An outage is
            # one line per record (the traceback says nothing more, once per call).
            if is_infrastructure_failure(error):
                _log.error(
                    "could not store audit record %s %s: %s",
                    action,
                    target,
                    error,
                    extra={"actor": actor, "reason": reason},
                )
            else:
                _log.exception("could not store audit record %s %s", action, target)
            return
        _log.info(
            "audit %s %s %s",
            action,
            target,
            admin_pb2.Outcome.Name(outcome),
            extra={"actor": actor, "reason": reason},
        )

    async def list(
        self, *, page_size: int, page_token: str, actor: str = "", action: str = ""
    ) -> Page[admin_pb2.AuditRecord]:
        """Records newest first, optionally of one actor or action."""
        query: dict[str, object] = {}
        if actor:
            query["actor"] = actor
        if action:
            query["action"] = action
        return await self._records.list(
            filter=query, order_by="id desc", page_size=page_size or 50, page_token=page_token
        )
