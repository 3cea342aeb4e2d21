"""gRPC status codes as HTTP statuses, and the google.rpc.Status JSON error body."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import status_pb2

from nexus_grpc.errors import StatusError, to_status_proto

__all__ = ["error_body", "http_status", "status_body"]

# The canonical mapping (google/rpc/code.proto, as grpc-gateway and Envoy use it).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status for a gRPC status code."""
    return _HTTP_STATUS.get(code, 500)


def status_body(status: status_pb2.Status) -> dict[str, Any]:
    """``google.rpc.Status`` as JSON: ``{code, message, details: [{"@type": ...}]}``."""
    body: dict[str, Any] = json_format.MessageToDict(status)
    body.setdefault("code", 0)
    body.setdefault("message", "")
    body.setdefault("details", [])
    return body


def error_body(error: StatusError) -> dict[str, Any]:
    """The JSON error body for ``error``."""
    return status_body(to_status_proto(error))
