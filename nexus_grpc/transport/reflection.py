"""gRPC server reflection, v1 and v1alpha, answered from the live routing table.

grpcio-reflection freezes its service list when it is built and speaks only v1alpha,
while grpcurl and buf curl ask for v1 first. This servicer reads the current routing
generation on every request, so a plugin loaded at runtime is listed at once. The two
protocol versions have identical messages and differ only in their package, so v1 is
served with the v1alpha message classes under a v1 service descriptor derived from the
v1alpha file.

Types are looked up first in the pools of the routed methods, newest route first: a
plugin upgraded to a changed contract serves it from its generation's own pool
(:mod:`nexus_grpc.plugins.generations`) while the default pool still holds the first
version, and a client must see the version being served.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nexus_grpc.routing import Router, RoutingTable
from nexus_grpc.transport.servicers import ServiceBinding, bind_servicer

__all__ = ["ReflectionServicer", "reflection_bindings"]

_V1_PACKAGE = "grpc.reflection.v1"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _v1_service_descriptor() -> descriptor_pool.DescriptorPool:
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = _V1_PACKAGE
    prefix = ".grpc.reflection.v1alpha."
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(prefix, f".{_V1_PACKAGE}.")
            method.output_type = method.output_type.replace(prefix, f".{_V1_PACKAGE}.")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(prefix):
                field.type_name = field.type_name.replace(prefix, f".{_V1_PACKAGE}.")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool


#: Holds the derived v1 reflection file; searched after the default pool.
_CORE_POOL = _v1_service_descriptor()


class ReflectionServicer(reflection_pb2_grpc.ServerReflectionServicer):  # type: ignore[misc]
    """Answers reflection requests about the services currently routed."""

    def __init__(
        self, router: Router, pools: Iterable[descriptor_pool.DescriptorPool] = ()
    ) -> None:
        self._router = router
        self._fixed = [descriptor_pool.Default(), *pools, _CORE_POOL]
        # Worked out once per routing table; forgotten when the table changes, so a
        # dropped generation's pool is not kept alive here.
        self._searched: list[descriptor_pool.DescriptorPool] | None = None
        router.on_change(self._forget_pools)

    def _forget_pools(self, _table: RoutingTable) -> None:
        self._searched = None

    @property
    def _pools(self) -> list[descriptor_pool.DescriptorPool]:
        """Pools to search, in order: the routed generations' (newest first), then the rest."""
        if self._searched is not None:
            return self._searched
        routed: dict[int, descriptor_pool.DescriptorPool] = {}
        for route in reversed(list(self._router.table.routes.values())):
            pool = route.info.descriptor.containing_service.file.pool
            routed.setdefault(id(pool), pool)
        fixed = {id(pool) for pool in self._fixed}
        self._searched = [p for key, p in routed.items() if key not in fixed] + self._fixed
        return self._searched

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterator[reflection_pb2.ServerReflectionRequest],
        context: grpc.aio.ServicerContext[
            reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
        ],
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        """One response per request, for as long as the client keeps the stream open."""
        # Files already sent on this stream: clients cache them, so each is sent once.
        # Keyed by name and content: after a contract upgrade a file of the same name
        # is another file, and a client on a stream opened before must get it.
        sent: set[tuple[str, bytes]] = set()
        async for request in request_iterator:
            yield self._answer(request, sent)

    def _answer(
        self, request: reflection_pb2.ServerReflectionRequest, sent: set[tuple[str, bytes]]
    ) -> reflection_pb2.ServerReflectionResponse:
        response = reflection_pb2.ServerReflectionResponse(
            valid_host=request.host, original_request=request
        )
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            response.list_services_response.service.extend(
                reflection_pb2.ServiceResponse(name=name) for name in self._service_names()
            )
        elif kind == "file_by_filename":
            self._files(
                response,
                sent,
                lambda pool: pool.FindFileByName(request.file_by_filename),
                f"file {request.file_by_filename!r} not found",
            )
        elif kind == "file_containing_symbol":
            symbol = request.file_containing_symbol
            self._files(
                response,
                sent,
                lambda pool: _file_containing_symbol(pool, symbol),
                f"symbol {symbol!r} not found",
            )
        elif kind == "file_containing_extension":
            ext = request.file_containing_extension
            self._files(
                response,
                sent,
                lambda pool: (
                    pool.FindExtensionByNumber(
                        pool.FindMessageTypeByName(ext.containing_type), ext.extension_number
                    ).file
                ),
                f"extension {ext.extension_number} of {ext.containing_type!r} not found",
            )
        elif kind == "all_extension_numbers_of_type":
            self._extension_numbers(response, request.all_extension_numbers_of_type)
        else:
            _error(response, grpc.StatusCode.INVALID_ARGUMENT, "empty reflection request")
        return response

    def _service_names(self) -> list[str]:
        return self._router.table.services()

    def _files(
        self,
        response: reflection_pb2.ServerReflectionResponse,
        sent: set[tuple[str, bytes]],
        find: object,
        not_found: str,
    ) -> None:
        assert callable(find)
        for pool in self._pools:
            try:
                found = find(pool)
            except KeyError:
                continue
            payload = []
            for file in _with_dependencies(found):
                serialized = _serialized(file)
                key = (file.name, hashlib.blake2b(serialized, digest_size=16).digest())
                if key not in sent:
                    sent.add(key)
                    payload.append(serialized)
            if not payload:
                # The client asked again for a file it has: send it anyway, it is what
                # it asked for.
                payload.append(_serialized(found))
            response.file_descriptor_response.file_descriptor_proto.extend(payload)
            return
        _error(response, grpc.StatusCode.NOT_FOUND, not_found)

    def _extension_numbers(
        self, response: reflection_pb2.ServerReflectionResponse, type_name: str
    ) -> None:
        for pool in self._pools:
            try:
                message = pool.FindMessageTypeByName(type_name)
            except KeyError:
                continue
            numbers = sorted(ext.number for ext in pool.FindAllExtensions(message))
            answer = response.all_extension_numbers_response
            answer.base_type_name = type_name
            answer.extension_number.extend(numbers)
            return
        _error(response, grpc.StatusCode.NOT_FOUND, f"message type {type_name!r} not found")


