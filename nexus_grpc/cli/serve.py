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
    configure_logging(config.log.level, config.log.format)
    if args.worker_line is not None:
        return _run_host(config, worker=(args.worker_line, Path(args.worker_metrics)))
    if config.server.workers > 1:
        return _supervise(config, args)
    return _run_host(config, worker=None)


def _run_host(config: Config, worker: tuple[int, Path] | None) -> int:
    try:
        if worker is None:
            from nexus_grpc.host import Host

            asyncio.run(Host(config).run_until_signalled())
        else:
            from nexus_grpc.supervisor.worker import run_worker

            server = replace(config.server, workers=1, reuse_port=True)
            run_worker(replace(config, server=server), line_fd=worker[0], metrics_dir=worker[1])
    except Exception as error:
        # Start-up failures (port taken, strict mode, unreachable database) are the
        # operator's to fix: say what failed without a traceback, which is in debug logs.
        _log.debug("start-up failed", exc_info=True)
        _log.error("nexus could not start: %s", error)
        return 1
    return 0


def _supervise(config: Config, args: argparse.Namespace) -> int:
    # Only modules free of grpc: the supervisor must hold no gRPC object.
    from nexus_grpc.supervisor import metrics
    from nexus_grpc.supervisor.ports import reserve
    from nexus_grpc.supervisor.supervisor import Supervisor

    reserved = []
    try:
        reserved.append(reserve(config.server.grpc_address, "server.grpc_address"))
        if config.http.address:
            reserved.append(reserve(config.http.address, "http.address"))
    except OSError as error:
        for reservation in reserved:
            reservation.close()
        _log.error("nexus could not start: %s", error)
        return 1
    grpc_address = reserved[0].address
    http_address = reserved[1].address if len(reserved) > 1 else ""
    directory = metrics.create_directory()
    command = _worker_command(args, grpc_address, http_address, directory)
    settings = config.server
    supervisor = Supervisor(
        settings.workers,
        command,
        metrics_dir=directory,
        stop_timeout=settings.shutdown_delay + settings.grace_period + _STOP_MARGIN,
    )

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
        return asyncio.run(supervisor.run(on_ready=ready))
    finally:
        for reservation in reserved:
            reservation.close()
        metrics.remove_directory(directory)


def _worker_command(
    args: argparse.Namespace, grpc_address: str, http_address: str, metrics_dir: Path
) -> Any:
    """The command line of a worker: this command with the same configuration options,
    the reserved addresses, and its line to the supervisor."""
    passed: list[str] = []
    if args.config:
        passed += ["--config", args.config]
    for folder in args.plugin_dir or ():
        passed += ["--plugin-dir", folder]
    if args.data_dir:
        passed += ["--data-dir", args.data_dir]
    if args.storage_url:
        passed += ["--storage-url", args.storage_url]
    passed += ["--grpc-address", grpc_address, f"--http-address={http_address}"]

    def command(fd: int) -> Sequence[str]:
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
        ]

    return command
