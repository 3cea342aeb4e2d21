"""``GET /openapi.json``: an OpenAPI 3.1 document built from the live descriptors.

Every HTTP binding of the routing table becomes one operation, so a plugin loaded at
runtime is documented at once, exactly as the gateway serves it:

* Path parameters are the template's variables (and its bare wildcards); query
  parameters are the request fields bound by neither the path nor the body, nested
  messages as dotted names; the request body is the request message (minus the
  path-bound fields) or the one field named by ``body``.
* Schemas follow the proto3 JSON mapping the codec implements. Where the server
  accepts more than it writes, the schema admits both forms it accepts but only
  values it accepts: 64-bit integers are decimal strings or numbers within range,
  floats are numbers or ``"NaN"``/``"Infinity"``/``"-Infinity"``, enums are their
  value names (numbers are accepted as well but not documented).
* Descriptions are the ``.proto`` comments. Runtime descriptors have none, so they
  come from the descriptor sets ``nexus gen`` writes beside the generated modules
  (:data:`nexus_grpc.codegen.DESCRIPTOR_SET_NAME`), which installed packages ship;
  without one the document simply has no descriptions.
* ``security`` follows the effective ``nexus.options.v1`` policy: bearer JWT unless
  the method is public.

Bindings OpenAPI cannot express are left out: custom HTTP methods other than HEAD,
OPTIONS and TRACE, and a second binding whose path differs from an earlier one of the
same HTTP method only in what its variables match (OpenAPI sees one path there).
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeAlias

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
)
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from nexus_grpc.access.policy import Access, effective_policy
from nexus_grpc.codegen import DESCRIPTOR_SET_NAME
from nexus_grpc.gateway.bindings import HttpBinding, resolve_field_path
from nexus_grpc.gateway.codec import JsonOptions
from nexus_grpc.gateway.openapi_rules import is_required, list_constraints, value_constraints
from nexus_grpc.gateway.template import DOUBLE_WILDCARD, LITERAL, PathTemplate, Segment

__all__ = ["openapi_document"]

_REF = "#/components/schemas/"
_STATUS = "google.rpc.Status"
_STREAM_ERROR = "nexus.gateway.StreamError"
_HTTP_BODY = "google.api.HttpBody"
_BEARER = "bearerAuth"
# Methods an OpenAPI path item has a field for.
_OPENAPI_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"})
# The gateway reads a request body only for these (see app.py).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_RAW = {"schema": {"type": "string", "format": "binary"}}
_RAW_REQUEST = {"description": "The raw request body.", "content": {"*/*": _RAW}}


# Entry point ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cached:
    """A document with what it was built from."""

    bindings: tuple[HttpBinding, ...]
    key: tuple[JsonOptions, str, str]
    document: dict[str, Any]


# One entry, replaced whole: the gateway asks with the same tuple until routes change.
_last: list[_Cached] = []


def openapi_document(
    bindings: Sequence[HttpBinding],
    options: JsonOptions,
    *,
    title: str = "nexus",
    version: str = "1",
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``bindings``, as JSON-ready Python values.

    Bindings with a custom HTTP method OpenAPI has no field for (anything but GET,
    PUT, POST, DELETE, PATCH, HEAD, OPTIONS, TRACE) are skipped, as is a binding whose
    OpenAPI path and method an earlier one already took; operation ids still count
    them, so ids never shift. Built once per ``bindings`` tuple (compared by identity)
    and options; the returned dict is shared between calls, so callers must not change it.
    """
    key = (options, title, version)
    for cached in _last:
        if cached.bindings is bindings and cached.key == key:
            return cached.document
    document = _Builder(options).document(bindings, title, version)
    if isinstance(bindings, tuple):
        # Only an immutable sequence can be recognised by identity later on.
        _last[:] = [_Cached(bindings, key, document)]
    return document


# The document -----------------------------------------------------------------------