def _file_containing_symbol(pool: descriptor_pool.DescriptorPool, symbol: str) -> FileDescriptor:
    """The file defining ``symbol``; methods (``pkg.Service.Method``) count, as the spec says."""
    try:
        return pool.FindFileContainingSymbol(symbol)
    except KeyError:
        # upb's pool does not resolve method names: look the service up instead.
        service_name, _, method = symbol.rpartition(".")
        service = pool.FindServiceByName(service_name)  # KeyError when it is not one either
        if method not in service.methods_by_name:
            raise
        return service.file


def _with_dependencies(root: FileDescriptor) -> list[FileDescriptor]:
    """``root`` first, then every file it imports, transitively, each once."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()
    stack = [root]
    while stack:
        file = stack.pop()
        if file.name in seen:
            continue
        seen.add(file.name)
        ordered.append(file)
        stack.extend(reversed(list(file.dependencies)))
    return ordered


def _serialized(file: FileDescriptor) -> bytes:
    # The bytes protoc produced, options and all, rather than a lossy re-encoding.
    return bytes(file.serialized_pb)


def _error(
    response: reflection_pb2.ServerReflectionResponse, code: grpc.StatusCode, message: str
) -> None:
    response.error_response.error_code = code.value[0]
    response.error_response.error_message = message


def reflection_bindings(servicer: ReflectionServicer) -> list[ServiceBinding]:
    """The v1alpha binding from the generated code, plus v1 under its own descriptor."""
    v1alpha = bind_servicer(servicer)
    base = v1alpha[0]
    v1_service = _CORE_POOL.FindServiceByName(f"{_V1_PACKAGE}.ServerReflection")
    v1 = ServiceBinding(
        descriptor=v1_service,
        servicer=servicer,
        generated_base=base.generated_base,
        handlers=base.handlers,
    )
    return [*v1alpha, v1]
