"""``nexus users create``: the first admin, written straight into the auth plugin's storage.

The auth plugin owns users; this imports it through the same discovery the host uses
and calls its ``Accounts``, so the CLI and the running service share one code path.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from nexus_grpc.config import Config
from nexus_grpc.errors import StatusError
from nexus_grpc.plugins.discovery import discover
from nexus_grpc.plugins.loader import PluginError, import_plugin
from nexus_grpc.storage import Storage, make_private_dir

__all__ = ["AUTH_PLUGIN", "UserCreationError", "create_user"]

AUTH_PLUGIN = "auth"


class UserCreationError(Exception):
    """The user could not be created; the message says why."""


async def create_user(config: Config, username: str, password: str, roles: list[str]) -> None:
    """Create ``username`` with ``roles`` in the auth plugin's namespace."""
    candidate = next(
        (
            c
            for c in discover(
                config.plugins.dirs,
                entry_points=config.plugins.entry_points,
                bundled=config.plugins.bundled,
            )
            if c.name == AUTH_PLUGIN
        ),
        None,
    )
    if candidate is None or candidate.manifest is None:
        raise UserCreationError(
            f"no {AUTH_PLUGIN!r} plugin in {', '.join(config.plugins.dirs) or 'no folder'}; "
            f'set plugins.bundled = ["{AUTH_PLUGIN}"] to use the bundled one'
        )
    try:
        import_plugin(candidate)
    except PluginError as error:
        raise UserCreationError(str(error)) from None
    module = sys.modules[candidate.module]
    from nexus.auth.v1 import auth_pb2

    await asyncio.to_thread(make_private_dir, Path(config.data_dir))
    storage = await Storage.connect(
        config.storage_url(), connect_timeout=config.storage.connect_timeout
    )
    try:
        accounts = module.Accounts(storage.namespace(candidate.manifest.namespace))
        await accounts.ensure_built_in_roles()
        await accounts.create_user(auth_pb2.User(username=username, roles=roles), password)
    except StatusError as error:
        raise UserCreationError(error.message) from None
    finally:
        await storage.close()
