"""Every failure leaves as a proper gRPC status, never as a traceback.

:class:`~nexus_grpc.errors.StatusError` becomes its code, message and
``google.rpc`` details (``grpc-status-details-bin``). Any other exception is logged
with its traceback and the request id, and the client gets INTERNAL with the request
id only, so nothing about the server's internals leaks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from nexus_grpc.errors import StatusError, to_status_proto
from nexus_grpc.logs import current_request_id
from nexus_grpc.routing import CallHandler, MethodInfo

__all__ = ["ErrorStage", "abort_with"]

_log = logging.getLogger("nexus.errors")

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


async def abort_with(context: Any, error: StatusError) -> None:
    """End the call with ``error``'s status and details (raises, as ``abort`` does)."""
    status = to_status_proto(error)
    ours: list[tuple[str, str | bytes]] = [(_STATUS_DETAILS_KEY, status.SerializeToString())]
    request_id = current_request_id()
    if request_id:
        ours.append(("x-request-id", request_id))
    # abort() replaces the trailing metadata: keep what the handler set before failing.
    keys = {key for key, _ in ours}
    kept = [(k, v) for k, v in context.trailing_metadata() or () if k not in keys]
    # The status's message is the bounded one (nexus_grpc.bounded): grpc-message is a
    # trailer too, and clients refuse oversized metadata.
    await context.abort(error.code, status.message, (*kept, *ours))


class ErrorStage:
    """Converts exceptions raised below it into statuses."""

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Wrap ``next`` so its exceptions end the call with a status."""
        path = method.path

        async def handle_errors(request: Any, context: Any) -> Any:
            try:
                return await next(request, context)
            except StatusError as error:
                await abort_with(context, error)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                request_id = current_request_id()
                _log.exception("unhandled error in %s", path, extra={"method": path})
                await abort_with(
                    context,
                    StatusError(
                        grpc.StatusCode.INTERNAL,
                        f"internal error (request id {request_id})",
                        reason="INTERNAL",
                    ),
                )
            return None  # unreachable: abort_with raises

        return handle_errors
