"""What the gateway tells the server span about an HTTP call."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HttpCall"]


@dataclass(frozen=True, slots=True)
class HttpCall:
    """What the gateway knows about an HTTP call, for the HTTP span attributes."""

    method: str
    #: The HttpRule path template (``/v1/orders/{id}``), "" for gRPC-Web.
    route: str
    scheme: str
