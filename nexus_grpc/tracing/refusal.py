"""Stage refusals raised from inside the call below the stage (a validated request stream).

:class:`~nexus_grpc.tracing.stage.RefusalSpans` tells a stage's own refusal from an
error that merely passed through the stage on its way up. A stage that refuses while
the handler runs (the validation stage checks each message of a client stream as the
handler reads it) names that exception here, so it still counts as the stage's refusal.
Kept per task in a context variable: nothing is written on the exception, which may
be one object raised by many calls.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["claim_own_refusal", "refusing"]

_own: ContextVar[BaseException | None] = ContextVar("nexus_own_refusal", default=None)


def refusing(error: BaseException) -> BaseException:
    """Mark ``error``, about to be raised inside the handler, as the stage's refusal."""
    _own.set(error)
    return error


def claim_own_refusal(error: BaseException) -> bool:
    """Whether ``error`` was marked by :func:`refusing` (the mark is used up)."""
    if _own.get() is not error:
        return False
    _own.set(None)
    return True
