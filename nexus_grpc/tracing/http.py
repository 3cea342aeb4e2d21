"""What the gateway tells the server span about an HTTP call."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HttpCall"]


@dataclass(slots=True)
class HttpCall:
    """What the gateway knows about an HTTP call, for the HTTP span attributes."""

    method: str
    #: The HttpRule path template (``/v1/orders/{id}``), "" for gRPC-Web.
    route: str
    scheme: str
    #: The HTTP status the response has (or will have) whatever the call's code: 200 for
    #: gRPC-Web (the code travels in trailers), 200 for a REST stream once its first
    #: message went out. None: the status follows from the code when the call ends.
    status_sent: int | None = None
