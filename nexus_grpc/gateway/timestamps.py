"""A ``google.protobuf.Timestamp`` as its proto3 JSON text, exactly as ``ToJsonString`` writes it.

``Timestamp.ToJsonString`` (pure Python in protobuf) costs ~4 µs: a range check, a
datetime built from days and seconds, its isoformat and float arithmetic for the
fraction. A stored record answers with two of them (its create and update times) and a
page of fifty with a hundred. Here the date and time of the last second written are
kept (records written or read together mostly share it, and always the two times of a
record just created) and the fraction is formatted with integers: ~1 µs. Values out of
the Timestamp's range go to ``ToJsonString``, which raises its own ValueError.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

__all__ = ["timestamp_to_json"]

# The range of a Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_SECONDS_MIN = -62_135_596_800
_SECONDS_MAX = 253_402_300_799
_NANOS_PER_SECOND = 1_000_000_000
_EPOCH = datetime(1970, 1, 1)

#: The last second written: its seconds since the epoch and its text. One tuple, replaced
#: whole, so that a thread never reads the seconds of one with the text of another.
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def timestamp_to_json(message: Any) -> str:
    """``message.ToJsonString()`` for a Timestamp: RFC 3339 in UTC ("Z"), with 0, 3, 6 or
    9 digits of fraction, as few as represent it exactly."""
    global _last_second
    seconds, nanos = message.seconds, message.nanos
    if not 0 <= nanos < _NANOS_PER_SECOND:
        return str(message.ToJsonString())  # raises: nanos out of range
    cached, text = _last_second
    if seconds != cached:
        if not _SECONDS_MIN <= seconds <= _SECONDS_MAX:
            return str(message.ToJsonString())  # raises: seconds out of range
        text = (_EPOCH + timedelta(seconds=seconds)).isoformat()
        _last_second = (seconds, text)
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"
