"""Domain events between plugins: envelopes, the bus, publishing and subscribing."""

from nexus_grpc.events.bus import (
    DeadLetter,
    Delivery,
    EventBus,
    EventCounters,
    EventOperations,
    GroupStats,
    Handler,
    MemoryBus,
    StoredDeadLetter,
    TypeStats,
)
from nexus_grpc.events.envelope import Envelope, event_type_exists, open_envelope, seal
from nexus_grpc.events.publisher import Publisher, subscribe, subscriptions_of

__all__ = [
    "DeadLetter",
    "Delivery",
    "Envelope",
    "EventBus",
    "EventCounters",
    "EventOperations",
    "GroupStats",
    "Handler",
    "MemoryBus",
    "Publisher",
    "StoredDeadLetter",
    "TypeStats",
    "event_type_exists",
    "open_envelope",
    "seal",
    "subscribe",
    "subscriptions_of",
]
