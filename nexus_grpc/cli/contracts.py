"""Commands on contracts: ``nexus gen``, ``nexus lint``, ``nexus policy explain``.

``gen`` and ``lint`` work on one project's contracts: ``--proto``, else the ``proto/``
folder of the nearest project from the current folder up (a folder with ``proto/``
next to a ``pyproject.toml`` or ``buf.yaml``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from nexus_grpc.access.policy import MISSING_POLICY_FIX
from nexus_grpc.cli._config import config_from_args, config_options
from nexus_grpc.cli._project import ProjectError, project_folders
from nexus_grpc.config import Config

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``nexus gen``, ``nexus lint`` and ``nexus policy explain``."""
    gen = commands.add_parser("gen", help="compile the project's proto/ into generated/")
    gen.add_argument("--proto", help="contracts folder (default: <project>/proto)")
    gen.add_argument("--out", help="output folder (default: <project>/generated)")
    gen.add_argument("--check", action="store_true", help="only report stale files")
    gen.set_defaults(run=_gen)

    lint = commands.add_parser(
        "lint",
        help="name methods without an access policy, then buf lint, format and breaking",
    )
    lint.add_argument("--proto", help="contracts folder (default: <project>/proto)")
    lint.add_argument(
        "--against",
        help="previous contracts for buf breaking: a git ref or a folder (default: git HEAD)",
    )
    config_options(lint)
    lint.set_defaults(run=_lint)

    policy = commands.add_parser("policy", help="inspect access policies")
    policy.set_defaults(help_of=policy)
    policy_commands = policy.add_subparsers(title="policy commands")
    explain = policy_commands.add_parser("explain", help="print a method's effective policy")
    explain.add_argument("method", help="e.g. nexus.orders.v1.OrdersService/GetOrder")
    config_options(explain)
    explain.set_defaults(run=_policy_explain)


def _gen(args: argparse.Namespace) -> int:
    from nexus_grpc.codegen import CodegenError, OutputFolderError, find_stale, generate

    try:
        proto, out = project_folders(args.proto, args.out, Path.cwd())
    except ProjectError as error:
        print(f"nexus gen: {error}", file=sys.stderr)
        return 2
    try:
        if args.check:
            stale = find_stale(proto, out)
            for item in stale:
                print(f"{out / item.path}: {item.reason}")
            return 1 if stale else 0
        generated = generate(proto, out)
    except OutputFolderError as error:
        print(f"nexus gen: {error}", file=sys.stderr)
        return 2
    except CodegenError as error:
        print(f"nexus gen: {error}", file=sys.stderr)
        return 1
    removed = generated.removed
    for path in removed:
        print(f"nexus gen: removed {path} (no contract produces it)")
    print(
        f"nexus gen: wrote {len(generated.written)} files to {out}"
        + (f", removed {len(removed)}" if removed else "")
    )
    return 0


def _lint(args: argparse.Namespace) -> int:
    from nexus_grpc.codegen import CodegenError
    from nexus_grpc.lint import BufError, project_methods_without_policy, read_rules, run_buf_checks
    from nexus_grpc.lint.workspace import WorkspaceError

    try:
        proto, _ = project_folders(args.proto, "", Path.cwd())
    except ProjectError as error:
        print(f"nexus lint: {error}", file=sys.stderr)
        return 2
    failed: list[str] = []
    try:
        missing = set(project_methods_without_policy(proto))
    except CodegenError as error:
        print(f"nexus lint: {error}", file=sys.stderr)
        return 1
    # The project's own contracts are what lint is about; the plugins a host would load
    # (other installed plugins among them) only when a configuration is named (-c,
    # --plugin-dir, or $NEXUS_CONFIG, which an operator exports to mean that host), so
    # one broken plugin elsewhere does not fail every project's lint.
    named = args.config or args.plugin_dir or os.environ.get("NEXUS_CONFIG")
    if named and not _plugin_contracts_ok(config_from_args(args), missing):
        failed.append("plugins")
    for path in sorted(missing):
        print(f"{path}: no access policy; every call will be denied: {MISSING_POLICY_FIX}")
    if missing:
        failed.append("policies")
    try:
        report = run_buf_checks(proto, read_rules(proto), against=args.against, out=print)
    except (BufError, WorkspaceError) as error:
        print(f"nexus lint: {error}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"nexus lint: {note}", file=sys.stderr)
    failed += report.failed
    if failed:
        print(f"nexus lint: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    checks = ["policies", *report.ran]
    if report.against:
        checks[-1] += f" against {report.against}"
    print(f"nexus lint: OK (buf {report.version}: {', '.join(checks)} on {_shown(proto)})")
    return 0


def _shown(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def _plugin_contracts_ok(config: Config, missing: set[str]) -> bool:
    """Load the configured plugins; print why any fails, add their policy gaps to ``missing``."""
    from nexus_grpc.access.policy import methods_without_policy
    from nexus_grpc.plugins.contracts import load_contracts

    contracts = load_contracts(config)
    for error in contracts.errors:
        print(f"nexus lint: {error}", file=sys.stderr)
    missing.update(methods_without_policy(contracts.methods()))
    return not contracts.errors


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
