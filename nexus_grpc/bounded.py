"""How much of a request an error may repeat back to the client.

A status travels in trailers on gRPC and gRPC-Web (``grpc-message`` percent-encoded,
``grpc-status-details-bin`` base64), and gRPC clients refuse metadata past 8-16 KiB
with RESOURCE_EXHAUSTED "received metadata size exceeds hard limit" — which would hide
the real error. So an error that quotes a 20,000-character role, username, field path
or id must not carry it whole. These bounds are applied once, on the way out
(:func:`nexus_grpc.errors.to_status_proto`, which every transport uses), and where
values are quoted (:func:`quote`).

The numbers are protocol facts, not tuning: grpc-core's default metadata soft limit is
8 KiB; a worst case here (non-ASCII message, full details) stays under ~7.5 KiB of
trailers.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = [
    "DETAIL_TEXT_LIMIT",
    "MAX_ITEMS",
    "MESSAGE_LIMIT",
    "QUOTE_LIMIT",
    "STATUS_LIMIT",
    "TIGHT_MAX_ITEMS",
    "TIGHT_TEXT_LIMIT",
    "bounded_detail",
    "clip",
    "quote",
]

#: UTF-8 bytes of a request value an error message quotes.
QUOTE_LIMIT = 128
#: UTF-8 bytes of a status message (percent-encoded, at most three times that).
MESSAGE_LIMIT = 1024
#: UTF-8 bytes of any one string inside a status detail.
DETAIL_TEXT_LIMIT = 256
#: Elements kept of any repeated field or map inside a status detail.
MAX_ITEMS = 32
#: The cut applied to a detail that does not fit the status even when bounded.
TIGHT_TEXT_LIMIT = 32
TIGHT_MAX_ITEMS = 4
#: Serialized bytes of the whole ``google.rpc.Status`` (sent base64: ~4/3 of it).
STATUS_LIMIT = 3072

_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, with a marker saying how much went."""
    # Fast path: no string of at most limit / 4 characters can exceed limit bytes.
    if len(text) * 4 <= limit:
        return text
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    kept = encoded[:limit].decode("utf-8", "ignore")
    return f"{kept}...[{len(text) - len(kept)} more characters]"


def quote(value: str, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, cut at ``limit`` bytes with a marker."""
    clipped = clip(value, limit)
    if clipped is value:
        return repr(value)
    kept = clipped[: clipped.rindex("...[")]
    return f"{kept!r}...[{len(value) - len(kept)} more characters]"


def bounded_detail(
    detail: Message, text_limit: int = DETAIL_TEXT_LIMIT, max_items: int = MAX_ITEMS
) -> Message:
    """``detail`` itself when small, else a copy with every string and list bounded."""
    if detail.ByteSize() <= text_limit:
        return detail  # no string in it can be over the limit
    copy = type(detail)()
    copy.CopyFrom(detail)
    _bound(copy, text_limit, max_items)
    return copy


def _bound(message: Message, text_limit: int, max_items: int) -> None:
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _bound_map(field.message_type, value, text_limit, max_items)
        elif field.is_repeated:
            del value[max_items:]
            if field.type == _STRING:
                value[:] = [clip(item, text_limit) for item in value]
            elif field.type == _MESSAGE:
                for item in value:
                    _bound(item, text_limit, max_items)
        elif field.type == _STRING:
            setattr(message, field.name, clip(value, text_limit))
        elif field.type == _MESSAGE:
            _bound(value, text_limit, max_items)


def _bound_map(entry: Descriptor, value: Any, text_limit: int, max_items: int) -> None:
    entries = list(value.items())
    value.clear()
    value_field = entry.fields_by_name["value"]
    for key, item in entries[:max_items]:
        if isinstance(key, str):
            key = clip(key, text_limit)
        if value_field.type == _MESSAGE:
            value[key].CopyFrom(item)
            _bound(value[key], text_limit, max_items)
        else:
            value[key] = clip(item, text_limit) if isinstance(item, str) else item
