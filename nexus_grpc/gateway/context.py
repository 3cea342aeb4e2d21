"""The servicer context a call gets when it arrives over HTTP.

Handlers and pipeline stages are written against grpc.aio's ``ServicerContext``; this
class offers the same methods with the same behaviour (``abort`` raises
``grpc.aio.AbortError``, ``write`` sends a streamed response), so a plugin cannot tell
which transport brought the call. It is the host's
:class:`~nexus_grpc.pipeline.context.CallContext`, which in-process calls between
plugins use too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_grpc.pipeline.context import CallContext, Metadata

if TYPE_CHECKING:
    from nexus_grpc.tracing.http import HttpCall

__all__ = ["GatewayContext", "Metadata"]


class GatewayContext(CallContext):
    """``grpc.aio.ServicerContext`` for calls made over REST or gRPC-Web."""

    #: The HTTP request's method, route template and scheme for the server span's
    #: attributes; set by the gateway only while tracing is on.
    http_call: HttpCall | None = None
