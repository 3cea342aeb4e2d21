"""What a worker process gets from its supervisor on its command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["WorkerLinks"]


@dataclass(frozen=True)
class WorkerLinks:
    """The descriptors and folder a worker shares with its supervisor."""

    #: Its end of the line to the supervisor (:mod:`nexus_grpc.supervisor.channel`).
    line_fd: int
    #: Where the workers' metrics files are (:mod:`nexus_grpc.supervisor.metrics`).
    metrics_dir: Path
    #: The slot's HTTP listening socket, kept by the supervisor across the slot's
    #: workers (:class:`~nexus_grpc.supervisor.ports.SlotListeners`); None without HTTP.
    http_fd: int | None = None