class _Builder:
    """Collects paths, tags and component schemas while operations are added."""

    def __init__(self, options: JsonOptions) -> None:
        self.options = options
        self.comments = _Comments()
        self.schemas = _Schemas(options, self.comments)
        self.paths: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, str] = {}
        self._path_by_shape: dict[str, str] = {}
        self._binding_counts: dict[str, int] = {}

    def document(self, bindings: Sequence[HttpBinding], title: str, version: str) -> dict[str, Any]:
        """Add every binding, then assemble the document."""
        service_ids = _service_ids(bindings)
        for binding in bindings:
            self._add(binding, service_ids)
        self.schemas.status()
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version},
            "tags": [
                {"name": name, **({"description": text} if text else {})}
                for name, text in self.tags.items()
            ],
            "paths": self.paths,
            "components": {
                "schemas": dict(sorted(self.schemas.components.items())),
                "securitySchemes": {
                    _BEARER: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
                },
            },
        }

    def _add(self, binding: HttpBinding, service_ids: dict[str, str]) -> None:
        # Counted before any skip, so the ids of later bindings never shift.
        index = self._binding_counts.get(binding.route_path, 0)
        self._binding_counts[binding.route_path] = index + 1
        if binding.http_method not in _OPENAPI_METHODS:
            return
        path = self._path_key(binding)
        item = self.paths.setdefault(path, {})
        verb = binding.http_method.lower()
        if verb in item:
            return
        method = binding.method
        service = method.containing_service
        self.tags.setdefault(service.full_name, self.comments.text(service.file, service.full_name))
        operation_id = f"{service_ids[service.full_name]}_{method.name}"
        item[verb] = self._operation(binding, path, operation_id + (f"_{index}" if index else ""))

    def _path_key(self, binding: HttpBinding) -> str:
        # OpenAPI treats /v1/{id} and /v1/{order.id} as the same path, so a path with the
        # shape of an earlier one is filed under the earlier one's parameter names.
        # Dotted names ({role.name}) become role_name: several OpenAPI tools read a dot
        # in a parameter name as a nested lookup and cannot fill the path.
        path = _PARAMETER.sub(
            lambda match: match.group(0).replace(".", "_"), binding.template.openapi_path()
        )
        return self._path_by_shape.setdefault(_PARAMETER.sub("{}", path), path)

    def _operation(self, binding: HttpBinding, path: str, operation_id: str) -> dict[str, Any]:
        method = binding.method
        comment = self.comments.text(method.containing_service.file, method.full_name)
        access, secured = _access(method)
        description = "\n\n".join(part for part in (comment, access) if part)
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [method.containing_service.full_name],
        }
        if comment:
            operation["summary"] = _first_sentence(comment)
        operation["description"] = description
        parameters = self._path_parameters(binding, _PARAMETER.findall(path))
        parameters += self._query_parameters(binding)
        if parameters:
            operation["parameters"] = parameters
        body = self._request_body(binding)
        if body is not None:
            operation["requestBody"] = body
        operation["responses"] = {
            "200": self._response(binding),
            "default": {
                "description": "The error, as a google.rpc.Status.",
                "content": {"application/json": {"schema": {"$ref": _REF + _STATUS}}},
            },
        }
        operation["security"] = [{_BEARER: []}] if secured else []
        if method.GetOptions().deprecated:
            operation["deprecated"] = True
        operation["x-grpc-method"] = binding.route_path
        return operation

    # Parameters -----------------------------------------------------------------------

    def _path_parameters(self, binding: HttpBinding, names: list[str]) -> list[dict[str, Any]]:
        template = binding.template
        variables = {variable.name: variable for variable in template.variables}
        found = []
        for name, own_name in zip(names, template.openapi_parameters(), strict=True):
            variable = variables.get(own_name)
            if variable is None:
                found.append(_wildcard_parameter(name, template, own_name))
                continue
            fields = resolve_field_path(binding.method.input_type, variable.field_path) or []
            schema = _param_schema(fields[-1], self.schemas)
            notes = [self.comments.field(fields[-1])]
            if name != own_name:
                notes.append(f"Sets the request field `{own_name}`.")
            if variable.multi_segment:
                notes.append(_multi_segment_note(variable.pattern))
                if schema.get("type") == "string":
                    schema["pattern"] = _segments_regex(variable.segments)
            elif schema.get("type") == "string":
                schema["minLength"] = 1  # an empty segment matches no route
            found.append(_parameter(name, "path", schema, notes, required=True))
        return found

    def _query_parameters(self, binding: HttpBinding) -> list[dict[str, Any]]:
        if binding.body == "*":
            return []  # http.proto: with body "*" nothing is read from the query
        excluded = {path[0] for path in binding.path_fields}
        if binding.body:
            excluded.add(binding.body)
        request = binding.method.input_type
        fields = [f for f in request.fields if f.name not in excluded]
        return list(self._query_fields(fields, (), (request.full_name,)))

    def _query_fields(
        self, fields: Sequence[FieldDescriptor], prefix: tuple[str, ...], seen: tuple[str, ...]
    ) -> Iterator[dict[str, Any]]:
        for proto_field in fields:
            name = ".".join((*prefix, self.schemas.property_name(proto_field)))
            schema = _query_schema(proto_field, self.schemas)
            if schema is not None:
                yield _query_parameter(name, proto_field, schema, self.comments)
            elif (
                _is_plain_message(proto_field) and _message_type(proto_field).full_name not in seen
            ):
                # A nested message is set field by field with dotted names; a message
                # that contains itself is expanded once, or the list would never end.
                nested = _message_type(proto_field)
                yield from self._query_fields(
                    nested.fields,
                    (*prefix, self.schemas.property_name(proto_field)),
                    (*seen, nested.full_name),
                )

    # Bodies ---------------------------------------------------------------------------

    def _request_body(self, binding: HttpBinding) -> dict[str, Any] | None:
        if not binding.body or binding.http_method not in _BODY_METHODS:
            return None
        request = binding.method.input_type
        omit = _omit_tree(binding.path_fields)
        if binding.body == "*":
            if request.full_name == _HTTP_BODY:
                return _RAW_REQUEST
            schema = self.schemas.message(request, omit)
            required = False
        else:
            target = request.fields_by_name[binding.body]
            if _is_raw(target):
                return _RAW_REQUEST
            schema = self.schemas.field(target, omit.get(binding.body, {}))
            # An empty body reads as {}: fine for a message, not for a list or a scalar.
            required = not _is_json_object(target)
        if binding.client_streaming:
            return _streamed_request(schema)
        return {"required": required, "content": {"application/json": {"schema": schema}}}

    def _response(self, binding: HttpBinding) -> dict[str, Any]:
        output = binding.method.output_type
        if binding.response_body:
            target = output.fields_by_name[binding.response_body]
            raw = _is_raw(target)
            schema = self.schemas.field(target)
        else:
            raw = output.full_name == _HTTP_BODY
            schema = self.schemas.message(output)
        if binding.server_streaming:
            # Streamed HttpBody messages are written as JSON like any other message.
            return self._streamed_response(schema)
        if raw:
            return {"description": "The raw response body.", "content": {"*/*": _RAW}}
        return {"description": "The response.", "content": {"application/json": {"schema": schema}}}

    def _streamed_response(self, item: dict[str, Any]) -> dict[str, Any]:
        self.schemas.stream_error()
        error = {"$ref": _REF + _STREAM_ERROR}
        return {
            "description": (
                "The stream of responses, in the format the Accept header asks for: a JSON "
                "array (the default), NDJSON (one message per line) or Server-Sent Events "
                "(one `data:` event per message). An error after the first message ends the "
                'stream as a last item `{"error": Status}` (an `error` event in SSE).'
            ),
            "content": {
                "application/json": {
                    "schema": {"type": "array", "items": {"anyOf": [item, error]}}
                },
                "application/x-ndjson": {"schema": {"anyOf": [item, error]}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }


def _service_ids(bindings: Sequence[HttpBinding]) -> dict[str, str]:
    """Operation id prefixes: the short service name, the full one where short ones clash."""
    full_names = {binding.method.containing_service.full_name for binding in bindings}
    shorts: dict[str, int] = {}
    for name in full_names:
        short = name.rpartition(".")[2]
        shorts[short] = shorts.get(short, 0) + 1
    ids = {}
    for name in full_names:
        short = name.rpartition(".")[2]
        ids[name] = short if shorts[short] == 1 else name.replace(".", "_")
    return ids


def _streamed_request(item: dict[str, Any]) -> dict[str, Any]:
    return {
        # No body is a stream of no messages, which is a valid call.
        "required": False,
        "description": (
            "The stream of request messages as NDJSON: one JSON message per line "
            "(a single message may be sent as application/json); none for an empty stream."
        ),
        "content": {
            "application/x-ndjson": {"schema": item},
            "application/json": {"schema": item},
        },
    }


def _first_sentence(text: str) -> str:
    line = text.strip().split("\n", 1)[0]
    end = line.find(". ")
    return line if end < 0 else line[: end + 1]


# Parameters -------------------------------------------------------------------------

_PARAMETER = re.compile(r"\{([^}]*)\}")


def _parameter(
    name: str, where: str, schema: dict[str, Any], notes: list[str], *, required: bool
) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": where, "required": required}
    description = "\n\n".join(note for note in notes if note)
    if description:
        parameter["description"] = description
    parameter["schema"] = schema
    return parameter


def _query_parameter(
    name: str, proto_field: FieldDescriptor, schema: dict[str, Any], comments: _Comments
) -> dict[str, Any]:
    parameter = _parameter(name, "query", schema, [comments.field(proto_field)], required=False)
    if _is_map(proto_field):
        parameter["style"] = "deepObject"  # name[key]=value, as the gateway reads maps
        parameter["explode"] = True
    elif schema.get("type") == "array":
        parameter["style"] = "form"  # repeat the parameter once per element
        parameter["explode"] = True
    if proto_field.GetOptions().deprecated:
        parameter["deprecated"] = True
    return parameter


def _wildcard_parameter(name: str, template: PathTemplate, own_name: str) -> dict[str, Any]:
    # The template names its bare wildcards (those outside variables) left to right.
    variable_names = {variable.name for variable in template.variables}
    wildcard_names = [n for n in template.openapi_parameters() if n not in variable_names]
    covered = {i for variable in template.variables for i in range(variable.start, variable.end)}
    bare = [
        segment
        for index, segment in enumerate(template.segments)
        if index not in covered and segment.kind is not LITERAL
    ]
    multi = bare[wildcard_names.index(own_name)].kind is DOUBLE_WILDCARD
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    note = "Any path segment; not passed to the method."
    if multi:
        schema["pattern"] = "^[^/]+(/[^/]+)*$"
        note = "Any path segments, separated by `/`; not passed to the method."
    return _parameter(name, "path", schema, [note], required=True)


def _multi_segment_note(pattern: str) -> str:
    return (
        f"Matches `{pattern}`: several path segments, so the value contains `/`. "
        "Send the slashes as they are: an encoded slash (`%2F`) stays part of one segment."
    )


def _segments_regex(segments: tuple[Segment, ...]) -> str:
    """A regex for the decoded value of a multi-segment variable, e.g. ``^shelves/[^/]+$``."""
    parts = []
    for index, segment in enumerate(segments):
        separator = "/" if index else ""
        if segment.kind is DOUBLE_WILDCARD:
            # "**" matches zero or more segments.
            parts.append("(?:/[^/]+)*" if index else "(?:[^/]+(?:/[^/]+)*)?")
        elif segment.kind is LITERAL:
            parts.append(separator + re.escape(segment.value))
        else:
            parts.append(separator + "[^/]+")
    return "^" + "".join(parts) + "$"


def _query_schema(proto_field: FieldDescriptor, schemas: _Schemas) -> dict[str, Any] | None:
    """The schema of ``proto_field`` as one query parameter; None when it cannot be one."""
    if _is_map(proto_field):
        key, value = _map_fields(proto_field)
        if _is_message(value):
            return None  # the gateway refuses message map values in the query
        return {
            "type": "object",
            "additionalProperties": _param_schema(value, schemas),
            **_key_constraint(key),
        }
    if _is_message(proto_field) and _text_form(_message_type(proto_field)) is None:
        return None
    element = _param_schema(proto_field, schemas)
    return {"type": "array", "items": element} if proto_field.is_repeated else element


def _param_schema(proto_field: FieldDescriptor, schemas: _Schemas) -> dict[str, Any]:
    """The schema of one value of ``proto_field`` given as text (path or query)."""
    if _is_message(proto_field):
        text = _text_form(_message_type(proto_field))
        assert text is not None, "callers only pass fields that have a text form"
        return text
    if proto_field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return schemas.enum(_enum_type(proto_field))
    # Query text carries no JSON types: a 64-bit integer is just digits here.
    return _constrained(_scalar(proto_field, json_body=False), proto_field)


def _text_form(message: Descriptor) -> dict[str, Any] | None:
    """The schema of a message the gateway accepts as one query value, else None."""
    name = message.full_name
    if name in _STRING_WKT:
        return _STRING_WKT[name]()
    if name in _WRAPPERS:
        return _scalar(message.fields_by_name["value"], json_body=False)
    return None


def _is_plain_message(proto_field: FieldDescriptor) -> bool:
    return (
        _is_message(proto_field)
        and not proto_field.is_repeated
        and _message_type(proto_field).full_name not in _WELL_KNOWN
    )


# Schemas ----------------------------------------------------------------------------

#: Field paths to leave out of a body schema, as a tree: {"order": {"id": {}}}.
_Omit: TypeAlias = dict[str, "_Omit"]


def _omit_tree(paths: Sequence[tuple[str, ...]]) -> _Omit:
    tree: _Omit = {}
    for path in paths:
        node = tree
        for name in path:
            node = node.setdefault(name, {})
    return tree


class _Schemas:
    """Component schemas, each message and enum defined once and referenced."""

    def __init__(self, options: JsonOptions, comments: _Comments) -> None:
        self.options = options
        self.comments = comments
        self.components: dict[str, dict[str, Any]] = {}

    def property_name(self, proto_field: FieldDescriptor) -> str:
        """The field's JSON name as the gateway writes it (either is read)."""
        return proto_field.name if self.options.proto_names else proto_field.json_name

    def message(self, message: Descriptor, omit: _Omit | None = None) -> dict[str, Any]:
        """A reference to ``message``, or an inline schema of it without the ``omit`` fields."""
        well_known = _well_known(message)
        if well_known is not None:
            return well_known
        if omit:
            return self._object(message, omit)
        name = message.full_name
        if name not in self.components:
            self.components[name] = {}  # taken first: a message may contain itself
            self.components[name] = self._object(message, {})
        return {"$ref": _REF + name}

    def enum(self, enum: EnumDescriptor) -> dict[str, Any]:
        """A reference to ``enum``'s schema: its value names."""
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        if enum.full_name not in self.components:
            self.components[enum.full_name] = self._enum(enum)
        return {"$ref": _REF + enum.full_name}

    def field(self, proto_field: FieldDescriptor, omit: _Omit | None = None) -> dict[str, Any]:
        """The schema of ``proto_field``'s JSON value (a map, list or single value)."""
        if _is_map(proto_field):
            key, value = _map_fields(proto_field)
            return {
                "type": "object",
                "additionalProperties": _constrained(self._single(value, None), proto_field),
                **_key_constraint(key),
                **list_constraints(proto_field, is_map=True),
            }
        if proto_field.is_repeated:
            return {
                "type": "array",
                "items": _constrained(self._single(proto_field, None), proto_field),
                **list_constraints(proto_field, is_map=False),
            }
        return _constrained(self._single(proto_field, omit), proto_field)

    def status(self) -> None:
        """Define ``google.rpc.Status``, the error body of every operation."""
        self.message(status_pb2.Status.DESCRIPTOR)
        self.components[_STATUS]["description"] = (
            "An error: the gRPC status code (google.rpc.Code), a message for developers "
            "and details such as google.rpc.BadRequest, each with its `@type`."
        )

    def stream_error(self) -> None:
        """Define the last item of a stream that failed after it started."""
        self.status()
        self.components[_STREAM_ERROR] = {
            "type": "object",
            "description": "Ends a response stream that failed after its first message.",
            "properties": {"error": {"$ref": _REF + _STATUS}},
            "required": ["error"],
        }

    def _single(self, proto_field: FieldDescriptor, omit: _Omit | None) -> dict[str, Any]:
        if _is_message(proto_field):
            return self.message(_message_type(proto_field), omit)
        if proto_field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
            return self.enum(_enum_type(proto_field))
        return _scalar(proto_field, json_body=True)

    def _object(self, message: Descriptor, omit: _Omit) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        exclusive = _oneof_notes(message, self.property_name)
        for proto_field in message.fields:
            below = omit.get(proto_field.name)
            if below == {}:
                continue  # bound by the path
            schema = self.field(proto_field, below)
            notes = [self.comments.field(proto_field), exclusive.get(proto_field.name, "")]
            properties[self.property_name(proto_field)] = _annotate(schema, proto_field, notes)
        result: dict[str, Any] = {"type": "object"}
        description = self.comments.text(message.file, message.full_name)
        if description:
            result["description"] = description
        result["properties"] = properties
        required = [
            self.property_name(f)
            for f in message.fields
            if is_required(f) and self.property_name(f) in properties
        ]
        if required:
            result["required"] = required
        if self.options.reject_unknown_fields:
            result["additionalProperties"] = False
        rules = _oneof_rules(message, self.property_name, set(properties))
        if rules:
            result["allOf"] = rules
        return result

    def _enum(self, enum: EnumDescriptor) -> dict[str, Any]:
        lines = [self.comments.text(enum.file, enum.full_name)]
        values = []
        for value in enum.values:
            text = self.comments.text(enum.file, f"{enum.full_name}.{value.name}")
            values.append(f"- `{value.name}`" + (f": {text}" if text else ""))
        lines.append("\n".join(values))
        lines.append("The value number is accepted on input as well.")
        return {
            "type": "string",
            "description": "\n\n".join(line for line in lines if line),
            "enum": [value.name for value in enum.values],
        }


def _constrained(schema: dict[str, Any], proto_field: FieldDescriptor) -> dict[str, Any]:
    """``schema`` with the field's rules on one value (never on a shared $ref)."""
    constraints = value_constraints(proto_field)
    if not constraints or "$ref" in schema:
        return schema
    if "pattern" in schema and "pattern" in constraints:
        # A 64-bit integer's own pattern keeps strings in range; the rule's bounds
        # (minimum/maximum) say the rest, and JSON Schema has one pattern per schema.
        constraints = {k: v for k, v in constraints.items() if k != "pattern"}
    return {**schema, **constraints}


def _annotate(
    schema: dict[str, Any], proto_field: FieldDescriptor, notes: list[str]
) -> dict[str, Any]:
    annotated = dict(schema)  # never change a shared well-known or scalar schema
    # A well-known type's own description (its format) follows the field's comment.
    description = "\n\n".join(n for n in (*notes, schema.get("description", "")) if n)
    if description:
        annotated["description"] = description
    if proto_field.GetOptions().deprecated:
        annotated["deprecated"] = True
    return annotated


_NameOf: TypeAlias = Callable[[FieldDescriptor], str]


def _oneof_groups(message: Descriptor) -> list[list[FieldDescriptor]]:
    """Real oneofs of ``message`` (proto3 ``optional`` makes one-field synthetic ones)."""
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    optional = {f.name for f in proto.field if f.proto3_optional}
    groups = [list(oneof.fields) for oneof in message.oneofs]
    return [g for g in groups if not (len(g) == 1 and g[0].name in optional)]


def _oneof_notes(message: Descriptor, name_of: _NameOf) -> dict[str, str]:
    notes = {}
    for group in _oneof_groups(message):
        names = ", ".join(f"`{name_of(f)}`" for f in group)
        oneof = group[0].containing_oneof
        label = f"oneof `{oneof.name}`" if oneof is not None else "a oneof"
        for member in group:
            notes[member.name] = f"Part of {label}: set at most one of {names}."
    return notes


def _oneof_rules(message: Descriptor, name_of: _NameOf, present: set[str]) -> list[dict[str, Any]]:
    """``not`` rules forbidding two members of one oneof together (the server refuses it)."""
    rules: list[dict[str, Any]] = []
    for group in _oneof_groups(message):
        names = [name_of(f) for f in group if name_of(f) in present]
        pairs = [
            {"required": [first, second]}
            for index, first in enumerate(names)
            for second in names[index + 1 :]
        ]
        if len(pairs) == 1:
            rules.append({"not": pairs[0]})
        elif pairs:
            rules.append({"not": {"anyOf": pairs}})
    return rules


# Scalars and well-known types -------------------------------------------------------

_INT_LIMITS = {
    FieldDescriptor.CPPTYPE_INT32: ("int32", -(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_UINT32: ("uint32", 0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_INT64: ("int64", -(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT64: ("uint64", 0, 2**64 - 1),
}
_WIDE = frozenset({FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64})
_FLOAT_MAX = 3.4028234663852886e38
# Standard base64 as the server writes it; it also reads the URL-safe alphabet.
_BASE64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def _scalar(proto_field: FieldDescriptor, *, json_body: bool) -> dict[str, Any]:
    """The schema of a scalar field; ``json_body`` for JSON, else for URL text."""
    cpp = proto_field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        if proto_field.type == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64", "pattern": _BASE64}
        return {"type": "string"}
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return {"type": "boolean"}
    if cpp in _INT_LIMITS:
        return _integer(cpp, json_body=json_body)
    return _floating(cpp == FieldDescriptor.CPPTYPE_FLOAT, json_body=json_body)


def _integer(cpp: int, *, json_body: bool) -> dict[str, Any]:
    name, low, high = _INT_LIMITS[cpp]
    if cpp in _WIDE and json_body:
        # proto3 JSON writes 64-bit integers as strings (JavaScript numbers lose
        # precision) and reads strings or numbers; the pattern keeps strings in range.
        return {
            "type": ["string", "integer"],
            "format": name,
            "pattern": _integer_regex(low, high),
            "minimum": low,
            "maximum": high,
        }
    return {"type": "integer", "format": name, "minimum": low, "maximum": high}


def _floating(single: bool, *, json_body: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number", "format": "float" if single else "double"}
    if json_body:
        # Non-finite values have no JSON number: proto3 JSON spells them as strings.
        schema["type"] = ["number", "string"]
        schema["pattern"] = "^(?:NaN|-?Infinity)$"
    if single:
        schema["minimum"], schema["maximum"] = -_FLOAT_MAX, _FLOAT_MAX
    return schema


def _integer_regex(low: int, high: int) -> str:
    """A regex for decimal integers from ``low`` (0 or negative) to ``high``."""
    positive = _at_most(high)
    if low == 0:
        return f"^{positive}$"
    return f"^(?:-?{positive}|{low})$" if -low == high + 1 else f"^-?{positive}$"


def _at_most(limit: int) -> str:
    """A regex for the decimal numbers 0 to ``limit``, without leading zeros."""
    digits = str(limit)
    choices = ["0"]
    if len(digits) > 1:
        choices.append(f"[1-9][0-9]{{0,{len(digits) - 2}}}")
    for index, digit in enumerate(digits):
        low, high = (1 if index == 0 else 0), int(digit) - 1
        if high < low:
            continue
        rest = len(digits) - index - 1
        choice = str(low) if low == high else f"[{low}-{high}]"
        choices.append(digits[:index] + choice + (f"[0-9]{{{rest}}}" if rest else ""))
    choices.append(digits)
    return "(?:" + "|".join(dict.fromkeys(choices)) + ")"


def _timestamp() -> dict[str, Any]:
    return {
        "type": "string",
        "format": "date-time",
        # The parser needs the upper-case T and Z and at most nanoseconds.
        "pattern": (
            "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
            "(?:\\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})$"
        ),
        "description": "RFC 3339 time from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.",
    }


def _duration() -> dict[str, Any]:
    # Eleven digits of seconds keep within the 10,000-year limit of Duration.
    return {
        "type": "string",
        "pattern": "^-?[0-9]{1,11}(?:\\.[0-9]{1,9})?s$",
        "description": 'Seconds with up to nine fractional digits and an "s", e.g. "1.5s".',
    }


def _field_mask() -> dict[str, Any]:
    # No pattern: the parser takes any text without "_" and the server echoes what it got.
    return {
        "type": "string",
        "description": 'Comma-separated field paths in lowerCamel, e.g. "note,items".',
    }


_STRING_WKT = {
    "google.protobuf.Timestamp": _timestamp,
    "google.protobuf.Duration": _duration,
    "google.protobuf.FieldMask": _field_mask,
}
_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_OTHER_WKT: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object", "description": "Any JSON object."},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "description": "Any JSON array."},
    "google.protobuf.Empty": {"type": "object", "maxProperties": 0},
    "google.protobuf.Any": {
        "type": "object",
        "description": "A message of any type named by `@type`, with that type's fields.",
        "properties": {
            "@type": {
                "type": "string",
                "description": 'The type URL, e.g. "type.googleapis.com/google.rpc.BadRequest".',
            }
        },
        "required": ["@type"],
    },
}
_WELL_KNOWN = frozenset({*_STRING_WKT, *_WRAPPERS, *_OTHER_WKT})


def _well_known(message: Descriptor) -> dict[str, Any] | None:
    """The JSON form of a well-known type, inline (it is small), or None."""
    name = message.full_name
    if name in _STRING_WKT:
        return _STRING_WKT[name]()
    if name in _WRAPPERS:
        schema = _scalar(message.fields_by_name["value"], json_body=True)
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        # A wrapper exists to tell "unset" (null, or left out) from the default value.
        return {**schema, "type": [*types, "null"]}
    if name in _OTHER_WKT:
        return dict(_OTHER_WKT[name])
    return None


def _key_constraint(key: FieldDescriptor) -> dict[str, Any]:
    """``propertyNames`` for map keys that are not strings: JSON keys are always text."""
    cpp = key.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return {"propertyNames": {"enum": ["true", "false"]}}
    if cpp in _INT_LIMITS:
        _name, low, high = _INT_LIMITS[cpp]
        return {"propertyNames": {"pattern": _integer_regex(low, high)}}
    return {}


def _is_message(proto_field: FieldDescriptor) -> bool:
    return proto_field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE


def _is_map(proto_field: FieldDescriptor) -> bool:
    return (
        _is_message(proto_field)
        and proto_field.is_repeated
        and _message_type(proto_field).GetOptions().map_entry
    )


def _message_type(proto_field: FieldDescriptor) -> Descriptor:
    message = proto_field.message_type
    assert message is not None, f"{proto_field.full_name} is not a message field"
    return message


def _enum_type(proto_field: FieldDescriptor) -> EnumDescriptor:
    enum = proto_field.enum_type
    assert enum is not None, f"{proto_field.full_name} is not an enum field"
    return enum


def _is_json_object(proto_field: FieldDescriptor) -> bool:
    """The field's JSON value is an object (a message that is not a scalar-like WKT)."""
    if not _is_message(proto_field) or proto_field.is_repeated:
        return False
    name = _message_type(proto_field).full_name
    return name not in _STRING_WKT and name not in _WRAPPERS


def _is_raw(proto_field: FieldDescriptor) -> bool:
    """A google.api.HttpBody field: its bytes are the HTTP body."""
    return (
        _is_message(proto_field)
        and not proto_field.is_repeated
        and _message_type(proto_field).full_name == _HTTP_BODY
    )


def _map_fields(proto_field: FieldDescriptor) -> tuple[FieldDescriptor, FieldDescriptor]:
    entry = _message_type(proto_field)
    return entry.fields_by_name["key"], entry.fields_by_name["value"]


# Security ---------------------------------------------------------------------------


def _access(method: MethodDescriptor) -> tuple[str, bool]:
    """A sentence on who may call ``method``, and whether it needs a bearer token.

    Read from the policy the host enforces (nexus_grpc.access.policy.effective_policy), so the
    document cannot disagree with it: health and reflection are public because the
    host makes them so, whatever their contracts say.
    """
    policy = effective_policy(method)
    if policy.access == Access.PUBLIC:
        return "Access: public, no credentials needed.", False
    if policy.access == Access.AUTHENTICATED:
        return "Access: any caller with a valid bearer token.", True
    if policy.access == Access.PERMISSION:
        grant = f"`{policy.permission}` (SCOPE_{policy.scope.name})"
        return f"Access: a bearer token whose roles grant {grant}.", True
    return "Access: the contract states no access rule, so the host denies every call.", True


# Comments ---------------------------------------------------------------------------


class _Comments:
    """Leading comments of contract elements, by full name, read from descriptor sets.

    ``nexus gen`` writes one set per contract folder, beside the generated modules: for
    a file ``a/b/c.proto`` the set is looked up beside its module (``a.b.c_pb2`` in
    ``<root>/a/b/c_pb2.py`` -> ``<root>/a/b/nexus_descriptors.binpb``), then in
    ``a/b/`` under every ``sys.path`` folder. Any failure just means no descriptions.
    """

    def __init__(self) -> None:
        self._files: dict[str, dict[str, str]] = {}

    def text(self, file: FileDescriptor, full_name: str) -> str:
        """The comment of the element ``full_name`` declared in ``file``, or ""."""
        comments = self._files.get(file.name)
        if comments is None:
            comments = self._files[file.name] = self._find(file.name)
        return comments.get(full_name, "")

    def field(self, proto_field: FieldDescriptor) -> str:
        """The comment of ``proto_field``, or ""."""
        owner = proto_field.containing_type
        return self.text(owner.file, proto_field.full_name) if owner is not None else ""

    def _find(self, file_name: str) -> dict[str, str]:
        for candidate in _candidates(file_name):
            found = _read_set(candidate).get(file_name)
            if found is not None:
                return found
        return {}


def _candidates(file_name: str) -> Iterator[Path]:
    beside = _set_beside_module(file_name)
    if beside is not None:
        yield beside
    folder = PurePosixPath(file_name).parent
    for entry in sys.path:
        if entry:
            candidate = Path(entry, folder, DESCRIPTOR_SET_NAME)
            if candidate.is_file():
                yield candidate


def _set_beside_module(file_name: str) -> Path | None:
    module_name = file_name.removesuffix(".proto").replace("-", "_").replace("/", ".") + "_pb2"
    module_file = getattr(sys.modules.get(module_name), "__file__", None)
    if not module_file:
        return None
    candidate = Path(module_file).resolve().parent / DESCRIPTOR_SET_NAME
    return candidate if candidate.is_file() else None


def _read_set(path: Path) -> dict[str, dict[str, str]]:
    try:
        stat = path.stat()
    except OSError:
        return {}
    # Keyed by size and time too, so a regenerated set is read again.
    return _parse_set(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _parse_set(path: str, _mtime: int, _size: int) -> dict[str, dict[str, str]]:
    try:
        data = Path(path).read_bytes()
        files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    except (OSError, DecodeError):
        return {}
    return {file.name: _index_file(file) for file in files}


def _index_file(file: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    """Comments of one file by element full name (enum values as ``Enum.VALUE``)."""
    by_path = {}
    for location in file.source_code_info.location:
        text = _clean(location.leading_comments or location.trailing_comments)
        if text:
            by_path[tuple(location.path)] = text
    names: dict[tuple[int, ...], str] = {}
    package = f"{file.package}." if file.package else ""
    for index, message in enumerate(file.message_type):
        _name_message(message, package, (4, index), names)
    for index, enum in enumerate(file.enum_type):
        _name_enum(enum, package, (5, index), names)
    for index, service in enumerate(file.service):
        names[(6, index)] = package + service.name
        for number, method in enumerate(service.method):
            names[(6, index, 2, number)] = f"{package}{service.name}.{method.name}"
    return {names[path]: text for path, text in by_path.items() if path in names}


# Field numbers of DescriptorProto / EnumDescriptorProto, as source-info paths use them.
_FIELD, _NESTED, _ENUM, _VALUE = 2, 3, 4, 2


def _name_message(
    message: descriptor_pb2.DescriptorProto,
    scope: str,
    path: tuple[int, ...],
    names: dict[tuple[int, ...], str],
) -> None:
    full = scope + message.name
    names[path] = full
    for index, proto_field in enumerate(message.field):
        names[(*path, _FIELD, index)] = f"{full}.{proto_field.name}"
    for index, nested in enumerate(message.nested_type):
        _name_message(nested, f"{full}.", (*path, _NESTED, index), names)
    for index, enum in enumerate(message.enum_type):
        _name_enum(enum, f"{full}.", (*path, _ENUM, index), names)


def _name_enum(
    enum: descriptor_pb2.EnumDescriptorProto,
    scope: str,
    path: tuple[int, ...],
    names: dict[tuple[int, ...], str],
) -> None:
    full = scope + enum.name
    names[path] = full
    for index, value in enumerate(enum.value):
        names[(*path, _VALUE, index)] = f"{full}.{value.name}"


def _clean(comment: str) -> str:
    # protoc keeps the space after "//" and the line breaks; drop that one space.
    lines = [line[1:] if line.startswith(" ") else line for line in comment.split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip("\n")
