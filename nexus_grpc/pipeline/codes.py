"""Status codes as the logs and the metrics name them: one spelling everywhere.

grpc-go's ``codes.Code.String()`` spelling (``OK``, ``NotFound``, ``Canceled`` ...),
which go-grpc-prometheus puts in the ``grpc_code`` label and go-grpc-middleware's
logging in ``grpc.code``: an access-log line and the series it was counted in say the
same thing, and dashboards written for grpc-go work unchanged.
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = ["as_code", "cancelled_code", "code_label"]

_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def _go_name(code: grpc.StatusCode) -> str:
    # codes.Code.String() in grpc-go: CamelCase, and CANCELLED is "Canceled".
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    if code is grpc.StatusCode.OK:
        return "OK"
    return "".join(part.capitalize() for part in code.name.split("_"))


_CODE_LABELS: dict[grpc.StatusCode, str] = {code: _go_name(code) for code in grpc.StatusCode}


def code_label(code: grpc.StatusCode) -> str:
    """The name of ``code`` in logs and in the ``grpc_code`` label, as grpc-go spells it."""
    return _CODE_LABELS[code]


def as_code(code: Any) -> grpc.StatusCode:
    """``context.code()`` as a ``grpc.StatusCode``: None is OK, a bare number is looked up.

    Some contexts report bare numbers; anything unrecognisable is UNKNOWN.
    """
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    number = code if isinstance(code, int) else -1
    return _CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def cancelled_code(context: Any) -> grpc.StatusCode:
    """The status of a call whose task was cancelled: DEADLINE_EXCEEDED when its deadline
    has passed, else CANCELLED (the client went away)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED
