"""``nexus plugins``: list a running host's plugins, and load, unload or reload one.

``load`` takes a plugin name, or the path of a plugin folder whose manifest names it:
the host loads a plugin only from its own configured plugin folders and entry points,
so the path says which plugin is meant, never where the host reads code from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nexus_grpc.cli._args import positive
from nexus_grpc.cli.remote import admin_call, host_options, print_table

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``nexus plugins`` and its ``load``, ``unload`` and ``reload`` commands."""
    plugins = commands.add_parser(
        "plugins",
        help="list, load, unload or reload the plugins of a running host",
        description="Without a command: list the plugins of a running host. Options of "
        "load, unload and reload go after the command.",
    )
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    host_options(plugins)
    plugins.set_defaults(run=_list)
    actions = plugins.add_subparsers(title="commands")

    load = actions.add_parser(
        "load",
        help="load a plugin of the host's plugin folders or entry points",
        description="Load a plugin into the running host (hot swap must be on there).",
    )
    load.add_argument(
        "plugin", metavar="PATH|NAME", help="plugin name, or a plugin folder (its manifest's name)"
    )
    _hash_option(load)
    _common(load)
    load.set_defaults(run=_load)

    unload = actions.add_parser(
        "unload", help="drain and stop a plugin", description="Unload a plugin from the host."
    )
    unload.add_argument("plugin", metavar="NAME", help="plugin name")
    unload.add_argument(
        "--cascade", action="store_true", help="unload the plugins requiring it first"
    )
    _drain_option(unload)
    _common(unload)
    unload.set_defaults(run=_unload)

    reload = actions.add_parser(
        "reload",
        help="swap a plugin for its code as it is now on disk",
        description="Reload a plugin: calls in flight finish on the old code, new calls "
        "get the new code; a new version that fails leaves the old one serving.",
    )
    reload.add_argument("plugin", metavar="NAME", help="plugin name")
    _hash_option(reload)
    _drain_option(reload)
    _common(reload)
    reload.set_defaults(run=_reload)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the change as JSON")
    host_options(parser)
    # Swaps wait for the old version's calls: give them longer than a read.
    parser.set_defaults(timeout=60.0)


def _hash_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expected-hash",
        default="",
        help="refuse unless the plugin's code hashes to this (sha256:<hex>, as "
        "`nexus plugins` shows it): every instance then loads the same code",
    )


def _drain_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--drain-timeout",
        type=positive(float),
        help="seconds to let calls in flight finish (default: the host's "
        "plugins.hot_swap.drain_timeout); the rest end UNAVAILABLE",
    )


def _name(plugin: str) -> str | None:
    """The plugin name ``plugin`` stands for: itself, or a folder's manifest name."""
    path = Path(plugin)
    if "/" not in plugin and not path.is_dir():
        return plugin
    from nexus_grpc.plugins.manifest import MANIFEST_FILE, ManifestError, parse_manifest

    try:
        manifest = parse_manifest(path / MANIFEST_FILE)
    except ManifestError as error:
        print(f"nexus: {error}", file=sys.stderr)
        return None
    return manifest.name


def _millis(args: argparse.Namespace) -> int:
    return int(args.drain_timeout * 1000) if args.drain_timeout else 0


def _load(args: argparse.Namespace) -> int:
    from nexus.admin.v1 import admin_pb2

    name = _name(args.plugin)
    if name is None:
        return 1
    request = admin_pb2.LoadPluginRequest(name=name, expected_code_hash=args.expected_hash)
    return _report(args, "loaded", admin_call(args, "LoadPlugin", request))


def _unload(args: argparse.Namespace) -> int:
    from nexus.admin.v1 import admin_pb2

    request = admin_pb2.UnloadPluginRequest(
        name=args.plugin, cascade=args.cascade, drain_timeout_millis=_millis(args)
    )
    return _report(args, "unloaded", admin_call(args, "UnloadPlugin", request))


def _reload(args: argparse.Namespace) -> int:
    from nexus.admin.v1 import admin_pb2

    request = admin_pb2.ReloadPluginRequest(
        name=args.plugin, expected_code_hash=args.expected_hash, drain_timeout_millis=_millis(args)
    )
    return _report(args, "reloaded", admin_call(args, "ReloadPlugin", request))


def _report(args: argparse.Namespace, done: str, change: Any) -> int:
    """Print what changed: the plugin's version and generation, then every service,
    method and HTTP route added (+) or removed (-)."""
    if change is None:
        return 1
    if args.json:
        from google.protobuf import json_format

        print(json.dumps(json_format.MessageToDict(change), indent=2))
        return 0
    plugin = change.plugin
    what = ", ".join(change.plugins)
    if done == "unloaded":
        print(f"unloaded {what}")
    else:
        print(
            f"{done} {plugin.name} {plugin.version}: generation {plugin.generation}, "
            f"code {plugin.code_hash}, in {change.swap_millis:.1f} ms"
        )
    lines = [
        *(f"  + service {s}" for s in change.services_added),
        *(f"  - service {s}" for s in change.services_removed),
        *(f"  + method  {m}" for m in change.methods_added),
        *(f"  - method  {m}" for m in change.methods_removed),
        *(f"  + route   {r}" for r in change.http_routes_added),
        *(f"  - route   {r}" for r in change.http_routes_removed),
    ]
    print("\n".join(lines) if lines else "  no service, method or route added or removed")
    if change.calls_cut:
        print(f"  {change.calls_cut} call(s) still running after the drain ended UNAVAILABLE")
    return 0


def _list(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from nexus.admin.v1 import admin_pb2

    response = admin_call(args, "ListPlugins", admin_pb2.ListPluginsRequest())
    if response is None:
        return 1
    if args.json:
        print(json.dumps(json_format.MessageToDict(response), indent=2))
        return 0
    rows = [("NAME", "VERSION", "CATEGORY", "STATE", "GEN", "CODE", "SERVICES")]
    for plugin in response.plugins:
        rows.append(
            (
                plugin.name,
                plugin.version or "-",
                admin_pb2.Category.Name(plugin.category).removeprefix("CATEGORY_").lower(),
                admin_pb2.PluginState.Name(plugin.state).removeprefix("PLUGIN_STATE_"),
                str(plugin.generation) if plugin.generation else "-",
                # The first 12 hex digits identify the code; --json has the whole hash.
                plugin.code_hash[:19] if plugin.code_hash else "-",
                ", ".join(
                    f"{s.name}{'' if s.serving else ' (not serving)'}" for s in plugin.services
                )
                or "-",
            )
        )
    print_table(rows)
    for plugin in response.plugins:
        if plugin.error:
            print(f"\n{plugin.name}: {plugin.error}")
        if plugin.swap_error:
            print(
                f"\n{plugin.name}: last load/reload failed, the previous version serves on: "
                f"{plugin.swap_error}"
            )
    return 0
