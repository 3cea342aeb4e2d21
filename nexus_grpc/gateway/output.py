"""What goes back to an HTTP client: the response JSON, metadata headers, the status."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from nexus_grpc.gateway.codec import JsonOptions, message_to_value
from nexus_grpc.gateway.context import GatewayContext
from nexus_grpc.gateway.headers import METADATA_PREFIX, TRAILER_PREFIX, metadata_to_headers
from nexus_grpc.gateway.routes import GatewayRoute

__all__ = ["metadata_headers", "response_value", "status_of"]

# Trailing metadata the gateway turns into something else: the status body and the
# X-Request-Id header.
_HIDDEN_TRAILERS = frozenset({"x-request-id", "grpc-status-details-bin"})


def response_value(response: Message, route: GatewayRoute, options: JsonOptions) -> Any:
    """The JSON value of ``response``, or of its ``response_body`` field."""
    value = message_to_value(response, options)
    field = route.response_field
    if field is None:
        return value
    name = field.name if options.proto_names else field.json_name
    if name in value:
        return value[name]
    # The field holds its default and was left out: send the default, e.g. [] or 0.
    defaults = message_to_value(
        type(response)(), JsonOptions(emit_defaults=True, proto_names=options.proto_names)
    )
    return defaults.get(name)


def status_of(context: GatewayContext, code: grpc.StatusCode) -> status_pb2.Status:
    """The call's ``google.rpc.Status``, with details when the pipeline attached them."""
    for key, value in context.trailing_metadata():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    # details() is bounded by the context (nexus_grpc.bounded), as abort_with's status is.
    return status_pb2.Status(code=code.value[0], message=context.details() or "")


def metadata_headers(
    context: GatewayContext, *, trailers: bool = True
) -> list[tuple[bytes, bytes]]:
    """Response metadata as headers: Grpc-Metadata-*, Grpc-Trailer-*, X-Request-Id."""
    headers = metadata_to_headers(context.initial_metadata, METADATA_PREFIX)
    if trailers:
        visible = [(k, v) for k, v in context.trailing_metadata() if k not in _HIDDEN_TRAILERS]
        headers += metadata_to_headers(visible, TRAILER_PREFIX)
    for key, value in context.invocation_metadata():
        if key == "x-request-id" and isinstance(value, str):
            headers.append((b"x-request-id", value.encode("latin-1")))
    return headers
