"""nexus: a gRPC-first service host where every feature is a plugin.

The public names a plugin author needs are re-exported here.
"""

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
