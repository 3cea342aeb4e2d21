"""``nexus users create``: the first admin, written straight into the auth plugin's storage.

The auth plugin owns users; this imports it through the same discovery the host uses
and calls its ``Accounts``, so the CLI and the running service share one code path.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from nexus_grpc.config import Config, PluginsConfig
from nexus_grpc.errors import StatusError
from nexus_grpc.plugins.discovery import Candidate, discover_configured, excluded_by, searched
from nexus_grpc.plugins.loader import PluginError, import_plugin
from nexus_grpc.storage import make_private_dir
from nexus_grpc.storage.opening import StorageStartError, open_storage

__all__ = ["AUTH_PLUGIN", "UserCreationError", "create_user"]

AUTH_PLUGIN = "auth"


class UserCreationError(Exception):
    """The user could not be created; the message says why."""


def _auth_plugin(settings: PluginsConfig) -> Candidate:
    """The auth plugin as the host would find it; why not, naming where it looked."""
    found = [c for c in discover_configured(settings) if c.name == AUTH_PLUGIN]
    if not found:
        raise UserCreationError(
            f"no {AUTH_PLUGIN!r} plugin in {searched(settings)}; pass --plugin-dir or "
            "-c with the host's config, or install it"
        )
    if len(found) > 1:
        raise UserCreationError(
            f"plugin name {AUTH_PLUGIN!r} is used by both {found[0].source} and "
            f"{found[1].source}; the host loads neither"
        )
    candidate = found[0]
    if candidate.manifest is None or candidate.error:
        raise UserCreationError(candidate.error or f"{candidate.source}: no manifest")
    setting = excluded_by(settings, AUTH_PLUGIN)
    if setting is not None:
        raise UserCreationError(
            f"the {AUTH_PLUGIN!r} plugin ({candidate.source}) is turned off by {setting}; enable it"
        )
    return candidate


async def create_user(config: Config, username: str, password: str, roles: list[str]) -> None:
    """Create ``username`` with ``roles`` in the auth plugin's namespace."""
    candidate = _auth_plugin(config.plugins)
    try:
        import_plugin(candidate)
    except PluginError as error:
        raise UserCreationError(str(error)) from None
    module = sys.modules[candidate.module]
    from nexus.auth.v1 import auth_pb2

    await asyncio.to_thread(make_private_dir, Path(config.data_dir))
    try:
        storage = await open_storage(config)
    except StorageStartError as error:
        raise UserCreationError(str(error)) from None
    try:
        assert candidate.manifest is not None  # _auth_plugin made sure
        accounts = module.Accounts(storage.namespace(candidate.manifest.namespace))
        await accounts.ensure_built_in_roles()
        await accounts.create_user(auth_pb2.User(username=username, roles=roles), password)
    except StatusError as error:
        raise UserCreationError(error.message) from None
    finally:
        await storage.close()
