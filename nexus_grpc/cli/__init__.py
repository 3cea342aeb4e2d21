"""The ``nexus`` command.

Each command group lives in its own module and adds its sub-commands to the parser
with ``register(commands)``; ``main`` only assembles them and runs the chosen one.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Sequence

from nexus_grpc.cli import (
    contracts,
    events,
    health,
    login,
    new,
    plugins,
    serve,
    storage,
    tls,
    users,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nexus`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        # A command group without its command (`nexus events`) shows that group's help.
        getattr(args, "help_of", parser).print_help()
        return 2
    result: int = args.run(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus", description="gRPC-first plugin host.")
    parser.add_argument("--version", action="version", version=f"nexus {_version()}")
    commands = parser.add_subparsers(title="commands")
    for module in (serve, health, plugins, events, storage, contracts, users, login, new, tls):
        module.register(commands)
    return parser


def _version() -> str:
    # The installed distribution's version, so it cannot drift from pyproject.toml.
    try:
        return importlib.metadata.version("nexus-grpc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (nexus-grpc is not installed)"
