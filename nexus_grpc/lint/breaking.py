"""buf's ``WIRE_JSON`` breaking rules, checked in Python on two sets of descriptors.

The host checks a contract upgrade against the running version where buf is not
installed (the container image has no buf). These are buf's rules of the category,
read from its source (``bufcheckserverhandle/breaking.go``), pairing elements the
way buf does: files by name, messages, enums and services by full name (map entry
messages included), fields by number, enum values by number, methods by name.

- a deleted field or enum value needs both its number and its name reserved;
- reserved ranges and names are never removed;
- a field keeps its name, JSON name, oneof (proto3 ``optional`` is no oneof), a
  wire- and JSON-compatible type (``int32``/``uint32`` and ``int64``/``uint64`` are
  the only pairs of different scalars; an enum may become another enum of the same
  short name holding every old value) and cardinality (explicit and implicit presence
  are one; repeated, map and proto2 ``required`` are each their own), and its proto2
  default;
- required fields are neither added nor removed;
- an enum value number keeps its names (an alias may come, none may go);
- a message or enum keeps its JSON format (proto2 and ``features.json_format``);
- a method keeps its request and response types, streaming and idempotency level;
- a file keeps its package.

Extensions are paired by the message they extend and their number, and checked as
fields (their name is their full name). Two rules are added to the category, as
:data:`nexus_grpc.plugins.upgrade.UPGRADE_RULES` asks of buf: no deleted methods
(``RPC_NO_DELETE``) and no deleted services (``PACKAGE_SERVICE_NO_DELETE``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    ServiceDescriptor,
)

__all__ = ["wire_json_breaking"]

_T = FieldDescriptor
#: Wire- and JSON-compatible groups of field types (buf's fieldKindToWireJSONCompatibilityGroup).
_TYPE_GROUP = {
    _T.TYPE_INT32: 1,
    _T.TYPE_UINT32: 1,
    _T.TYPE_INT64: 2,
    _T.TYPE_UINT64: 2,
    _T.TYPE_FIXED32: 3,
    _T.TYPE_SFIXED32: 3,
    _T.TYPE_FIXED64: 4,
    _T.TYPE_SFIXED64: 4,
    _T.TYPE_BOOL: 5,
    _T.TYPE_SINT32: 6,
    _T.TYPE_SINT64: 7,
    _T.TYPE_STRING: 8,
    _T.TYPE_BYTES: 9,
    _T.TYPE_DOUBLE: 10,
    _T.TYPE_FLOAT: 11,
    _T.TYPE_GROUP: 12,
    _T.TYPE_MESSAGE: 13,
    _T.TYPE_ENUM: 14,
}
_TYPE_NAMES: dict[int, str] = {
    int(number): name.removeprefix("TYPE_").lower()
    for name, number in descriptor_pb2.FieldDescriptorProto.Type.items()
}
_ALLOW = descriptor_pb2.FeatureSet.JsonFormat.ALLOW
_LEGACY = descriptor_pb2.FeatureSet.JsonFormat.LEGACY_BEST_EFFORT


@dataclass
class _Index:
    files: dict[str, FileDescriptor] = field(default_factory=dict)
    services: dict[str, ServiceDescriptor] = field(default_factory=dict)
    messages: dict[str, Descriptor] = field(default_factory=dict)
    enums: dict[str, EnumDescriptor] = field(default_factory=dict)
    #: (extended message, number) → the extension and the file declaring it.
    extensions: dict[tuple[str, int], tuple[FieldDescriptor, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, files: Iterable[FileDescriptor]) -> _Index:
        index = cls()
        for file in files:
            index.files[file.name] = file
            index.services.update((s.full_name, s) for s in file.services_by_name.values())
            index.enums.update((e.full_name, e) for e in file.enum_types_by_name.values())
            index.add_extensions(file.extensions_by_name.values(), file.name)
            for message in _all_messages(file.message_types_by_name.values()):
                index.messages[message.full_name] = message
                index.enums.update((e.full_name, e) for e in message.enum_types)
                index.add_extensions(message.extensions, file.name)
        return index

    def add_extensions(self, extensions: Iterable[FieldDescriptor], file_name: str) -> None:
        for extension in extensions:
            extended = extension.containing_type
            assert extended is not None  # an extension always extends a message
            self.extensions[(extended.full_name, extension.number)] = (extension, file_name)


def wire_json_breaking(
    old_files: Iterable[FileDescriptor], new_files: Iterable[FileDescriptor]
) -> list[str]:
    """What ``new_files`` breaks for clients of ``old_files``, one line per change,
    each ``file: message``; empty when the upgrade is compatible."""
    old, new = _Index.of(old_files), _Index.of(new_files)
    changes: list[str] = []
    for name, file in old.files.items():
        now = new.files.get(name)
        if now is not None and file.package != now.package:
            changes.append(f'{name}: package changed from "{file.package}" to "{now.package}"')
    for name, service in old.services.items():
        new_service = new.services.get(name)
        if new_service is None:
            changes.append(f'{service.file.name}: service "{name}" was deleted')
        else:
            changes.extend(_method_changes(service, new_service))
    for name, message in old.messages.items():
        if (new_message := new.messages.get(name)) is not None:
            changes.extend(_message_changes(message, new_message))
    for name, enum in old.enums.items():
        if (new_enum := new.enums.get(name)) is not None:
            changes.extend(_enum_changes(enum, new_enum))
    for key, (extension, _) in old.extensions.items():
        if key in new.extensions:
            new_extension, where = new.extensions[key]
            label = f'extension "{key[1]}" ("{extension.full_name}") of message "{key[0]}"'
            changes.extend(
                f"{where}: {label} {change}" for change in _field_changes(extension, new_extension)
            )
    return changes


def _all_messages(messages: Iterable[Descriptor]) -> Iterator[Descriptor]:
    # Map entries too: buf pairs them by name, so a map's key or value type is
    # compared as a field of its entry.
    for message in messages:
        yield message
        yield from _all_messages(message.nested_types)


# ---------------------------------------------------------------------------- services


def _method_changes(old: ServiceDescriptor, new: ServiceDescriptor) -> Iterator[str]:
    where = new.file.name
    for method in old.methods:
        now = new.methods_by_name.get(method.name)
        rpc = f'RPC "{method.name}" on service "{old.full_name}"'
        if now is None:
            yield f"{where}: {rpc} was deleted"
            continue
        for what, before, after in (
            ("request type", method.input_type.full_name, now.input_type.full_name),
            ("response type", method.output_type.full_name, now.output_type.full_name),
            ("client streaming", method.client_streaming, now.client_streaming),
            ("server streaming", method.server_streaming, now.server_streaming),
            (
                "idempotency level",
                method.GetOptions().idempotency_level,
                now.GetOptions().idempotency_level,
            ),
        ):
            if before != after:
                yield f'{where}: {rpc} changed {what} from "{before}" to "{after}"'


# ---------------------------------------------------------------------------- messages


def _message_changes(old: Descriptor, new: Descriptor) -> Iterator[str]:
    where = new.file.name
    what = f'message "{old.full_name}"'
    old_proto, new_proto = _message_proto(old), _message_proto(new)
    yield from _reserved_changes(
        where,
        what,
        [(r.start, r.end - 1) for r in old_proto.reserved_range],  # end exclusive
        [(r.start, r.end - 1) for r in new_proto.reserved_range],
        old_proto.reserved_name,
        new_proto.reserved_name,
    )
    if _json_format(old) == _ALLOW and _json_format(new) != _ALLOW:
        yield f"{where}: {what} no longer allows JSON (features.json_format)"
    reserved_numbers = [range(r.start, r.end) for r in new_proto.reserved_range]
    old_required = {f.number for f in old.fields if f.is_required}
    new_required = {f.number for f in new.fields if f.is_required}
    for number in sorted(old_required ^ new_required):
        verb = "deleted" if number in old_required else "added"
        yield f'{where}: {what} had required field "{number}" {verb}'
    optional = (_proto3_optional(old_proto), _proto3_optional(new_proto))
    for old_field in old.fields:
        label = f'field "{old_field.number}" ("{old_field.name}") of {what}'
        now = new.fields_by_number.get(old_field.number)
        if now is None:
            missing = []
            if not any(old_field.number in span for span in reserved_numbers):
                missing.append(f'the number "{old_field.number}"')
            if old_field.name not in new_proto.reserved_name:
                missing.append(f'the name "{old_field.name}"')
            if missing:
                yield f"{where}: {label} was deleted without reserving {' and '.join(missing)}"
            continue
        yield from (f"{where}: {label} {change}" for change in _field_changes(old_field, now))
        yield from (
            f"{where}: {label} {change}" for change in _oneof_changes(old_field, now, optional)
        )


def _field_changes(old: FieldDescriptor, new: FieldDescriptor) -> Iterator[str]:
    if _TYPE_GROUP[old.type] != _TYPE_GROUP[new.type]:
        yield f'changed type from "{_TYPE_NAMES[old.type]}" to "{_TYPE_NAMES[new.type]}"'
    elif old.message_type is not None and new.message_type is not None:
        if old.message_type.full_name != new.message_type.full_name:
            yield (
                f'changed type from "{old.message_type.full_name}" to '
                f'"{new.message_type.full_name}"'
            )
    elif (
        old.enum_type is not None
        and new.enum_type is not None
        and old.enum_type.full_name != new.enum_type.full_name
        and not _enum_compatible(old.enum_type, new.enum_type)
    ):
        yield f'changed type from "{old.enum_type.full_name}" to "{new.enum_type.full_name}"'
    # Map entries are generated: their fields' presence says nothing (buf skips them).
    in_map_entry = _in_map_entry(old) and _in_map_entry(new)
    before, after = _cardinality(old), _cardinality(new)
    if not in_map_entry and before != after:
        yield f'changed cardinality from "{before}" to "{after}"'
    if old.is_extension:
        # An extension is named by its full name, and has no JSON name of its own.
        if old.full_name != new.full_name:
            yield f'changed name to "{new.full_name}"'
    elif old.name != new.name:
        yield f'changed name to "{new.name}"'
    if not old.is_extension and old.json_name != new.json_name:
        yield f'changed option "json_name" from "{old.json_name}" to "{new.json_name}"'
    if not _same_default(old, new):
        yield f'changed default value from "{old.default_value!r}" to "{new.default_value!r}"'


def _in_map_entry(field_descriptor: FieldDescriptor) -> bool:
    message = field_descriptor.containing_type
    return message is not None and bool(message.GetOptions().map_entry)


def _enum_compatible(old: EnumDescriptor, new: EnumDescriptor) -> bool:
    """buf accepts another enum of the same short name holding every old value."""
    if old.name != new.name:
        return False
    return all(
        name in new.values_by_name and new.values_by_name[name].number == value.number
        for name, value in old.values_by_name.items()
    )


def _cardinality(field_descriptor: FieldDescriptor) -> str:
    message = field_descriptor.message_type
    if message is not None and message.GetOptions().map_entry and field_descriptor.is_repeated:
        return "map"
    if field_descriptor.is_repeated:
        return "repeated"
    if field_descriptor.is_required:
        return "required"
    return "optional"  # explicit and implicit presence: the same on the wire and in JSON


def _proto3_optional(message: descriptor_pb2.DescriptorProto) -> set[str]:
    return {f.name for f in message.field if f.proto3_optional}


def _oneof_changes(
    old: FieldDescriptor, new: FieldDescriptor, optional: tuple[set[str], set[str]]
) -> Iterator[str]:
    # A proto3 `optional` field sits in a synthetic oneof: not a oneof for this rule.
    old_oneof = old.containing_oneof if old.name not in optional[0] else None
    new_oneof = new.containing_oneof if new.name not in optional[1] else None
    if old_oneof is None and new_oneof is None:
        return
    if old_oneof is not None and new_oneof is not None:
        if old_oneof.name != new_oneof.name:
            yield f'moved from oneof "{old_oneof.name}" to oneof "{new_oneof.name}"'
        return
    yield "moved into a oneof" if new_oneof is not None else "moved out of a oneof"


def _same_default(old: FieldDescriptor, new: FieldDescriptor) -> bool:
    """Whether the proto2 defaults agree (proto3 has none: its zero values always do)."""
    if any(f.is_repeated or f.message_type is not None for f in (old, new)):
        return True
    before, after = _default(old), _default(new)
    if {old.type, new.type} == {_T.TYPE_FLOAT, _T.TYPE_DOUBLE}:
        # float and double compare at float's precision, as buf does.
        before, after = _float32(before), _float32(after)
    return before == after


def _default(field_descriptor: FieldDescriptor) -> object:
    # Strings and bytes compare as text, numbers, bools and enums as numbers; the
    # zero value stands for "none".
    value = field_descriptor.default_value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value or None
    return value if value else None


def _float32(value: object) -> object:
    if isinstance(value, float | int):
        return struct.unpack("f", struct.pack("f", float(value)))[0]
    return value


# ---------------------------------------------------------------------------- enums


def _enum_changes(old: EnumDescriptor, new: EnumDescriptor) -> Iterator[str]:
    where = new.file.name
    what = f'enum "{old.full_name}"'
    old_proto, new_proto = _enum_proto(old), _enum_proto(new)
    yield from _reserved_changes(
        where,
        what,
        [(r.start, r.end) for r in old_proto.reserved_range],  # end inclusive
        [(r.start, r.end) for r in new_proto.reserved_range],
        old_proto.reserved_name,
        new_proto.reserved_name,
    )
    if _json_format(old) == _ALLOW and _json_format(new) != _ALLOW:
        yield f"{where}: {what} no longer allows JSON (features.json_format)"
    reserved = [range(r.start, r.end + 1) for r in new_proto.reserved_range]
    new_names = _names_by_number(new)
    for number, names in _names_by_number(old).items():
        now = new_names.get(number)
        if now is None:
            missing = []
            if not any(number in span for span in reserved):
                missing.append(f'the number "{number}"')
            unreserved = [n for n in names if n not in new_proto.reserved_name]
            if unreserved:
                missing.append("the name " + ", ".join(f'"{n}"' for n in unreserved))
            if missing:
                yield (
                    f'{where}: value "{number}" of {what} was deleted without reserving '
                    + " and ".join(missing)
                )
        elif not names <= now:  # an alias may come, none may go
            yield (
                f'{where}: value "{number}" of {what} changed name from '
                f"{', '.join(sorted(names))} to {', '.join(sorted(now))}"
            )


def _names_by_number(enum: EnumDescriptor) -> dict[int, set[str]]:
    names: dict[int, set[str]] = {}
    for value in enum.values:
        names.setdefault(value.number, set()).add(value.name)
    return names


# ---------------------------------------------------------------------------- shared


def _message_proto(message: Descriptor) -> descriptor_pb2.DescriptorProto:
    # Reserved ranges and names, and proto3_optional, are only on the protos.
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    return proto


def _enum_proto(enum: EnumDescriptor) -> descriptor_pb2.EnumDescriptorProto:
    proto = descriptor_pb2.EnumDescriptorProto()
    enum.CopyToProto(proto)
    return proto


def _reserved_changes(
    where: str,
    what: str,
    old_ranges: list[tuple[int, int]],
    new_ranges: list[tuple[int, int]],
    old_names: Iterable[str],
    new_names: Iterable[str],
) -> Iterator[str]:
    """Reserved numbers (inclusive ranges) and names of ``old`` that ``new`` dropped."""
    for start, end in old_ranges:
        covered = [(max(s, start), min(e, end)) for s, e in new_ranges if s <= end and e >= start]
        if sum(e - s + 1 for s, e in _merged(covered)) < end - start + 1:
            yield f'{where}: reserved range "{start} to {end}" of {what} lost numbers'
    kept = set(new_names)
    for name in old_names:
        if name not in kept:
            yield f'{where}: reserved name "{name}" of {what} was deleted'


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _json_format(descriptor: Descriptor | EnumDescriptor) -> int:
    """The resolved ``features.json_format``: set on the type, a parent, or its file,
    else the syntax's default (proto2: legacy best effort; proto3, editions: allow)."""
    # Descriptors' GetOptions() leave features out; their protos keep them.
    scope: Descriptor | EnumDescriptor | None = descriptor
    while scope is not None:
        proto = _message_proto(scope) if isinstance(scope, Descriptor) else _enum_proto(scope)
        if proto.options.features.HasField("json_format"):
            return int(proto.options.features.json_format)
        scope = scope.containing_type
    file_proto = descriptor_pb2.FileDescriptorProto()
    descriptor.file.CopyToProto(file_proto)
    if file_proto.options.features.HasField("json_format"):
        return int(file_proto.options.features.json_format)
    return int(_LEGACY if file_proto.syntax in ("", "proto2") else _ALLOW)
