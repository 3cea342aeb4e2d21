"""One error type for every failure a client may see.

A handler (or the host itself) raises :class:`StatusError`; the pipeline turns it into
a gRPC status with ``google.rpc`` details (and the REST gateway into an HTTP status
with a ``google.rpc.Status`` body). Any other exception becomes INTERNAL with a
generic message: its text and traceback go to the log only, never to the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from nexus_grpc.bounded import (
    DETAIL_TEXT_LIMIT,
    MAX_ITEMS,
    MESSAGE_LIMIT,
    STATUS_LIMIT,
    TIGHT_MAX_ITEMS,
    TIGHT_TEXT_LIMIT,
    bounded_detail,
    clip,
    quote,
)

__all__ = [
    "STORAGE_BUSY",
    "AlreadyExistsError",
    "ConflictError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "ShuttingDownError",
    "StatusError",
    "is_infrastructure_failure",
    "to_status_proto",
]

#: Domain of the ``google.rpc.ErrorInfo`` the host attaches to its own errors.
ERROR_DOMAIN = "nexus.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: its path (``order.items[0].quantity``) and what is wrong."""

    field: str
    description: str


@dataclass(eq=False)
class StatusError(Exception):
    """A failure with a gRPC status code, a message for the client and typed details.

    ``reason`` is a stable UPPER_SNAKE identifier clients can switch on; it is sent in a
    ``google.rpc.ErrorInfo`` detail together with ``metadata``.
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    details: Sequence[Message] = ()

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgumentError(StatusError):
    """The request is malformed; carries a ``google.rpc.BadRequest`` with each violation."""

    #: Violations spelled out in the status message and sent as details. Trailers are
    #: metadata, and gRPC clients refuse metadata past 8-16 KiB: a request with hundreds
    #: of bad fields must still get its INVALID_ARGUMENT through.
    MESSAGE_LIMIT = 3
    DETAILS_LIMIT = 10

    def __init__(self, violations: Iterable[FieldViolation], message: str = "") -> None:
        found = list(violations)
        # Field paths can hold map keys from the request: quoted values stay short.
        summary = message or "; ".join(
            f"{clip(v.field, 200)}: {clip(v.description, 300)}" for v in found[: self.MESSAGE_LIMIT]
        )
        if not message and len(found) > self.MESSAGE_LIMIT:
            summary += f"; and {len(found) - self.MESSAGE_LIMIT} more"
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=clip(v.field, 200), description=clip(v.description, 300)
                )
                for v in found[: self.DETAILS_LIMIT]
            ]
        )
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            summary or "invalid request",
            reason="INVALID_ARGUMENT",
            details=(bad_request,),
        )
        self.violations = found


class NotFoundError(StatusError):
    """A named resource does not exist."""

    def __init__(self, resource_type: str, resource_name: str) -> None:
        super().__init__(
            grpc.StatusCode.NOT_FOUND,
            f"{resource_type} {quote(resource_name)} not found",
            reason="NOT_FOUND",
            details=(
                error_details_pb2.ResourceInfo(
                    resource_type=resource_type, resource_name=resource_name
                ),
            ),
        )


class AlreadyExistsError(StatusError):
    """A resource with that name exists already."""

    def __init__(self, resource_type: str, resource_name: str) -> None:
        super().__init__(
            grpc.StatusCode.ALREADY_EXISTS,
            f"{resource_type} {quote(resource_name)} already exists",
            reason="ALREADY_EXISTS",
            details=(
                error_details_pb2.ResourceInfo(
                    resource_type=resource_type, resource_name=resource_name
                ),
            ),
        )


class ConflictError(StatusError):
    """A concurrent change won; the client may re-read and retry."""

    def __init__(self, message: str, *, reason: str = "CONFLICT") -> None:
        super().__init__(grpc.StatusCode.ABORTED, message, reason=reason)


#: ``ConflictError`` reason of a database lock held past the busy timeout (another
#: process writing, a backup, a VACUUM): contention, not a conflict with the data.
STORAGE_BUSY = "STORAGE_BUSY"


def is_infrastructure_failure(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from, or while handling) is a
    failure of the infrastructure rather than of the call or the event: a status
    UNAVAILABLE (storage or event bus down) or a database busy past its timeout. Work
    that failed so is retried without counting against the event's attempts."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:  # bounded: chains can be long or cyclic
        if isinstance(current, StatusError) and (
            current.code == grpc.StatusCode.UNAVAILABLE or current.reason == STORAGE_BUSY
        ):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


class ShuttingDownError(StatusError):
    """The host is draining: a stream ends (or is refused) so its client goes elsewhere."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, "server shutting down", reason="SHUTTING_DOWN"
        )


def to_status_proto(error: StatusError) -> status_pb2.Status:
    """The ``google.rpc.Status`` for ``error``, ErrorInfo first, then its own details.

    Bounded for every transport (nexus_grpc.bounded): the message, each string of each
    detail, and the whole status, dropping the last details that do not fit.
    """
    code = _CODE_NUMBERS[error.code]
    # Most errors are small: when the whole status is within the bound of one detail
    # string, nothing in it can be over any bound, and it is sent as built.
    plain = status_pb2.Status(code=code, message=error.message)
    if error.reason:
        plain.details.append(
            _pack(
                error_details_pb2.ErrorInfo(
                    reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
                )
            )
        )
    plain.details.extend(_pack(detail) for detail in error.details)
    if plain.ByteSize() <= DETAIL_TEXT_LIMIT:
        return plain
    status = status_pb2.Status(code=code, message=clip(error.message, MESSAGE_LIMIT))
    room = STATUS_LIMIT - status.ByteSize()
    if error.reason:
        metadata = dict(list(error.metadata.items())[:MAX_ITEMS])
        info = error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata
        )
        room -= _add(status, info, room)
    for detail in error.details:
        used = _add(status, detail, room)
        if not used:
            break  # later details would not fit either, or be out of order
        room -= used
    return status


def _add(status: status_pb2.Status, detail: Message, room: int) -> int:
    """Append ``detail``, bounded, if it fits in ``room`` bytes; the bytes it took, or 0.

    A detail too big even when bounded gets a tighter cut (shorter strings, fewer
    items) before it is dropped: the ErrorInfo's reason must get through.
    """
    for packed in (_pack(bounded_detail(detail)), _pack(_tight(detail))):
        size = packed.ByteSize() + 4  # field tag and length prefix
        if size <= room:
            status.details.append(packed)
            return size
    return 0


def _tight(detail: Message) -> Message:
    return bounded_detail(detail, TIGHT_TEXT_LIMIT, TIGHT_MAX_ITEMS)


def _pack(message: Message) -> any_pb2.Any:
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    return wrapped


# grpc.StatusCode values are (number, name) tuples; google.rpc.Code has the same numbers.
_CODE_NUMBERS: dict[grpc.StatusCode, int] = {code: code.value[0] for code in grpc.StatusCode}
assert _CODE_NUMBERS[grpc.StatusCode.NOT_FOUND] == code_pb2.NOT_FOUND
