"""Sealing domain events into envelopes and opening them again.

An envelope names its event's type by full name and carries the payload as bytes, so
one event crosses contract generations (:mod:`nexus_grpc.plugins.generations`): a
consumer gets it parsed into its *own* class of that name, whichever version of the
contract the publisher was built from. Fields the consumer's version does not know stay
in the message as unknown fields (and are written again if it is re-serialized); fields
the publisher's version lacks read as their defaults. A type name the consumer's class
does not carry is a ValueError, never a silent reinterpretation.
"""

from __future__ import annotations

import time

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from nexus.events.v1 import events_pb2

from nexus_grpc.ids import new_id

__all__ = [
    "Envelope",
    "add_event_pool",
    "event_type_exists",
    "open_envelope",
    "remove_event_pool",
    "seal",
]

Envelope = events_pb2.Envelope

#: Pools of upgraded contracts, newest first, searched after the default pool for
#: event types the default pool does not have (a type added by an upgrade).
_event_pools: list[descriptor_pool.DescriptorPool] = []


def add_event_pool(pool: descriptor_pool.DescriptorPool) -> None:
    """Let envelopes of the types in ``pool`` be opened (a contract generation going live)."""
    if not any(known is pool for known in _event_pools):
        _event_pools.insert(0, pool)


def remove_event_pool(pool: descriptor_pool.DescriptorPool) -> None:
    """Forget ``pool`` (its generation is dropped); unknown pools are ignored."""
    _event_pools[:] = [known for known in _event_pools if known is not pool]


def seal(message: Message, *, source: str, subject: str = "", correlation_id: str = "") -> Envelope:
    """``message`` in a new envelope with a fresh id and the current time."""
    envelope = Envelope(
        id=new_id(),
        source=source,
        type=message.DESCRIPTOR.full_name,
        subject=subject,
        correlation_id=correlation_id,
    )
    # Filled in place: building them apart and passing them in would copy both.
    envelope.payload.Pack(message)
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    envelope.time.seconds, envelope.time.nanos = seconds, nanos
    return envelope


def _find(full_name: str) -> Descriptor | None:
    for pool in (descriptor_pool.Default(), *_event_pools):
        try:
            return pool.FindMessageTypeByName(full_name)
        except KeyError:
            continue
    return None


def event_type_exists(full_name: str) -> bool:
    """Whether a message type of that name is registered (its stubs were imported)."""
    return _find(full_name) is not None


def open_envelope(envelope: Envelope, into: type[Message] | None = None) -> Message:
    """The event inside ``envelope``.

    As an instance of ``into`` when given (the consumer's own class: its full name must
    be the envelope's type), else of the class registered for the type: the default
    pool's, then the newest generation's that has it. ValueError when the type is
    unknown, another type than ``into``, or the payload does not parse.
    """
    if into is None:
        descriptor = _find(envelope.type)
        if descriptor is None:
            raise ValueError(f"envelope {envelope.id}: unknown event type {envelope.type}")
        into = message_factory.GetMessageClass(descriptor)
    elif into.DESCRIPTOR.full_name != envelope.type:
        raise ValueError(
            f"envelope {envelope.id}: holds a {envelope.type}, not a {into.DESCRIPTOR.full_name}"
        )
    payload = envelope.payload
    if payload.type_url.rpartition("/")[2] != envelope.type:
        raise ValueError(f"envelope {envelope.id}: payload is not a {envelope.type}")
    message = into()
    try:
        # Parsed by name, not by class: another generation's bytes are the same wire
        # format, and what this version does not know is kept as unknown fields.
        message.ParseFromString(payload.value)
    except DecodeError as error:
        problem = f"envelope {envelope.id}: payload is not a {envelope.type}: {error}"
        raise ValueError(problem) from None
    return message
