"""The error a bad list query (filter, order_by, page_size, page_token) raises."""

from __future__ import annotations

from nexus_grpc.errors import FieldViolation, InvalidArgumentError

__all__ = ["InvalidQueryError"]


class InvalidQueryError(InvalidArgumentError):
    """A list query the storage cannot run: INVALID_ARGUMENT for the client.

    ``argument`` names the offending list argument (``filter``, ``order_by``,
    ``page_size`` or ``page_token``) and ``field_path`` the message field it is about,
    if any; the message says what was expected. It is a :class:`StatusError`, so a
    handler may let it propagate and the client gets a ``google.rpc.BadRequest``.
    """

    def __init__(self, message: str, *, argument: str, field_path: str = "") -> None:
        violation_field = f"{argument}.{field_path}" if field_path else argument
        super().__init__([FieldViolation(violation_field, message)], message=message)
        self.argument = argument
        self.field_path = field_path
