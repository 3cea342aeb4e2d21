"""HTTP bindings of a method, read from its ``google.api.http`` annotation.

Every binding (the rule and its ``additional_bindings``) is checked against the
request and response messages when routes are built, so a contract mistake is reported
at load time with the method and the field, not as a 500 on the first request.
A method without an annotation gets the binding Envoy's transcoder gives it:
``POST /package.Service/Method`` with the whole request as the body.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from nexus_grpc.gateway.template import PathTemplate, TemplateError, parse_template

__all__ = [
    "RESERVED_PATHS",
    "BindingError",
    "HttpBinding",
    "bindings_for",
    "reserved_path_bindings",
    "resolve_field_path",
]

#: Paths the gateway answers itself, before any binding is matched: the probes, the
#: metrics and the OpenAPI document. A binding on one of them could never be reached.
RESERVED_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})

_PATTERNS = ("get", "put", "post", "delete", "patch")


class BindingError(ValueError):
    """An HTTP annotation that cannot be served; the message names the method and the fix."""


@dataclass(frozen=True)
class HttpBinding:
    """One HTTP method + path template serving one gRPC method."""

    http_method: str
    template: PathTemplate
    #: "" (no body), "*" (the whole request) or the name of a top-level request field.
    body: str
    #: "" (the whole response) or the name of a top-level response field.
    response_body: str
    #: The gRPC wire path, "/package.Service/Method".
    route_path: str
    method: MethodDescriptor
    #: Field paths bound by the path template, in template order.
    path_fields: tuple[tuple[str, ...], ...]

    @property
    def client_streaming(self) -> bool:
        """Requests arrive as a stream (NDJSON body)."""
        return bool(self.method.client_streaming)

    @property
    def server_streaming(self) -> bool:
        """Responses leave as a stream (NDJSON, SSE or a JSON array)."""
        return bool(self.method.server_streaming)


def bindings_for(method: MethodDescriptor) -> list[HttpBinding]:
    """The method's bindings: its annotation and additional bindings, or the default one."""
    route_path = f"/{method.containing_service.full_name}/{method.name}"
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        rule = http_pb2.HttpRule(post=route_path, body="*")
        return [_binding(method, route_path, rule)]
    rule = options.Extensions[annotations_pb2.http]
    found = [_binding(method, route_path, rule)]
    for extra in rule.additional_bindings:
        if extra.additional_bindings:
            raise BindingError(f"{route_path}: additional_bindings cannot nest further bindings")
        found.append(_binding(method, route_path, extra))
    return found


def reserved_path_bindings(methods: Iterable[MethodDescriptor]) -> list[str]:
    """``<method>: <HTTP method> <path>`` for every binding of ``methods`` whose path is
    exactly a reserved one (a template with variables, such as ``/{name}``, may match a
    reserved path but is not refused: the gateway answers those paths first)."""
    found = []
    for method in methods:
        try:
            bindings = bindings_for(method)
        except BindingError:
            continue  # reported when the gateway builds its routes
        for binding in bindings:
            template = binding.template
            if template.variables or template.verb is not None:
                continue
            try:
                path = "/" + "/".join(segment.value for segment in template.segments)
            except ValueError:
                continue  # a wildcard: not one literal path
            if path in RESERVED_PATHS:
                found.append(
                    f"/{method.full_name.rpartition('.')[0]}/{method.name}: "
                    f"{binding.http_method} {path}"
                )
    return found


def _binding(method: MethodDescriptor, route_path: str, rule: http_pb2.HttpRule) -> HttpBinding:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise BindingError(f"{route_path}: google.api.http rule has no HTTP method and path")
    if kind == "custom":
        http_method, text = rule.custom.kind.upper(), rule.custom.path
        if not http_method:
            raise BindingError(f"{route_path}: custom HTTP rule needs a `kind`")
    else:
        assert kind in _PATTERNS
        http_method, text = kind.upper(), getattr(rule, kind)
    try:
        template = parse_template(text)
    except TemplateError as error:
        raise BindingError(f"{route_path}: {error}") from None
    request = method.input_type
    path_fields = []
    for variable in template.variables:
        field = _resolve(request, variable.field_path, route_path, "path variable")
        if field.is_repeated or field.type == FieldDescriptor.TYPE_MESSAGE:
            raise BindingError(
                f"{route_path}: path variable {{{'.'.join(variable.field_path)}}} must name a "
                "singular scalar field"
            )
        path_fields.append(variable.field_path)
    if rule.body not in ("", "*"):
        _top_level(request, rule.body, route_path, "body")
        # {order.id} with body "order" is the usual AIP update: the path value wins.
        # Binding the body field itself in the path leaves nothing for the body.
        if any(path == (rule.body,) for path in path_fields):
            raise BindingError(
                f"{route_path}: field {rule.body!r} is bound by both the path and the body"
            )
    if method.client_streaming and rule.body == "":
        raise BindingError(f"{route_path}: a client-streaming method needs a body in its HTTP rule")
    if http_method == "GET" and rule.body:
        raise BindingError(f"{route_path}: a GET binding cannot have a body")
    if rule.response_body:
        _top_level(method.output_type, rule.response_body, route_path, "response_body")
    return HttpBinding(
        http_method=http_method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        route_path=route_path,
        method=method,
        path_fields=tuple(path_fields),
    )


def resolve_field_path(message: Descriptor, path: tuple[str, ...]) -> list[FieldDescriptor] | None:
    """The fields along ``path`` (proto or JSON names), or None when a step does not exist."""
    fields = []
    current: Descriptor | None = message
    for index, name in enumerate(path):
        if current is None:
            return None
        field = current.fields_by_name.get(name) or _by_json_name(current, name)
        if field is None:
            return None
        fields.append(field)
        if index < len(path) - 1:
            if field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
                return None
            current = field.message_type
    return fields


def _by_json_name(message: Descriptor, name: str) -> FieldDescriptor | None:
    for field in message.fields:
        if field.json_name == name:
            return field
    return None


def _resolve(
    message: Descriptor, path: tuple[str, ...], route_path: str, what: str
) -> FieldDescriptor:
    fields = resolve_field_path(message, path)
    if fields is None:
        raise BindingError(
            f"{route_path}: {what} {'.'.join(path)!r} is not a field of {message.full_name}"
        )
    return fields[-1]


def _top_level(message: Descriptor, name: str, route_path: str, what: str) -> FieldDescriptor:
    field = message.fields_by_name.get(name)
    if field is None:
        raise BindingError(
            f"{route_path}: {what} {name!r} is not a top-level field of {message.full_name}"
        )
    return field
