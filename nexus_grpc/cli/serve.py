"""``nexus serve``: run the host with its plugins until a signal stops it."""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import replace
from typing import Any

from nexus_grpc.cli._args import host_port
from nexus_grpc.cli._config import config_from_args, config_options

__all__ = ["register"]

_log = logging.getLogger("nexus")


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
        "--reload",
        action="store_true",
        help="development: reload a plugin when its files or contracts change (turns "
        "plugins.hot_swap enabled and watch on)",
    )
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from nexus_grpc.host import Host
    from nexus_grpc.logs import configure_logging

    config = config_from_args(args)
    if args.grpc_address:
        config = replace(config, server=replace(config.server, grpc_address=args.grpc_address))
    if args.http_address is not None:
        config = replace(config, http=replace(config.http, address=args.http_address))
    if args.reload:
        swap = replace(config.plugins.hot_swap, enabled=True, watch=True)
        config = replace(config, plugins=replace(config.plugins, hot_swap=swap))
    configure_logging(config.log.level, config.log.format)
    try:
        asyncio.run(Host(config).run_until_signalled())
    except Exception as error:
        # Start-up failures (port taken, strict mode, unreachable database) are the
        # operator's to fix: say what failed without a traceback, which is in debug logs.
        _log.debug("start-up failed", exc_info=True)
        _log.error("nexus could not start: %s", error)
        return 1
    return 0
