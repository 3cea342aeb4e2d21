"""Sealing domain events into envelopes and opening them again."""

from __future__ import annotations

import uuid

from google.protobuf import any_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import Message
from nexus.events.v1 import events_pb2

__all__ = ["Envelope", "event_type_exists", "open_envelope", "seal"]

Envelope = events_pb2.Envelope


def seal(message: Message, *, source: str, subject: str = "", correlation_id: str = "") -> Envelope:
    """``message`` in a new envelope with a fresh id and the current time."""
    payload = any_pb2.Any()
    payload.Pack(message)
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return Envelope(
        id=uuid.uuid4().hex,
        source=source,
        type=message.DESCRIPTOR.full_name,
        time=now,
        subject=subject,
        correlation_id=correlation_id,
        payload=payload,
    )


def event_type_exists(full_name: str) -> bool:
    """Whether a message type of that name is registered (its stubs were imported)."""
    try:
        descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        return False
    return True


def open_envelope(envelope: Envelope) -> Message:
    """The event inside ``envelope``, as an instance of its registered message class."""
    descriptor = descriptor_pool.Default().FindMessageTypeByName(envelope.type)
    message = message_factory.GetMessageClass(descriptor)()
    if not envelope.payload.Unpack(message):
        raise ValueError(f"envelope {envelope.id}: payload is not a {envelope.type}")
    return message
