"""``nexus new plugin``: scaffold a plugin project in its own folder."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``nexus new plugin``."""
    new = commands.add_parser("new", help="create a new project from a template")
    new.set_defaults(help_of=new)
    kinds = new.add_subparsers(title="templates")
    plugin = kinds.add_parser(
        "plugin",
        help="a plugin project: contract, servicer, manifest, tests, buf.yaml, README",
        description=(
            "Create a plugin project in PATH (default ./NAME): a contract with REST routes, "
            "policies and field rules, a servicer using storage and publishing an event, "
            "tests on nexus_grpc.testing, buf.yaml, pyproject.toml with the nexus.plugins "
            "entry point, and its stubs (nexus gen)."
        ),
    )
    plugin.add_argument(
        "name", help="plugin name: lower-case letters, digits and _, starting with a letter"
    )
    plugin.add_argument("--dir", help="the project folder to create (default: ./NAME)")
    plugin.add_argument(
        "--package",
        dest="proto_package",
        help="protobuf package of the contract (default: NAME.v1), e.g. acme.notes.v1",
    )
    plugin.add_argument(
        "--force", action="store_true", help="write into a folder that is not empty"
    )
    plugin.add_argument(
        "--no-gen", action="store_true", help="do not run `nexus gen` in the new project"
    )
    plugin.set_defaults(run=_new_plugin)


def _new_plugin(args: argparse.Namespace) -> int:
    from nexus_grpc.scaffold import ScaffoldError, create_plugin, plugin_names

    try:
        names = plugin_names(args.name, args.proto_package)
        target = Path(args.dir) if args.dir else Path(args.name)
        written = create_plugin(names, target, force=args.force)
    except (ScaffoldError, OSError) as error:
        print(f"nexus new plugin: {error}", file=sys.stderr)
        return 2
    print(f"nexus new plugin: wrote {len(written)} files to {target}")
    generated = not args.no_gen and _generate(target)
    folder = shlex.quote(str(target))
    steps = [f"cd {folder}"]
    if not generated:
        steps.append("nexus gen                # compile proto/ into generated/")
    steps += [
        "pip install -e '.[test]' # the plugin, found by `nexus serve` via its entry point",
        "pytest                   # its tests, on a real host",
        "nexus lint               # policies, buf lint, format and breaking checks",
        "nexus serve",
    ]
    print("Next steps:\n" + "\n".join(f"  {step}" for step in steps))
    return 0 if generated or args.no_gen else 1


def _generate(target: Path) -> bool:
    """Run ``nexus gen`` in the new project; whether it worked."""
    from nexus_grpc.codegen import CodegenError, generate

    try:
        written = generate(target / "proto", target / "generated").written
    except CodegenError as error:
        print(f"nexus new plugin: nexus gen failed: {error}", file=sys.stderr)
        return False
    print(f"nexus gen: wrote {len(written)} files to {target / 'generated'}")
    return True
