"""The call pipeline every call passes, whatever transport brought it.

The order of the stages is fixed here and only here (:func:`build_stages`).
"""

from __future__ import annotations

from nexus_grpc.pipeline.chain import Stage, chain
from nexus_grpc.pipeline.decode import DecodeStage, PendingRequest
from nexus_grpc.pipeline.errors import ErrorStage, abort_with
from nexus_grpc.pipeline.handlers import (
    as_call_handler,
    grpc_method_handler,
    unimplemented_handler,
)
from nexus_grpc.pipeline.observe import ObserveStage

__all__ = [
    "DecodeStage",
    "ErrorStage",
    "ObserveStage",
    "PendingRequest",
    "Stage",
    "abort_with",
    "as_call_handler",
    "build_stages",
    "chain",
    "grpc_method_handler",
    "unimplemented_handler",
]


def build_stages(
    *,
    observe: Stage,
    forwarded: Stage | None = None,
    metrics: Stage | None = None,
    network: Stage | None = None,
    concurrency: Stage | None = None,
    deadline: Stage | None = None,
    auth: Stage | None = None,
    rate_limit: Stage | None = None,
    streams: Stage | None = None,
    access: Stage | None = None,
    admin_audit: Stage | None = None,
    validation: Stage | None = None,
    tracing: bool = False,
) -> list[Stage]:
    """The host's pipeline, outermost first.

    - forwarded (only with ``server.trusted_proxies``): a gRPC call from a trusted
      proxy gets the client it forwards for as its peer, before anything reads it;
    - tracing (only when on): the call's server span, outermost so that every log
      record of the call carries its trace id; the stages that can refuse a call
      (auth, rate limit, access, validation) then record a refusal as a child span;
    - observe: request id and access log see everything, including the final status;
    - metrics: counts every call with the status the client gets;
    - errors: turns exceptions from anything below into statuses;
    - network: gRPC calls from a peer the port's allow/deny lists refuse stop here,
      before anything reads the request (the kernel filter normally stops them first);
    - concurrency, deadline: cheap limits before any work;
    - auth: who is calling (a bad token stops here);
    - rate limit: per principal, before the costlier authorization and handler;
    - streams: open streams per principal and in total (streaming methods only), and
      the registry the host ends them from when it drains;
    - decode: the request is read and parsed only now, so neither an unauthenticated
      nor a throttled caller costs any parsing; nothing above looks inside a request,
      and everything below sees a message;
    - access: the contract's policy, ownership checks, shadow mode;
    - admin audit: administrative calls recorded with their outcome;
    - validation: the contract's field rules, last, so only authorized callers learn
      what a valid request looks like.
    """
    server_span: Stage | None = None
    if tracing:
        # Imported only when on: tracing off loads nothing of it.
        from nexus_grpc.tracing.stage import RefusalSpans, ServerSpanStage

        server_span = ServerSpanStage()
        auth = RefusalSpans(auth, "auth") if auth is not None else None
        rate_limit = RefusalSpans(rate_limit, "rate_limit") if rate_limit is not None else None
        access = RefusalSpans(access, "access") if access is not None else None
        validation = RefusalSpans(validation, "validation") if validation is not None else None
    ordered: list[Stage | None] = [
        forwarded,
        server_span,
        observe,
        metrics,
        ErrorStage(),
        network,
        concurrency,
        deadline,
        auth,
        rate_limit,
        streams,
        # Always there: grpcio hands requests over undecoded (pipeline.handlers).
        DecodeStage(),
        access,
        admin_audit,
        validation,
    ]
    return [stage for stage in ordered if stage is not None]
