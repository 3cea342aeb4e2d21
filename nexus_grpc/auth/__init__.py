"""Authentication: principals, keys, tokens.

Security plugins (category ``security``) get a :class:`Tokens` in their context to
issue and check tokens; no other plugin does.
"""

from dataclasses import dataclass

from nexus_grpc.auth.keys import KeySet
from nexus_grpc.auth.principal import Grant, Principal, Scope, current_principal
from nexus_grpc.auth.sessions import REVOKED, SessionGuard, SessionSource
from nexus_grpc.auth.tokens import AuthError, TokenIssuer, TokenVerifier
from nexus_grpc.config import AuthConfig

__all__ = [
    "REVOKED",
    "AuthError",
    "Grant",
    "KeySet",
    "Principal",
    "Scope",
    "SessionGuard",
    "SessionSource",
    "TokenIssuer",
    "TokenVerifier",
    "Tokens",
    "current_principal",
]


@dataclass(frozen=True)
class Tokens:
    """The host's token tools handed to security plugins."""

    issuer: TokenIssuer
    verifier: TokenVerifier
    #: Where the user store reports session changes (and which it must attach to).
    sessions: SessionGuard
    #: The host's auth settings (login throttling among them).
    config: AuthConfig
