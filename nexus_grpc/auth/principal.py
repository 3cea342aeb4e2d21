"""Who is calling: the principal a verified token describes, and the current one."""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass, field

__all__ = ["ANONYMOUS", "Grant", "Principal", "Scope", "current_principal", "principal_var"]


class Scope(enum.IntEnum):
    """How far a permission reaches; a larger scope includes the smaller ones."""

    OWN = 1
    TEAM = 2
    ALL = 3

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``own``, ``team`` or ``all``; ValueError otherwise."""
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown scope {text!r}; expected own, team or all") from None


@dataclass(frozen=True)
class Grant:
    """A permission ``resource.action`` with a scope; ``*`` matches any resource or action."""

    resource: str
    action: str
    scope: Scope

    @classmethod
    def parse(cls, text: str) -> Grant:
        """From ``resource.action:scope`` (the form tokens carry)."""
        permission, _, scope = text.partition(":")
        resource, dot, action = permission.partition(".")
        if not dot or not resource or not action or not scope:
            raise ValueError(f"grant {text!r} is not resource.action:scope")
        return cls(resource, action, Scope.parse(scope))

    def __str__(self) -> str:
        return f"{self.resource}.{self.action}:{self.scope.name.lower()}"

    def covers(self, resource: str, action: str) -> bool:
        """Whether this grant is about ``resource.action``."""
        return self.resource in ("*", resource) and self.action in ("*", action)


#: Permissions whose scope one principal remembers.
_SCOPE_CACHE_LIMIT = 256


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    subject: str
    roles: tuple[str, ...] = ()
    grants: frozenset[Grant] = field(default_factory=frozenset)
    team: str = ""
    #: Token id (``jti``), for audit records.
    token_id: str = ""
    #: Expiry of the token, seconds since the epoch.
    expires_at: float = 0.0
    #: The user's token epoch when the token was issued (claim ``ep``); a token whose
    #: epoch is below its user's current one was revoked (nexus_grpc.auth.sessions).
    epoch: int = 0
    #: How the caller proved who it is: "token" (a bearer JWT), "certificate" (a
    #: verified client certificate listed in ``[auth.clients]``; no token id, epoch or
    #: expiry then) or "plugin" (a plugin's own identity, in-process).
    via: str = "token"
    # scope_for's answers: the access stage asks on every call, and the verifier hands
    # out one Principal per cached token, so each is worked out once per token.
    _scopes: dict[tuple[str, str], Scope | None] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def scope_for(self, resource: str, action: str) -> Scope | None:
        """The widest scope this principal holds for ``resource.action``; None if none."""
        permission = (resource, action)
        try:
            return self._scopes[permission]
        except KeyError:
            pass
        scopes = [grant.scope for grant in self.grants if grant.covers(resource, action)]
        widest = max(scopes) if scopes else None
        # Bounded: the contracts' permissions, and whatever a plugin asks about.
        if len(self._scopes) < _SCOPE_CACHE_LIMIT:
            self._scopes[permission] = widest
        return widest


#: The principal of the call being served; None when the caller is anonymous.
principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "nexus_principal", default=None
)

ANONYMOUS = "anonymous"


def current_principal() -> Principal | None:
    """The principal of the call being served, if the caller authenticated."""
    return principal_var.get()
