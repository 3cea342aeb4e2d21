"""One worker process: the ordinary host, wired to its supervisor.

Compared to a single ``nexus serve`` a worker (started by the supervisor with
``--worker-line FD --worker-metrics DIR`` and, with HTTP on, ``--worker-http-fd FD``)
differs only in what it shares:

- it binds the gRPC port the supervisor reserved, with ``SO_REUSEPORT``, and serves
  HTTP on its slot's listening socket, which the supervisor keeps and passes down;
- it reports ready on the line once it serves and its overall health is SERVING;
- its metrics go to the shared files and a scrape answers for all workers
  (:mod:`nexus_grpc.supervisor.metrics`);
- ``host.broadcast`` reaches every worker (:mod:`nexus_grpc.supervisor.channel`);
- on SIGUSR2 (a rolling restart replaced it) it drains with health left SERVING and
  leaves the slot's HTTP socket listening for its replacement; any other stop (a
  SIGTERM) does so only when the supervisor says another worker of the slot stays on
  it (a roll's replacement, or the worker it replaces), else it ends that socket's
  listening, so no connection waits there for nobody;
- it shuts down (draining, as on SIGTERM) when the line closes: its supervisor is
  gone and nobody would stop or restart it any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterable

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nexus_grpc.config import Config
from nexus_grpc.host import Host
from nexus_grpc.supervisor.channel import RETIRE_SIGNAL
from nexus_grpc.supervisor.links import WorkerLinks
from nexus_grpc.supervisor.metrics import FLUSH_INTERVAL, SharedMetrics
from nexus_grpc.transport.accept_guard import GuardedSocket
from nexus_grpc.transport.health import OVERALL

__all__ = ["run_worker"]

_log = logging.getLogger("nexus.supervisor")

#: How often a started worker looks whether its overall health turned SERVING.
_READY_POLL = 0.05


class _WorkerCount(Collector):
    """``nexus_workers``: 1 per live worker, so the merged scrape says how many serve."""

    def collect(self) -> Iterable[Metric]:
        """One sample of 1."""
        yield GaugeMetricFamily("nexus_workers", "Worker processes serving.", value=1)


def run_worker(config: Config, links: WorkerLinks) -> None:
    """Serve ``config`` as one of several workers until SIGTERM or the supervisor goes."""
    asyncio.run(_serve(config, links))


async def _serve(config: Config, links: WorkerLinks) -> None:
    # Passed down to this process only: no program it starts may keep them open.
    os.set_inheritable(links.line_fd, False)
    http_socket = None
    if links.http_fd is not None:
        os.set_inheritable(links.http_fd, False)
        # The family, type and protocol come from the descriptor itself.
        http_socket = GuardedSocket(fileno=links.http_fd)
    host = Host(config, http_socket=http_socket)
    await host.broadcast.connect(links.line_fd)
    shared = SharedMetrics(links.metrics_dir)
    registry = host.metrics.registry
    registry.register(_WorkerCount())
    host.metrics.share(shared.exposition)

    retired = False

    async def hands_over() -> bool:
        # Retired: its replacement accepts on the slot's HTTP socket. Otherwise only the
        # supervisor knows whether a worker of the slot does.
        return retired or await host.broadcast.hands_over()

    # Asked at every stop, with or without an HTTP socket: the question also tells the
    # supervisor that this worker stops on its own, so that its exit is no crash.
    host.hand_over_http = hands_over

    def retire() -> None:
        # Replaced in a rolling restart: drain as on SIGTERM, health left SERVING.
        nonlocal retired
        retired = True
        if host.stopping:
            # Stopping already (a SIGTERM of its own): a second one would cancel its
            # calls. It hands the socket over all the same.
            return
        _log.info("replaced by a new worker: draining")
        host.announce_shutdown = False
        # Refuse swaps from now on, before the SIGTERM below is handled.
        with contextlib.suppress(RuntimeError):  # not started yet: no swap to refuse
            host.plugins.swap.refuse()
        os.kill(os.getpid(), signal.SIGTERM)

    asyncio.get_running_loop().add_signal_handler(RETIRE_SIGNAL, retire)
    tasks = [
        asyncio.create_task(_flush(shared, host)),
        asyncio.create_task(_orphaned(host)),
    ]

    async def started() -> None:
        # HealthState has no change callback; storage that is down at start keeps
        # OVERALL NOT_SERVING until its probe succeeds, and the worker is not ready.
        while host.health.is_serving(OVERALL) is not True:  # noqa: ASYNC110
            await asyncio.sleep(_READY_POLL)
        # In the merged /metrics (nexus_workers) from the moment the supervisor counts it.
        shared.write(registry.collect())
        await host.broadcast.ready()

    try:
        await host.run_until_signalled(on_started=started)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The last calls' counts stay in the sums after this process is gone.
        with contextlib.suppress(Exception):
            shared.write(registry.collect())
        shared.close()
        await host.broadcast.close()


async def _flush(shared: SharedMetrics, host: Host) -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        try:
            # The scrape-time collectors (the event backlog) refreshed as a scrape of
            # this worker would: a scrape of another worker reads them from the file.
            await host.metrics.refresh()
            shared.write(host.metrics.registry.collect())
        except Exception:
            _log.exception("could not write this worker's metrics")


async def _orphaned(host: Host) -> None:
    await host.broadcast.closed.wait()
    if host.stopping:
        return  # draining already: a SIGTERM now would cancel its calls
    _log.warning("the supervisor is gone: stopping this worker")
    # The host's own signal handling drains it, as a SIGTERM from the supervisor would.
    os.kill(os.getpid(), signal.SIGTERM)
