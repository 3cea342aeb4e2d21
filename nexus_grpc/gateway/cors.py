"""Cross-origin resource sharing for browser clients of the gateway."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CorsPolicy"]

_ALLOWED_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
# Headers browsers may read from responses: status and metadata of the call.
_EXPOSED = b"grpc-status, grpc-message, grpc-status-details-bin, x-request-id, x-grpc-web"
_ALLOWED_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "grpc-timeout",
        "x-request-id",
        "x-grpc-web",
        "x-user-agent",
        "accept",
        "accept-language",
    }
)


@dataclass(frozen=True)
class CorsPolicy:
    """Which origins may call; empty means no cross-origin access (the safe default)."""

    origins: tuple[str, ...] = ()
    max_age: int = 600

    def _origin(self, scope: MutableMapping[str, Any]) -> bytes | None:
        for key, value in scope["headers"]:
            if key == b"origin":
                origin = value.decode("latin-1")
                if "*" in self.origins or origin in self.origins:
                    return bytes(value)
                return None
        return None

    def is_preflight(self, scope: MutableMapping[str, Any]) -> bool:
        """An OPTIONS request asking whether a cross-origin call is allowed."""
        if scope["method"] != "OPTIONS":
            return False
        return any(key == b"access-control-request-method" for key, _ in scope["headers"])

    def preflight_headers(
        self, scope: MutableMapping[str, Any], methods: list[str] | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Answer to a preflight: the grant, or nothing (the browser then refuses).

        ``methods`` are those that apply to the requested path (OPTIONS is added);
        None grants the usual REST methods.
        """
        origin = self._origin(scope)
        if origin is None:
            return []
        requested = b""
        for key, value in scope["headers"]:
            if key == b"access-control-request-headers":
                requested = value
        allowed = [
            name.strip()
            for name in requested.decode("latin-1").lower().split(",")
            if name.strip() in _ALLOWED_HEADERS or name.strip().startswith("grpc-metadata-")
        ]
        return [
            (b"access-control-allow-origin", origin),
            (
                b"access-control-allow-methods",
                _ALLOWED_METHODS
                if methods is None
                else ", ".join([*methods, "OPTIONS"]).encode("latin-1"),
            ),
            (b"access-control-allow-headers", ", ".join(allowed).encode("latin-1")),
            (b"access-control-max-age", str(self.max_age).encode()),
            (b"vary", b"origin"),
        ]

    def response_headers(self, scope: MutableMapping[str, Any]) -> list[tuple[bytes, bytes]]:
        """Headers letting an allowed origin read the response."""
        origin = self._origin(scope)
        if origin is None:
            return []
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-expose-headers", _EXPOSED),
            (b"vary", b"origin"),
        ]
