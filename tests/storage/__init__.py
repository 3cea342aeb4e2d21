"""Tests of nexus_grpc.storage, and what several of its test modules share.

``Widget`` is a message built at import time from a descriptor in a private descriptor
pool: it has what ``Order`` lacks (nested messages, a map, a recursive field, floats,
uint64, a Duration), and being a dynamic message from another pool it also checks that
the storage never assumes the generated ``timestamp_pb2`` classes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    message_factory,
    timestamp_pb2,
)
from google.protobuf.message import Message

from nexus_grpc.storage import Storage

BACKENDS = ["sqlite", "postgresql", "mongodb"]


def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL for the backend named by ``request.param``."""
    if request.param == "sqlite":
        # A missing parent directory on purpose: connect() must create it.
        return f"sqlite+aiosqlite:///{tmp_path}/data/nexus.db"
    if request.param == "mongodb":
        mongo: str = request.getfixturevalue("mongo_url")
        return mongo
    url: str = request.getfixturevalue("postgres_url")
    return url


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Storage]:
    """A Storage for ``url``, closed afterwards."""
    storage = await Storage.connect(url)
    try:
        yield storage
    finally:
        await storage.close()


def _widget_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tests/storage/widget.proto",
        package="nexus.storage.test",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto", "google/protobuf/duration.proto"],
    )
    fdp.enum_type.add(name="Kind").value.extend(
        [
            descriptor_pb2.EnumValueDescriptorProto(name="KIND_UNSPECIFIED", number=0),
            descriptor_pb2.EnumValueDescriptorProto(name="KIND_SMALL", number=1),
            descriptor_pb2.EnumValueDescriptorProto(name="KIND_LARGE", number=2),
        ]
    )
    f = descriptor_pb2.FieldDescriptorProto
    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED

    def field(name: str, number: int, kind: Any, label: Any = opt, type_name: str = "") -> Any:
        made = f(name=name, number=number, type=kind, label=label)
        if type_name:  # even an empty type_name counts as set
            made.type_name = type_name
        return made

    inner = fdp.message_type.add(name="Inner")
    inner.field.extend([field("flag", 1, f.TYPE_BOOL), field("ratio", 2, f.TYPE_DOUBLE)])
    dims = fdp.message_type.add(name="Dimensions")
    dims.field.extend(
        [
            field("width", 1, f.TYPE_INT32),
            field("unit", 2, f.TYPE_STRING),
            field("inner", 3, f.TYPE_MESSAGE, type_name=".nexus.storage.test.Inner"),
        ]
    )
    widget = fdp.message_type.add(name="Widget")
    entry = widget.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.extend([field("key", 1, f.TYPE_STRING), field("value", 2, f.TYPE_STRING)])
    widget.field.extend(
        [
            field("id", 1, f.TYPE_STRING),
            field("name", 2, f.TYPE_STRING),
            field("kind", 3, f.TYPE_ENUM, type_name=".nexus.storage.test.Kind"),
            field("weight", 4, f.TYPE_DOUBLE),
            field("active", 5, f.TYPE_BOOL),
            field("serial", 6, f.TYPE_UINT64),
            field("count", 7, f.TYPE_INT64),
            field("dims", 8, f.TYPE_MESSAGE, type_name=".nexus.storage.test.Dimensions"),
            field("tags", 9, f.TYPE_STRING, label=rep),
            field("labels", 10, f.TYPE_MESSAGE, rep, ".nexus.storage.test.Widget.LabelsEntry"),
            field("ttl", 11, f.TYPE_MESSAGE, type_name=".google.protobuf.Duration"),
            field("seen", 12, f.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp"),
            field("parent", 13, f.TYPE_MESSAGE, type_name=".nexus.storage.test.Widget"),
            field("blob", 14, f.TYPE_BYTES),
            field("key", 15, f.TYPE_STRING),
            field("small", 16, f.TYPE_INT32),
        ]
    )
    return fdp


def _build_widget() -> type[Message]:
    pool = descriptor_pool.DescriptorPool()
    for dependency in (timestamp_pb2, duration_pb2):
        pool.AddSerializedFile(dependency.DESCRIPTOR.serialized_pb)
    pool.Add(_widget_file())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("nexus.storage.test.Widget"))


#: The dynamic test message class (nexus.storage.test.Widget).
Widget: type[Message] = _build_widget()


def widget(**fields: Any) -> Message:
    """A Widget with ``fields`` set (nested messages as dicts)."""
    message = Widget()
    for name, value in fields.items():
        target = getattr(message, name)
        if isinstance(value, dict) and isinstance(target, Message):
            _assign(target, value)
        elif isinstance(value, list):
            target.extend(value)
        else:
            setattr(message, name, value)
    return message


def _assign(message: Message, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if isinstance(value, dict):
            _assign(getattr(message, name), value)
        else:
            setattr(message, name, value)
