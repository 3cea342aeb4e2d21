"""``nexus health``: ask a host's grpc.health.v1 service whether it is SERVING.

Exit status 0 when the status is SERVING, 1 otherwise (NOT_SERVING, unknown service,
unreachable host, bad options): what a container ``HEALTHCHECK`` or an exec probe
wants, without shipping a separate health-probe binary in the image.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import grpc

from nexus_grpc.cli._args import positive
from nexus_grpc.cli.channel import ChannelError, add_tls_options, open_channel, tls_options
from nexus_grpc.config import ConfigError, load_config

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``nexus health``."""
    health = commands.add_parser(
        "health",
        help="check a host's gRPC health (exit 0 when SERVING, 1 otherwise)",
    )
    health.add_argument(
        "--address",
        help="host:port of the host; https://host:port for TLS (default: the "
        "server.grpc_address of $NEXUS_CONFIG and NEXUS_* variables, on loopback "
        "when it listens on every interface)",
    )
    health.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="the service to check (default: the host as a whole)",
    )
    health.add_argument(
        "--timeout",
        type=positive(float),
        default=3.0,
        help="seconds to connect and answer (default: 3)",
    )
    health.add_argument("--quiet", action="store_true", help="print nothing, exit status only")
    add_tls_options(health)
    health.set_defaults(run=_health)


def _health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def say(text: str, *, error: bool = False) -> None:
        if not args.quiet:
            print(text, file=sys.stderr if error else sys.stdout)

    try:
        if not args.address:
            args.address = _configured_address()
        tls = tls_options(args)
    except (ChannelError, ConfigError) as error:
        say(f"nexus: {error}", error=True)
        return 1
    name = args.service or "(host)"
    with open_channel(tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # wait_for_ready: a host still binding its port gets the whole timeout.
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=args.timeout,
                wait_for_ready=True,
            )
        except grpc.RpcError as error:
            code = error.code()
            if code is grpc.StatusCode.NOT_FOUND:
                say(f"{name}: SERVICE_UNKNOWN", error=True)
            else:
                say(
                    f"nexus: {args.address} ({tls.describe()}): {code.name}: {error.details()}",
                    error=True,
                )
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    serving = response.status == health_pb2.HealthCheckResponse.SERVING
    say(f"{name}: {status}", error=not serving)
    return 0 if serving else 1


def _configured_address() -> str:
    """The gRPC address ``nexus serve`` would listen on here, as a client dials it.

    Read from the same file and variables as the server, so a container's health check
    follows ``NEXUS_SERVER__GRPC_ADDRESS`` without repeating it; a wildcard host (every
    interface) is dialled on loopback.
    """
    config = load_config(os.environ.get("NEXUS_CONFIG") or None)
    host, _, port = config.server.grpc_address.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::", "*"):
        host = "[::1]" if host in ("[::]", "::") else "127.0.0.1"
    return f"{host}:{port}"
