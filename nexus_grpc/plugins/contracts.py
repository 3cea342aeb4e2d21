"""The services a configuration would serve, found without starting anything.

Used by ``nexus lint`` and ``nexus policy explain``: plugins are discovered and
imported (which registers their descriptors), but no hook runs and nothing listens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from nexus_grpc.config import Config
from nexus_grpc.plugins.discovery import discover_configured, excluded_by
from nexus_grpc.plugins.loader import PluginError, import_plugin

__all__ = ["Contracts", "find_method", "load_contracts"]

#: The host's own services, served by every host.
CORE_SERVICES = (
    "nexus.admin.v1.AdminService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
)


@dataclass
class Contracts:
    """Services by plugin, and the plugins that could not be loaded."""

    services: dict[str, list[ServiceDescriptor]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def methods(self) -> list[MethodDescriptor]:
        """Every method of every service."""
        return [m for services in self.services.values() for s in services for m in s.methods]


def load_contracts(config: Config) -> Contracts:
    """Import the configured plugins and collect the services they declare; plugins
    turned off by ``plugins.disabled`` / ``plugins.enabled`` are skipped, broken or not."""
    # Imported for their side effect: registering the core services' descriptors.
    from grpc_health.v1 import health_pb2  # noqa: F401
    from grpc_reflection.v1alpha import reflection_pb2  # noqa: F401
    from nexus.admin.v1 import admin_pb2  # noqa: F401

    pool = descriptor_pool.Default()
    contracts = Contracts()
    contracts.services["nexus"] = [pool.FindServiceByName(name) for name in CORE_SERVICES]
    settings = config.plugins
    for candidate in discover_configured(settings):
        if excluded_by(settings, candidate.name):
            continue  # turned off: the host would not load it, broken or not
        if candidate.manifest is None or candidate.error:
            contracts.errors.append(candidate.error or f"{candidate.name}: no manifest")
            continue
        try:
            loaded = import_plugin(candidate)
        except PluginError as error:
            contracts.errors.append(str(error))
            continue
        contracts.services[candidate.name] = [
            pool.FindServiceByName(name) for name in loaded.servicer_classes
        ]
    return contracts


def find_method(contracts: Contracts, name: str) -> MethodDescriptor | None:
    """A method by "/pkg.Service/Method", "pkg.Service/Method" or "pkg.Service.Method"."""
    wanted = name.strip().lstrip("/").replace("/", ".")
    for method in contracts.methods():
        if method.full_name == wanted:
            return method
    return None
