"""Several worker processes behind one ``nexus serve`` (``server.workers``).

- :mod:`~nexus_grpc.supervisor.supervisor`: starts, restarts, stops and rolls workers;
- :mod:`~nexus_grpc.supervisor.worker`: the host as one worker of several;
- :mod:`~nexus_grpc.supervisor.channel`: the supervisor line and the broadcast to
  every worker;
- :mod:`~nexus_grpc.supervisor.ports`: ports reserved before the workers start;
- :mod:`~nexus_grpc.supervisor.metrics`: one ``/metrics`` over all workers;
- :mod:`~nexus_grpc.supervisor.policy`: restart backoff and crash-loop detection.

This package is imported by the supervisor process, which must hold no gRPC object:
only ``channel``, ``metrics``, ``policy``, ``ports`` and ``supervisor`` are imported
there; ``worker`` (which imports the host, and so grpc) only in workers.
"""

from nexus_grpc.supervisor.channel import Broadcast
from nexus_grpc.supervisor.policy import RestartPolicy
from nexus_grpc.supervisor.supervisor import Supervisor

__all__ = ["Broadcast", "RestartPolicy", "Supervisor"]
