"""Commands on contracts: ``nexus gen``, ``nexus lint``, ``nexus policy explain``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from nexus_grpc.cli._config import config_from_args, config_options
from nexus_grpc.config import Config, ConfigError, load_config

__all__ = ["config_or_exit", "register"]


def register(commands: Any) -> None:
    """Add ``nexus gen``, ``nexus lint`` and ``nexus policy explain``."""
    gen = commands.add_parser("gen", help="compile proto/ into generated/")
    gen.add_argument("--proto", default="proto", help="contracts folder")
    gen.add_argument("--out", default="generated", help="output folder")
    gen.add_argument("--check", action="store_true", help="only report stale files")
    gen.set_defaults(run=_gen)

    lint = commands.add_parser(
        "lint", help="name methods without an access policy, then lint the contracts with buf"
    )
    lint.add_argument("-c", "--config", default=os.environ.get("NEXUS_CONFIG"))
    lint.add_argument("args", nargs=argparse.REMAINDER, help="passed to scripts/lint")
    lint.set_defaults(run=_lint)

    policy = commands.add_parser("policy", help="inspect access policies")
    policy.set_defaults(help_of=policy)
    policy_commands = policy.add_subparsers(title="policy commands")
    explain = policy_commands.add_parser("explain", help="print a method's effective policy")
    explain.add_argument("method", help="e.g. nexus.orders.v1.OrdersService/GetOrder")
    config_options(explain)
    explain.set_defaults(run=_policy_explain)


def _gen(args: argparse.Namespace) -> int:
    from nexus_grpc.codegen import CodegenError, find_stale, generate

    proto, out = Path(args.proto), Path(args.out)
    try:
        if args.check:
            stale = find_stale(proto, out)
            for item in stale:
                print(f"{out / item.path}: {item.reason}")
            return 1 if stale else 0
        written = generate(proto, out)
    except CodegenError as error:
        print(f"nexus gen: {error}", file=sys.stderr)
        return 1
    print(f"nexus gen: wrote {len(written)} files to {out}")
    return 0


def config_or_exit(path: str | None) -> Config:
    """The config at ``path`` (embedded defaults when None); exits 2 saying what is wrong."""
    try:
        return load_config(path)
    except ConfigError as error:
        print(f"nexus: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _lint(args: argparse.Namespace) -> int:
    from nexus_grpc.access.policy import methods_without_policy
    from nexus_grpc.plugins.contracts import load_contracts

    contracts = load_contracts(config_or_exit(args.config))
    for error in contracts.errors:
        print(f"nexus lint: {error}", file=sys.stderr)
    missing = methods_without_policy(contracts.methods())
    for path in missing:
        print(
            f"{path}: no access policy; every call will be denied. Declare "
            "(nexus.options.v1.policy) on the method or (nexus.options.v1.default_policy) "
            "on its service"
        )
    if missing or contracts.errors:
        return 1
    # buf is installed per project through npm; scripts/lint knows how (and prepares the
    # google/api protos buf needs offline), so the CLI defers to it.
    for folder in (Path.cwd(), *Path.cwd().parents):
        script = folder / "scripts" / "lint"
        if (folder / "buf.yaml").is_file() and script.is_file():
            return subprocess.call([str(script), *args.args])
    print("nexus lint: no buf.yaml with scripts/lint found here or above", file=sys.stderr)
    return 2


def _policy_explain(args: argparse.Namespace) -> int:
    from nexus_grpc.access.policy import effective_policy, explain
    from nexus_grpc.plugins.contracts import find_method, load_contracts
    from nexus_grpc.plugins.discovery import searched

    config = config_from_args(args)
    contracts = load_contracts(config)
    method = find_method(contracts, args.method)
    if method is None:
        known = sorted(m.full_name for m in contracts.methods())
        print(
            f"nexus policy: no method {args.method!r} in the plugins found in "
            f"{searched(config.plugins)} (pass -c or --plugin-dir); known: {', '.join(known)}",
            file=sys.stderr,
        )
        for error in contracts.errors:
            print(f"nexus policy: a plugin could not be loaded: {error}", file=sys.stderr)
        return 1
    print(explain(effective_policy(method)))
    return 0
