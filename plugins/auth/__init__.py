"""The auth plugin: users, roles and permissions; password logins; JWTs."""

from nexus_grpc import Plugin, PluginContext

from .accounts import Accounts
from .service import AuthService
from .sessions import SessionStore

#: The session source each running instance of the plugin handed the host.
_sources: dict[int, SessionStore] = {}


async def start(ctx: PluginContext) -> None:
    """Create the built-in roles on first start; become the host's authority on
    whether a user's tokens are still good (roles changed, disabled, deleted)."""
    await Accounts(ctx.storage).ensure_built_in_roles()
    if ctx.tokens is not None:
        source = _sources[id(ctx)] = SessionStore(ctx.storage)
        ctx.tokens.sessions.attach(source)


async def stop(ctx: PluginContext) -> None:
    """Stop answering for sessions: the host no longer asks a store that is going away."""
    source = _sources.pop(id(ctx), None)
    if source is not None and ctx.tokens is not None:
        ctx.tokens.sessions.detach(source)


plugin = Plugin(services=[AuthService], on_start=start, on_stop=stop)

__all__ = ["Accounts", "AuthService", "plugin"]
