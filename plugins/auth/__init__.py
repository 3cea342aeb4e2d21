"""The auth plugin: users, roles and permissions; password logins; JWTs."""

from nexus_grpc import Plugin, PluginContext

from .accounts import Accounts
from .service import AuthService


async def start(ctx: PluginContext) -> None:
    """Create the built-in roles on first start."""
    await Accounts(ctx.storage).ensure_built_in_roles()


plugin = Plugin(services=[AuthService], on_start=start)

__all__ = ["Accounts", "AuthService", "plugin"]
