"""``nexus serve``: run the host with its plugins until a signal stops it.

With ``--workers N`` (or ``server.workers``) above 1 this process becomes the
supervisor of N workers (:mod:`nexus_grpc.supervisor`), each of which runs this same
command again with the hidden ``--worker-line`` and ``--worker-metrics`` options.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nexus_grpc.cli._args import host_port
from nexus_grpc.cli._config import config_from_args, config_options
from nexus_grpc.config import Config, ConfigError, check_workers, parse_workers
from nexus_grpc.supervisor.links import WorkerLinks

__all__ = ["register"]

_log = logging.getLogger("nexus")

#: Seconds a worker may take beyond its drain (shutdown_delay + grace_period) before
#: the supervisor kills it: the plugins' stop hooks, the storage closing.
_STOP_MARGIN = 15.0


def register(commands: Any) -> None:
    """Add ``nexus serve``."""
    serve = commands.add_parser("serve", help="run the host with its plugins")
    config_options(serve)
    serve.add_argument(
        "--grpc-address",
        type=host_port(),
        metavar="HOST:PORT",
        help="override server.grpc_address",
    )
    serve.add_argument(
        "--http-address",
        type=host_port(empty=True),
        metavar="HOST:PORT",
        help="override http.address (an empty value turns HTTP off)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N|auto",
        help="override server.workers: worker processes sharing the ports (auto: one per core)",
    )
    serve.add_argument(
        "--reload",
        action="store_true",
        help="development: reload a plugin when its files or contracts change (turns "
        "plugins.hot_swap enabled and watch on)",
    )
    # Set by the supervisor for the workers it starts; not for people.
    serve.add_argument("--worker-line", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-metrics", help=argparse.SUPPRESS)
    serve.add_argument("--worker-slot", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--worker-http-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)


def _workers(text: str) -> int:
    try:
        return parse_workers(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("server.workers: ")) from None


def _serve(args: argparse.Namespace) -> int:
    from nexus_grpc.logs import configure_logging

    config = config_from_args(args)
    if args.grpc_address:
        config = replace(config, server=replace(config.server, grpc_address=args.grpc_address))
    if args.http_address is not None:
        config = replace(config, http=replace(config.http, address=args.http_address))
    if args.workers is not None:
        config = replace(config, server=replace(config.server, workers=args.workers))
    if args.reload:
        swap = replace(config.plugins.hot_swap, enabled=True, watch=True)
        config = replace(config, plugins=replace(config.plugins, hot_swap=swap))
    try:
        check_workers(config)
    except ConfigError as error:
        print(f"nexus: configuration error: {error}", file=sys.stderr)
        return 2
    worker_slot = args.worker_slot if args.worker_line is not None else None
    configure_logging(config.log.level, config.log.format, worker=worker_slot)
    if args.worker_line is not None:
        worker = WorkerLinks(args.worker_line, Path(args.worker_metrics), args.worker_http_fd)
        return _run_host(config, worker=worker)
    if config.server.workers > 1:
        return _supervise(config, args)
    return _run_host(config, worker=None)


def _run_host(config: Config, worker: WorkerLinks | None) -> int:
    try:
        from nexus_grpc.heap import freeze_imported
        from nexus_grpc.host import Host
        from nexus_grpc.supervisor.worker import run_worker

        # Before any plugin is imported: what is frozen is never collected (heap.py).
        _log.debug("froze %d imported objects", freeze_imported())
        if worker is None:
            asyncio.run(Host(config).run_until_signalled())
        else:
            run_worker(per_worker(config), worker)
    except Exception as error:
        # Start-up failures (port taken, strict mode, unreachable database) are the
        # operator's to fix: say what failed without a traceback, which is in debug logs.
        _log.debug("start-up failed", exc_info=True)
        _log.error("nexus could not start: %s", error)
        return 1
    return 0


def per_worker(config: Config) -> Config:
    """The configuration one of ``config.server.workers`` workers runs: it binds the
    shared ports, and the per-process limits are split among the workers (rounded up,
    so the host as a whole admits about the configured number, never fewer)."""
    count = config.server.workers

    def share(limit: int) -> int:
        return -(-limit // count) if limit > 0 else limit

    limits = config.limits
    limits = replace(
        limits,
        max_concurrent_calls=share(limits.max_concurrent_calls),
        max_streams=share(limits.max_streams),
        max_streams_per_principal=share(limits.max_streams_per_principal),
    )
    server = replace(config.server, workers=1, reuse_port=True)
    return replace(config, server=server, limits=limits)


def _supervise(config: Config, args: argparse.Namespace) -> int:
    # Only modules free of grpc: the supervisor must hold no gRPC object.
    from nexus_grpc.supervisor import metrics
    from nexus_grpc.supervisor.ports import SlotListeners, migration_warning, reserve
    from nexus_grpc.supervisor.supervisor import Supervisor
    from nexus_grpc.transport.listen_address import http_listen_address

    reserved = []
    try:
        reserved.append(reserve(config.server.grpc_address, "server.grpc_address"))
        if config.http.address:
            # Bound as one process's HTTP server binds it (127.0.0.1 for no host).
            bind = http_listen_address(config.http.address)
            reserved.append(reserve(config.http.address, "http.address", bind=bind))
    except (OSError, ValueError) as error:
        for reservation in reserved:
            reservation.close()
        _log.error("nexus could not start: %s", error)
        return 1
    grpc_address = reserved[0].address
    http_address = reserved[1].address if len(reserved) > 1 else ""
    listeners = SlotListeners(reserved[1]) if len(reserved) > 1 else None
    directory: Path | None = None
    warning = migration_warning()
    if warning is not None:
        _log.warning(warning)

    def ready(pids: list[int]) -> None:
        _log.info(
            "nexus workers serving on %s",
            grpc_address + (f" (HTTP {http_address})" if http_address else ""),
            extra={
                "grpc_address": grpc_address,
                "http_address": http_address,
                "workers": len(pids),
                "worker_pids": pids,
            },
        )

    try:
        # Under the data directory, named after this process: a directory a killed
        # supervisor left is removed by the next one (see create_directory).
        directory = metrics.create_directory(Path(config.data_dir).resolve())
        command = _worker_command(
            args, config.server.workers, grpc_address, http_address, directory
        )
        settings = config.server
        supervisor = Supervisor(
            settings.workers,
            command,
            metrics_dir=directory,
            stop_timeout=settings.shutdown_delay + settings.grace_period + _STOP_MARGIN,
            listeners=listeners,
        )
        return asyncio.run(supervisor.run(on_ready=ready))
    except OSError as error:
        _log.error("nexus could not start: %s", error)
        return 1
    finally:
        if listeners is not None:
            listeners.close()
        for reservation in reserved:
            reservation.close()
        if directory is not None:
            metrics.remove_directory(directory)


def _worker_command(
    args: argparse.Namespace, count: int, grpc_address: str, http_address: str, metrics_dir: Path
) -> Any:
    """The command line of a worker: this command with the same configuration options,
    the worker count (a replacement reading a changed file still checks the
    configuration for ``count`` workers, and refuses one that cannot be shared), the
    reserved addresses, and its line to the supervisor."""
    passed: list[str] = []
    if args.config:
        passed += ["--config", args.config]
    for folder in args.plugin_dir or ():
        passed += ["--plugin-dir", folder]
    if args.data_dir:
        passed += ["--data-dir", args.data_dir]
    if args.storage_url:
        passed += ["--storage-url", args.storage_url]
    passed += ["--workers", str(count)]
    passed += ["--grpc-address", grpc_address, f"--http-address={http_address}"]

    def command(fd: int, slot: int, http_fd: int | None) -> Sequence[str]:
        inherited = [] if http_fd is None else ["--worker-http-fd", str(http_fd)]
        return [
            sys.executable,
            "-c",
            "import sys; from nexus_grpc.cli import main; sys.exit(main())",
            "serve",
            *passed,
            "--worker-line",
            str(fd),
            "--worker-metrics",
            str(metrics_dir),
            "--worker-slot",
            str(slot),
            *inherited,
        ]

    return command
