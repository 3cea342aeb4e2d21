"""``nexus serve``: run the host with its plugins until a signal stops it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import replace
from typing import Any

from nexus_grpc.config import ConfigError, load_config

__all__ = ["register"]

_log = logging.getLogger("nexus")


def register(commands: Any) -> None:
    """Add ``nexus serve``."""
    serve = commands.add_parser("serve", help="run the host with its plugins")
    serve.add_argument(
        "-c",
        "--config",
        default=os.environ.get("NEXUS_CONFIG"),
        help="TOML config file (default: $NEXUS_CONFIG, else embedded defaults)",
    )
    serve.add_argument("--grpc-address", metavar="HOST:PORT", help="override server.grpc_address")
    serve.add_argument(
        "--http-address",
        metavar="HOST:PORT",
        help="override http.address (an empty value turns HTTP off)",
    )
    serve.add_argument("--data-dir", metavar="DIR", help="override data_dir")
    serve.add_argument(
        "--plugin-dir",
        action="append",
        default=None,
        help="plugin folder (repeatable); replaces plugins.dirs",
    )
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from nexus_grpc.host import Host
    from nexus_grpc.logs import configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"nexus: configuration error: {error}", file=sys.stderr)
        return 2
    if args.grpc_address:
        config = replace(config, server=replace(config.server, grpc_address=args.grpc_address))
    if args.http_address is not None:
        config = replace(config, http=replace(config.http, address=args.http_address))
    if args.data_dir:
        config = replace(config, data_dir=args.data_dir)
    if args.plugin_dir:
        config = replace(config, plugins=replace(config.plugins, dirs=tuple(args.plugin_dir)))
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
