"""nexus: a gRPC-first service host where every feature is a plugin.

The public names a plugin author needs are re-exported here. They are imported on
first use (PEP 562), so that importing a module of the package (the worker
supervisor, the configuration) does not import grpc with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nexus_grpc.bounded import quote
    from nexus_grpc.errors import (
        AlreadyExistsError,
        ConflictError,
        FieldViolation,
        InvalidArgumentError,
        NotFoundError,
        StatusError,
    )
    from nexus_grpc.plugins.spec import Plugin, PluginContext

__all__ = [
    "AlreadyExistsError",
    "ConflictError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "Plugin",
    "PluginContext",
    "StatusError",
    "quote",
]

__version__ = "0.1.0"

#: Where each public name lives.
_HOMES = {
    "quote": "nexus_grpc.bounded",
    "AlreadyExistsError": "nexus_grpc.errors",
    "ConflictError": "nexus_grpc.errors",
    "FieldViolation": "nexus_grpc.errors",
    "InvalidArgumentError": "nexus_grpc.errors",
    "NotFoundError": "nexus_grpc.errors",
    "StatusError": "nexus_grpc.errors",
    "Plugin": "nexus_grpc.plugins.spec",
    "PluginContext": "nexus_grpc.plugins.spec",
}


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'nexus_grpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
