"""Transport security: TLS and mutual TLS on both ports, reloads, expiry, test certificates.

- :mod:`~nexus_grpc.tls.material`: the PEM files of a port, read and checked together.
- :mod:`~nexus_grpc.tls.ports`: gRPC credentials and HTTP ``SSLContext`` that swap in
  reloaded certificates for new handshakes.
- :mod:`~nexus_grpc.tls.service`: both ports for a host, the file watch, expiry.
- :mod:`~nexus_grpc.tls.identity`: the principal a verified client certificate stands for.
- :mod:`~nexus_grpc.tls.certs`: a throwaway CA and certificates for tests.
"""

from __future__ import annotations

from nexus_grpc.tls.identity import ClientDirectory, auth_context_from_ssl, certificate_names
from nexus_grpc.tls.material import TlsMaterial, load_material
from nexus_grpc.tls.ports import GrpcTls, HttpTls
from nexus_grpc.tls.service import TLS_HEALTH, TlsExpiryMetrics, TlsService

__all__ = [
    "TLS_HEALTH",
    "ClientDirectory",
    "GrpcTls",
    "HttpTls",
    "TlsExpiryMetrics",
    "TlsMaterial",
    "TlsService",
    "auth_context_from_ssl",
    "certificate_names",
    "load_material",
]
