"""HTTP headers ↔ gRPC metadata, and the gRPC timeout header.

Only ``Authorization``, an allow-listed set of headers and ``Grpc-Metadata-*`` headers
become metadata; everything else stays HTTP. A header whose value has control
characters never becomes metadata, so a client cannot smuggle a line break into a
log or a downstream call.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Iterable, Sequence

from nexus_grpc.errors import FieldViolation, InvalidArgumentError

__all__ = [
    "METADATA_PREFIX",
    "TRAILER_PREFIX",
    "call_deadline",
    "metadata_from_headers",
    "metadata_to_headers",
    "parse_grpc_timeout",
]

METADATA_PREFIX = "grpc-metadata-"
TRAILER_PREFIX = "grpc-trailer-"

# Visible ASCII and spaces/tabs: what RFC 9110 field values and gRPC ASCII metadata share.
_SAFE_VALUE = re.compile(r"^[\x20-\x7e\t]*$")
_SAFE_KEY = re.compile(r"^[0-9a-z_.-]+$")
# Headers that belong to HTTP or to the host and never pass as metadata, whatever the prefix.
_RESERVED = frozenset({"content-type", "te", "grpc-timeout", "grpc-status", "grpc-message", "host"})
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def metadata_from_headers(
    headers: Iterable[tuple[bytes, bytes]], allowed: frozenset[str]
) -> tuple[tuple[str, str | bytes], ...]:
    """gRPC metadata for the headers that may pass: Authorization, ``allowed``, Grpc-Metadata-*."""
    metadata: list[tuple[str, str | bytes]] = []
    for raw_key, raw_value in headers:
        key = raw_key.decode("latin-1").lower()
        if key.startswith(METADATA_PREFIX):
            key = key[len(METADATA_PREFIX) :]
        elif key != "authorization" and key not in allowed:
            continue
        if key in _RESERVED or not _SAFE_KEY.match(key) or key.startswith("grpc-"):
            continue
        value = raw_value.decode("latin-1")
        if not _SAFE_VALUE.match(value):
            continue
        if key.endswith("-bin"):
            try:
                metadata.append((key, base64.b64decode(value + "=" * (-len(value) % 4))))
            except binascii.Error:
                raise InvalidArgumentError(
                    [FieldViolation(raw_key.decode("latin-1"), "a -Bin header must be base64")]
                ) from None
            continue
        metadata.append((key, value.strip()))
    return tuple(metadata)


def metadata_to_headers(
    metadata: Sequence[tuple[str, str | bytes]] | None, prefix: str
) -> list[tuple[bytes, bytes]]:
    """Response metadata as ``prefix``-ed headers (binary values base64-encoded)."""
    headers = []
    for key, value in metadata or ():
        text = base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        if _SAFE_VALUE.match(text):
            headers.append(((prefix + key).encode("latin-1"), text.encode("latin-1")))
    return headers


def parse_grpc_timeout(value: str) -> float:
    """Seconds from a ``Grpc-Timeout`` value such as ``500m`` or ``2S``."""
    match = _TIMEOUT.match(value.strip())
    if match is None:
        raise InvalidArgumentError(
            [FieldViolation("Grpc-Timeout", f"{value!r} is not a gRPC timeout such as 500m or 2S")]
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def call_deadline(grpc_timeout: str, default_timeout: float) -> float | None:
    """The ``time.monotonic()`` deadline of a call from its ``Grpc-Timeout`` header value.

    A zero timeout (``0S``, ``0m``, ``0u``, ``0n``) is a deadline that has already
    passed, as grpc core reads it: the call ends DEADLINE_EXCEEDED at once, it never
    means "no deadline". Without the header, ``default_timeout`` seconds apply when
    positive; else the call has no deadline.
    """
    if grpc_timeout:
        return time.monotonic() + parse_grpc_timeout(grpc_timeout)
    if default_timeout > 0:
        return time.monotonic() + default_timeout
    return None
