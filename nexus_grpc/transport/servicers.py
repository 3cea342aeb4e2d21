"""From a servicer instance to routes, without touching the real server.

Generated ``add_XServicer_to_server`` functions are run against a small capture object
instead of a server: they hand it the method handlers with the right (de)serializers,
and the protobuf descriptors come from the pool the generated module registered in.
The real server only ever has the dispatcher (DESIGN decision 2).

A plugin upgraded to a changed contract has its generated modules in a pool of their
own (:mod:`nexus_grpc.plugins.generations`), and ``sys.modules`` shows only the newest
ones. So the registration function and the service descriptor are found through the
generated base class itself (the module its methods were defined in, and the pool of
the ``_pb2`` module that module imported), never by module name or in the default pool:
servicers of the old and the new generation each bind their own types.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

from nexus_grpc.access.policy import effective_policy
from nexus_grpc.pipeline import (
    Stage,
    as_call_handler,
    chain,
    grpc_method_handler,
    unimplemented_handler,
)
from nexus_grpc.routing import Arity, InFlight, MethodInfo, Route

__all__ = [
    "ServiceBinding",
    "ServicerError",
    "bind_servicer",
    "build_routes",
    "construct_servicer",
    "declared_services",
    "generated_bases",
]


class ServicerError(TypeError):
    """A servicer class cannot be served; the message says what to change."""


@dataclass(frozen=True)
class ServiceBinding:
    """One protobuf service implemented by a servicer instance."""

    descriptor: ServiceDescriptor
    servicer: object
    #: The generated ``...Servicer`` class the servicer subclasses.
    generated_base: type
    #: Method name → handler captured from the generated registration function.
    handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]

    @property
    def name(self) -> str:
        """Fully qualified service name."""
        return str(self.descriptor.full_name)

    def implements(self, method: str) -> bool:
        """Whether the servicer overrides the generated placeholder of ``method``."""
        own = getattr(type(self.servicer), method, None)
        placeholder = getattr(self.generated_base, method, None)
        return own is not None and own is not placeholder


def generated_bases(cls: type) -> list[type]:
    """The generated ``...Servicer`` classes ``cls`` subclasses (one per service)."""
    bases = []
    for base in cls.__mro__[1:]:
        if not base.__module__.endswith("_pb2_grpc"):
            continue
        if callable(_registration(base)):
            bases.append(base)
    return bases


def _namespace(base: type) -> Mapping[str, Any]:
    """The globals of the generated module that defined ``base``.

    Taken from one of its methods rather than ``sys.modules``, which holds only the
    newest generation of a module.
    """
    for value in vars(base).values():
        code_globals = getattr(value, "__globals__", None)
        if isinstance(code_globals, dict):
            return code_globals
    module = sys.modules.get(base.__module__)
    return vars(module) if module is not None else {}


def _registration(base: type) -> Any:
    return _namespace(base).get(f"add_{base.__name__}_to_server")


def _service_descriptor(base: type, service_name: str) -> ServiceDescriptor:
    """``service_name`` as declared by the ``_pb2`` module ``base``'s module imports.

    Only the file declaring the service counts: another module among its imports
    (``empty_pb2``, a copy of a dependency) may live in another pool that holds an
    older version of the same service, whose methods would go unrouted.
    """
    package, _, name = service_name.rpartition(".")
    for value in _namespace(base).values():
        file = getattr(value, "DESCRIPTOR", None)
        if isinstance(file, FileDescriptor) and file.package == package:
            service = file.services_by_name.get(name)
            if service is not None:
                return service
    return descriptor_pool.Default().FindServiceByName(service_name)


class _Capture:
    """Stands in for a grpc server while generated code registers handlers on it."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.services[service_name] = dict(method_handlers)

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        # Stubs from grpcio-tools older than 1.63 register only a generic handler;
        # newer ones register both, and the registered handlers above win.
        for handler in handlers:
            name = getattr(handler, "_name", None)
            methods = getattr(handler, "_method_handlers", None)
            if isinstance(name, str) and isinstance(methods, dict):
                prefix = f"/{name}/"
                self.services.setdefault(
                    name,
                    {path.removeprefix(prefix): h for path, h in methods.items()},
                )


def declared_services(cls: type) -> list[str]:
    """Names of the services ``cls`` implements, found without instantiating it."""
    names: list[str] = []
    for base in generated_bases(cls):
        capture = _Capture()
        # The registration functions only read the method attributes, which the class
        # has as well as its instances.
        _registration(base)(cls, capture)
        names.extend(capture.services)
    return names


def bind_servicer(servicer: object) -> list[ServiceBinding]:
    """Capture the services ``servicer`` implements; ServicerError if it implements none."""
    cls = type(servicer)
    bases = generated_bases(cls)
    if not bases:
        raise ServicerError(
            f"{cls.__module__}.{cls.__qualname__} does not subclass a generated "
            "...Servicer class (from a *_pb2_grpc module); subclass the servicer "
            "generated from your .proto"
        )
    bindings = []
    for base in bases:
        capture = _Capture()
        _registration(base)(servicer, capture)
        for service_name, handlers in capture.services.items():
            descriptor = _service_descriptor(base, service_name)
            bindings.append(ServiceBinding(descriptor, servicer, base, handlers))
    return bindings


def build_routes(
    binding: ServiceBinding,
    *,
    plugin: str,
    stages: Sequence[Stage],
    in_flight: InFlight,
    category: str = "core",
) -> list[Route]:
    """One route per method of the service, each wrapped in the pipeline."""
    routes = []
    owns = getattr(binding.servicer, "owns", None)
    ownership = owns if callable(owns) else None
    for method in binding.descriptor.methods:
        path = f"/{binding.name}/{method.name}"
        arity = Arity.of(method)
        captured = binding.handlers.get(method.name)
        if captured is None:
            raise ServicerError(f"generated code registered no handler for {path}")
        info = MethodInfo(
            path,
            plugin,
            method,
            arity,
            in_flight,
            policy=effective_policy(method),
            ownership=ownership,
            category=category,
            request_deserializer=captured.request_deserializer,
        )
        if binding.implements(method.name):
            behavior = getattr(captured, arity.value)
            where = f"{type(binding.servicer).__qualname__}.{method.name}"
            handler = as_call_handler(behavior, arity, where)
        else:
            handler = unimplemented_handler(path, plugin)
        call = chain(stages, info, handler)
        routes.append(
            Route(
                info=info,
                call=call,
                grpc_handler=grpc_method_handler(arity, call, captured.response_serializer),
            )
        )
    return routes


def construct_servicer(cls: type, context: object) -> object:
    """Instantiate ``cls`` with ``context`` when its ``__init__`` takes an argument."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return cls()
    required = [
        p for p in parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return cls(context) if required else cls()
