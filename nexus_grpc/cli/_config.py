"""``-c/--config``, ``--plugin-dir``, ``--data-dir`` and ``--storage-url``: how every
command that reads the host's configuration finds it, so each sees the plugins and the
storage ``nexus serve`` would."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from nexus_grpc.config import Config, ConfigError, load_config

__all__ = ["config_from_args", "config_options"]


def config_options(parser: argparse.ArgumentParser) -> None:
    """Add ``-c/--config``, ``--plugin-dir`` (repeatable), ``--data-dir`` and
    ``--storage-url`` to ``parser``."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="TOML config file (default: $NEXUS_CONFIG, else embedded defaults)",
    )
    parser.add_argument(
        "--plugin-dir",
        action="append",
        metavar="DIR",
        help="plugin folder (repeatable); replaces plugins.dirs",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="override data_dir (the SQLite file, generated keys)",
    )
    parser.add_argument(
        "--storage-url",
        metavar="URL",
        help="override storage.url (default: SQLite in the data folder)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration ``args`` name, ``--plugin-dir``, ``--data-dir`` and
    ``--storage-url`` applied; exits 2 saying what is wrong with it. ``$NEXUS_CONFIG``
    is read now, not when the parser was built."""
    path = args.config or os.environ.get("NEXUS_CONFIG") or None
    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"nexus: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.plugin_dir:
        config = replace(config, plugins=replace(config.plugins, dirs=tuple(args.plugin_dir)))
    if args.data_dir:
        config = replace(config, data_dir=args.data_dir)
    if args.storage_url:
        config = replace(config, storage=replace(config.storage, url=args.storage_url))
    return config
