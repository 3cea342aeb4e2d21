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

__all__ = [
    "AlreadyExistsError",
    "ConflictError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "StatusError",
    "is_unavailable",
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
        summary = message or "; ".join(
            f"{v.field}: {v.description}" for v in found[: self.MESSAGE_LIMIT]
        )
        if not message and len(found) > self.MESSAGE_LIMIT:
            summary += f"; and {len(found) - self.MESSAGE_LIMIT} more"
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field[:200], description=v.description[:300]
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
            f"{resource_type} {resource_name!r} not found",
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
            f"{resource_type} {resource_name!r} already exists",
            reason="ALREADY_EXISTS",
            details=(
                error_details_pb2.ResourceInfo(
                    resource_type=resource_type, resource_name=resource_name
                ),
            ),
        )


class ConflictError(StatusError):
    """A concurrent change won; the client may re-read and retry."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.ABORTED, message, reason="CONFLICT")


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from, or while handling) is a
    status UNAVAILABLE: storage or event bus unavailable, nothing the caller did."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:  # bounded: chains can be long or cyclic
        if isinstance(current, StatusError) and current.code == grpc.StatusCode.UNAVAILABLE:
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def to_status_proto(error: StatusError) -> status_pb2.Status:
    """The ``google.rpc.Status`` for ``error``, ErrorInfo first, then its own details."""
    packed: list[any_pb2.Any] = []
    if error.reason:
        info = error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=dict(error.metadata)
        )
        packed.append(_pack(info))
    packed.extend(_pack(detail) for detail in error.details)
    return status_pb2.Status(code=_CODE_NUMBERS[error.code], message=error.message, details=packed)


def _pack(message: Message) -> any_pb2.Any:
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    return wrapped


# grpc.StatusCode values are (number, name) tuples; google.rpc.Code has the same numbers.
_CODE_NUMBERS: dict[grpc.StatusCode, int] = {code: code.value[0] for code in grpc.StatusCode}
assert _CODE_NUMBERS[grpc.StatusCode.NOT_FOUND] == code_pb2.NOT_FOUND
