"""REST/JSON transcoding, gRPC-Web and OpenAPI for every routed method.

Built at runtime from the ``google.api.http`` annotations of the loaded plugins'
descriptors: a plugin loaded while the host runs gets its HTTP routes at once.
"""

from nexus_grpc.gateway.app import GatewayApp, GatewaySettings
from nexus_grpc.gateway.bindings import BindingError, HttpBinding, bindings_for
from nexus_grpc.gateway.codec import JsonOptions
from nexus_grpc.gateway.cors import CorsPolicy

__all__ = [
    "BindingError",
    "CorsPolicy",
    "GatewayApp",
    "GatewaySettings",
    "HttpBinding",
    "JsonOptions",
    "bindings_for",
]
