"""The event-bus half of nexus.admin.v1.AdminService: dead letters, redrive, replay, stats.

Requests are checked here against what this host subscribed (an unknown group or a
type the group does not consume is INVALID_ARGUMENT naming the field); the bus does
the work and says what it cannot do (the memory bus keeps no history to replay:
FAILED_PRECONDITION; Redis unreachable: UNAVAILABLE).
"""

from __future__ import annotations

import base64
import binascii
import json

import grpc
from nexus.admin.v1 import admin_pb2

from nexus_grpc.errors import FieldViolation, InvalidArgumentError, StatusError
from nexus_grpc.events.bus import EventOperations, GroupStats, StoredDeadLetter

__all__ = ["EventsAdmin"]

#: Dead letters per page when the request says 0.
_DEFAULT_PAGE_SIZE = 50
_TOKEN_VERSION = 1


class EventsAdmin:
    """Operates ``bus`` for the admin service; ``bus`` may lack the operations (a custom
    backend), and the RPCs then answer UNIMPLEMENTED."""

    def __init__(self, bus: object | None) -> None:
        self._bus = bus if isinstance(bus, EventOperations) else None

    async def list_dead_letters(
        self, request: admin_pb2.ListDeadLettersRequest
    ) -> admin_pb2.ListDeadLettersResponse:
        """One page of dead letters, oldest first."""
        bus = self._operations()
        if request.group:
            self._check_group(bus, request.group)
        after = _decode_token(request.page_token, request.group) if request.page_token else None
        size = request.page_size or _DEFAULT_PAGE_SIZE
        try:
            found = await bus.list_dead_letters(request.group or None, size + 1, after=after)
        except ValueError as error:
            raise _invalid("page_token", f"does not continue a listing: {error}") from None
        page = found[:size]
        token = _encode_token(request.group, page[-1]) if len(found) > size else ""
        return admin_pb2.ListDeadLettersResponse(
            dead_letters=[_dead_letter(dead) for dead in page], next_page_token=token
        )

    async def redrive(
        self, request: admin_pb2.RedriveDeadLetterRequest
    ) -> admin_pb2.RedriveDeadLetterResponse:
        """Deliver one dead letter to its group again."""
        bus = self._operations()
        self._check_group(bus, request.group)
        try:
            await bus.redrive(request.group, request.id)
        except ValueError as error:
            raise _invalid("id", str(error)) from None
        return admin_pb2.RedriveDeadLetterResponse()

    async def replay(
        self, request: admin_pb2.ReplayEventsRequest
    ) -> admin_pb2.ReplayEventsResponse:
        """Make one group handle one type's events again."""
        bus = self._operations()
        consumed = self._check_group(bus, request.group)
        if request.event_type not in consumed:
            raise _invalid(
                "event_type",
                f"group {request.group!r} does not consume {request.event_type!r}; it consumes "
                + (", ".join(sorted(consumed)) or "nothing"),
            )
        since_id: str | None = None
        since_time: float | None = None
        since_event_id: str | None = None
        start = request.WhichOneof("start")
        if start == "since_entry_id":
            since_id = request.since_entry_id
        elif start == "since_time":
            # int / int: the float nearest the exact time (int / 1e9 rounds twice).
            since_time = request.since_time.ToNanoseconds() / 10**9
        elif start == "since_event_id":
            since_event_id = request.since_event_id
        try:
            position = await bus.replay(
                request.group,
                request.event_type,
                since_id=since_id,
                since_time=since_time,
                since_event_id=since_event_id,
            )
        except ValueError as error:
            raise _invalid(start or "start", str(error)) from None
        return admin_pb2.ReplayEventsResponse(position=position)

    async def stats(self) -> admin_pb2.EventStats:
        """The backlog of every consumer group of this host."""
        bus = self._operations()
        return admin_pb2.EventStats(
            backend=bus.backend, groups=[_group_stats(group) for group in await bus.stats()]
        )

    def _operations(self) -> EventOperations:
        if self._bus is None:
            raise StatusError(
                grpc.StatusCode.UNIMPLEMENTED,
                "this host's event bus offers no dead letters, replay or stats",
                reason="EVENT_OPERATIONS_UNSUPPORTED",
            )
        return self._bus

    def _check_group(self, bus: EventOperations, group: str) -> frozenset[str]:
        """The event types ``group`` consumes; INVALID_ARGUMENT for an unknown group."""
        groups = bus.groups()
        consumed = groups.get(group)
        if consumed is None:
            known = ", ".join(sorted(groups)) or "none"
            raise _invalid(
                "group", f"no consumer group {group!r} on this host (consumer groups: {known})"
            )
        return consumed


def _invalid(field: str, description: str) -> InvalidArgumentError:
    return InvalidArgumentError([FieldViolation(field, description)])


def _dead_letter(dead: StoredDeadLetter) -> admin_pb2.DeadLetter:
    return admin_pb2.DeadLetter(
        id=dead.id,
        group=dead.group,
        event=dead.envelope,
        attempts=dead.attempts,
        error=dead.error,
        entry_id=str(getattr(dead, "entry_id", "")),
    )


def _group_stats(group: GroupStats) -> admin_pb2.EventGroupStats:
    return admin_pb2.EventGroupStats(
        group=group.group,
        pending=group.pending,
        lag=group.lag,
        dead_letters=group.dead_letters,
        event_types=[
            admin_pb2.EventTypeStats(event_type=t.event_type, pending=t.pending, lag=t.lag)
            for t in group.types
        ],
    )


def _encode_token(group_filter: str, last: StoredDeadLetter) -> str:
    body = {"v": _TOKEN_VERSION, "g": group_filter, "a": [last.group, last.id]}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_token(token: str, group_filter: str) -> tuple[str, str]:
    """The (group, id) of the dead letter a page token continues after."""
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError):
        raise _invalid("page_token", "is malformed") from None
    after = body.get("a") if isinstance(body, dict) else None
    if (
        not isinstance(body, dict)
        or body.get("v") != _TOKEN_VERSION
        or not isinstance(after, list)
        or len(after) != 2
        or not all(isinstance(part, str) for part in after)
    ):
        raise _invalid("page_token", "is malformed")
    if body.get("g") != group_filter:
        raise _invalid("page_token", "was issued for another group; keep the group while paging")
    return after[0], after[1]
