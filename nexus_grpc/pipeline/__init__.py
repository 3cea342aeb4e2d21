"""The call pipeline every call passes, whatever transport brought it.

The order of the stages is fixed here and only here.
"""

from __future__ import annotations

from nexus_grpc.pipeline.chain import Stage, chain
from nexus_grpc.pipeline.errors import ErrorStage, abort_with
from nexus_grpc.pipeline.handlers import (
    as_call_handler,
    grpc_method_handler,
    unimplemented_handler,
)
from nexus_grpc.pipeline.observe import ObserveStage

__all__ = [
    "ErrorStage",
    "ObserveStage",
    "Stage",
    "abort_with",
    "as_call_handler",
    "chain",
    "default_stages",
    "grpc_method_handler",
    "unimplemented_handler",
]


def default_stages(*, access_log: bool = True) -> list[Stage]:
    """The host's pipeline, outermost first.

    Observe wraps everything so the access log sees the final status, including the
    one the error stage produced; the error stage wraps everything else so no
    exception from a later stage or the handler escapes as a traceback.
    """
    return [ObserveStage(access_log=access_log), ErrorStage()]
