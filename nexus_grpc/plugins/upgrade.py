"""Whether a contract upgrade breaks the clients of the running version.

A plugin upgraded in a running host keeps its clients: stubs generated from the old
contract, REST callers of the old JSON. :func:`check_upgrade` lists what the new
contract breaks for them, so the upgrade can be refused unless forced. The rules are
buf's ``WIRE_JSON`` category (field numbers, types, cardinality, JSON names, enum
values) plus the deletion of services and methods, which wire rules allow but which
leaves callers of the deleted method with ``UNIMPLEMENTED``.

buf runs on images of the two versions (:func:`~nexus_grpc.lint.buf.breaking_between_images`).
Where buf is not installed, a built-in check covers the same ground for the common
changes: deleted services, methods and fields (without ``reserved``), a changed field
type, cardinality, name or JSON name, a changed method request, response or
streaming, a deleted enum value. It is narrower than buf (no oneof moves, no
``json_name`` collisions, no file options); ``UpgradeCheck.checker`` says which ran.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    ServiceDescriptor,
)

from nexus_grpc.lint.buf import BufError, breaking_between_images, find_buf
from nexus_grpc.plugins.generations import file_set

__all__ = ["UPGRADE_RULES", "UpgradeCheck", "check_upgrade", "run_upgrade_check"]

_log = logging.getLogger("nexus.plugins")

#: The buf.yaml ``breaking`` section an upgrade is checked with.
UPGRADE_RULES: Mapping[str, object] = {
    "use": ["WIRE_JSON", "RPC_NO_DELETE", "PACKAGE_SERVICE_NO_DELETE"],
}


@dataclass(frozen=True)
class UpgradeCheck:
    """The breaking changes found, and which checker found them ("buf" or "built-in")."""

    changes: list[str] = field(default_factory=list)
    checker: str = "buf"


def check_upgrade(
    old_files: Sequence[FileDescriptor], new_files: Sequence[FileDescriptor]
) -> list[str]:
    """The changes in ``new_files`` that break clients of ``old_files``; empty when none.

    Both are the contract's own files (their imports are taken along). buf decides
    when installed, else the built-in check (logged once per call).
    """
    return run_upgrade_check(old_files, new_files).changes


def run_upgrade_check(
    old_files: Sequence[FileDescriptor],
    new_files: Sequence[FileDescriptor],
    *,
    use_buf: bool | None = None,
) -> UpgradeCheck:
    """:func:`check_upgrade` saying which checker ran; ``use_buf`` forces one (None: buf
    when installed). BufError when buf is asked for and cannot run."""
    if use_buf is None:
        try:
            find_buf()
            use_buf = True
        except BufError:
            _log.warning(
                "buf is not installed: contract upgrades are checked with the built-in "
                "rules (deleted services, methods and fields, changed types); "
                "pip install buf-bin for buf's WIRE_JSON rules"
            )
            use_buf = False
    if use_buf:
        changes = breaking_between_images(
            file_set(new_files).SerializeToString(),
            file_set(old_files).SerializeToString(),
            dict(UPGRADE_RULES),
        )
        return UpgradeCheck(sorted(changes), "buf")
    return UpgradeCheck(sorted(_built_in(old_files, new_files)), "built-in")


def _built_in(
    old_files: Iterable[FileDescriptor], new_files: Iterable[FileDescriptor]
) -> list[str]:
    old_services, old_messages, old_enums = _index(old_files)
    new_services, new_messages, new_enums = _index(new_files)
    changes: list[str] = []
    for name, service in old_services.items():
        new_service = new_services.get(name)
        if new_service is None:
            changes.append(f"{service.file.name}: service {name} was deleted")
            continue
        changes.extend(_method_changes(service, new_service))
    for name, message in old_messages.items():
        new_message = new_messages.get(name)
        if new_message is not None:
            changes.extend(_field_changes(message, new_message))
    for name, enum in old_enums.items():
        new_enum = new_enums.get(name)
        if new_enum is None:
            continue
        reserved = _reserved(new_enum)
        for value in enum.values:
            if value.number in new_enum.values_by_number:
                continue
            if not any(value.number in span for span in reserved):
                changes.append(
                    f"{new_enum.file.name}: value {value.number} ({value.name}) of enum {name} "
                    "was deleted without reserving it"
                )
    return changes


def _index(
    files: Iterable[FileDescriptor],
) -> tuple[dict[str, ServiceDescriptor], dict[str, Descriptor], dict[str, EnumDescriptor]]:
    services: dict[str, ServiceDescriptor] = {}
    messages: dict[str, Descriptor] = {}
    enums: dict[str, EnumDescriptor] = {}
    for file in files:
        services.update((s.full_name, s) for s in file.services_by_name.values())
        enums.update((e.full_name, e) for e in file.enum_types_by_name.values())
        for message in _all_messages(file.message_types_by_name.values()):
            messages[message.full_name] = message
            enums.update((e.full_name, e) for e in message.enum_types)
    return services, messages, enums


def _all_messages(messages: Iterable[Descriptor]) -> Iterator[Descriptor]:
    for message in messages:
        if message.GetOptions().map_entry:
            continue  # compared as the map field that holds it
        yield message
        yield from _all_messages(message.nested_types)


def _method_changes(old: ServiceDescriptor, new: ServiceDescriptor) -> Iterator[str]:
    where = new.file.name
    for method in old.methods:
        now = new.methods_by_name.get(method.name)
        if now is None:
            yield f"{where}: method {old.full_name}.{method.name} was deleted"
            continue
        for what, before, after in (
            ("request", method.input_type.full_name, now.input_type.full_name),
            ("response", method.output_type.full_name, now.output_type.full_name),
            ("client streaming", method.client_streaming, now.client_streaming),
            ("server streaming", method.server_streaming, now.server_streaming),
        ):
            if before != after:
                yield (
                    f"{where}: method {old.full_name}.{method.name} changed its {what} "
                    f"from {before} to {after}"
                )


def _field_changes(old: Descriptor, new: Descriptor) -> Iterator[str]:
    where = new.file.name
    reserved = _reserved(new)
    for old_field in old.fields:
        now = new.fields_by_number.get(old_field.number)
        label = f'field {old_field.number} ("{old_field.name}") of message {old.full_name}'
        if now is None:
            if not any(old_field.number in span for span in reserved):
                yield f"{where}: {label} was deleted without reserving its number"
            continue
        before, after = _kind(old_field), _kind(now)
        if before != after:
            yield f"{where}: {label} changed type from {before} to {after}"
        if old_field.is_repeated != now.is_repeated:
            yield f"{where}: {label} changed cardinality (repeated and singular)"
        if old_field.name != now.name:
            yield f"{where}: {label} was renamed to {now.name} (its JSON name changes)"
        elif old_field.json_name != now.json_name:
            yield f"{where}: {label} changed its JSON name to {now.json_name}"


def _kind(field_descriptor: FieldDescriptor) -> str:
    if field_descriptor.message_type is not None:
        return str(field_descriptor.message_type.full_name)
    if field_descriptor.enum_type is not None:
        return str(field_descriptor.enum_type.full_name)
    return _SCALARS.get(field_descriptor.type, str(field_descriptor.type))


def _reserved(descriptor: Descriptor | EnumDescriptor) -> list[range]:
    """The reserved number ranges (descriptors do not expose them; their protos do)."""
    if isinstance(descriptor, Descriptor):
        message = descriptor_pb2.DescriptorProto()
        descriptor.CopyToProto(message)
        return [range(s.start, s.end) for s in message.reserved_range]  # end exclusive
    enum = descriptor_pb2.EnumDescriptorProto()
    descriptor.CopyToProto(enum)
    return [range(s.start, s.end + 1) for s in enum.reserved_range]  # end inclusive


_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}
