"""The gateway's view of the routing table: HTTP bindings in a path matcher.

Rebuilt whenever the router swaps in a new generation, so a plugin loaded at runtime
is reachable over HTTP at once, with no code generated for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor

from nexus_grpc.gateway.bindings import BindingError, HttpBinding, bindings_for
from nexus_grpc.gateway.codec import JsonOptions
from nexus_grpc.gateway.matcher import PathMatcher
from nexus_grpc.gateway.request import HTTP_BODY, RequestBuilder, message_type
from nexus_grpc.routing import RoutingTable

__all__ = ["GatewayRoute", "GatewayRoutes", "build_gateway_routes"]

_log = logging.getLogger("nexus.gateway")


@dataclass(frozen=True)
class GatewayRoute:
    """One HTTP binding with what serving it needs, prepared once."""

    binding: HttpBinding
    builder: RequestBuilder
    #: Field of the response sent as the body (``response_body``), None for the whole message.
    response_field: FieldDescriptor | None
    #: The response (or its response_body field) is a google.api.HttpBody: raw bytes out.
    raw_response: bool


@dataclass(frozen=True)
class GatewayRoutes:
    """Every HTTP binding of one routing generation."""

    generation: int
    matcher: PathMatcher[GatewayRoute]
    bindings: tuple[HttpBinding, ...]


def build_gateway_routes(
    table: RoutingTable, options: JsonOptions, *, strict_query: bool, exclude: frozenset[str]
) -> GatewayRoutes:
    """Bindings of every routed method whose service is not in ``exclude``."""
    matcher: PathMatcher[GatewayRoute] = PathMatcher()
    bindings: list[HttpBinding] = []
    for route in sorted(table.routes.values(), key=lambda r: r.path):
        if route.service in exclude:
            continue
        try:
            found = bindings_for(route.info.descriptor)
            for binding in found:
                matcher.add(
                    binding.http_method, binding.template, _prepare(binding, options, strict_query)
                )
        except (BindingError, ValueError) as error:
            _log.error(
                "no HTTP route for %s: %s", route.path, error, extra={"plugin": route.plugin}
            )
            continue
        bindings.extend(found)
    return GatewayRoutes(table.generation, matcher, tuple(bindings))


def _prepare(binding: HttpBinding, options: JsonOptions, strict_query: bool) -> GatewayRoute:
    output = binding.method.output_type
    field = output.fields_by_name[binding.response_body] if binding.response_body else None
    raw = output.full_name == HTTP_BODY or (
        field is not None
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and message_type(field).full_name == HTTP_BODY
    )
    return GatewayRoute(
        binding=binding,
        builder=RequestBuilder(binding, options, strict_query=strict_query),
        response_field=field,
        raw_response=raw,
    )
