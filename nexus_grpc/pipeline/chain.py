"""Composition of pipeline stages around a handler, bound once per method.

A stage is bound to a method when the routing table is built, not per call: it can
look at the method (its options, its plugin) and return a handler specialised for it,
or return ``next`` untouched when it does not apply, which then costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from nexus_grpc.routing import CallHandler, MethodInfo

__all__ = ["Stage", "chain"]


class Stage(Protocol):
    """One concern of the call pipeline (errors, auth, metrics, ...)."""

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Return the handler that runs this stage and then ``next`` for ``method``."""
        ...


def chain(stages: Sequence[Stage], method: MethodInfo, handler: CallHandler) -> CallHandler:
    """Wrap ``handler`` so ``stages[0]`` runs first (outermost) and ``handler`` last."""
    for stage in reversed(stages):
        handler = stage.bind(method, handler)
    return handler
