"""nexus.auth.v1.AuthService: logins, token refresh, users and roles."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import grpc
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc

from nexus_grpc import NotFoundError, PluginContext, StatusError
from nexus_grpc.audit import AuditLog, Outcome
from nexus_grpc.auth.principal import Scope, current_principal

from .accounts import Accounts

Context = Any


def _require_role_management(roles: Iterable[str]) -> None:
    """Granting roles is handing out their permissions: it needs roles.manage on all.

    Without this, a helpdesk role allowed to manage users could create admins.
    """
    if not list(roles):
        return
    principal = current_principal()
    if principal is None or principal.scope_for("roles", "manage") is not Scope.ALL:
        raise StatusError(
            grpc.StatusCode.PERMISSION_DENIED,
            "assigning roles needs permission roles.manage with scope all",
            reason="PERMISSION_REQUIRED",
            metadata={"permission": "roles.manage"},
        )


class AuthService(auth_pb2_grpc.AuthServiceServicer):
    """Issues tokens for users stored in the plugin's namespace."""

    def __init__(self, ctx: PluginContext) -> None:
        if ctx.tokens is None:
            raise RuntimeError("the auth plugin needs the host's token issuer (category security)")
        self._accounts = Accounts(ctx.storage)
        self._tokens = ctx.tokens
        self._audit: AuditLog | None = ctx.audit

    @property
    def accounts(self) -> Accounts:
        """The plugin's data (its start hook creates the built-in roles)."""
        return self._accounts

    async def Login(
        self, request: auth_pb2.LoginRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        """Tokens for a right username and password; UNAUTHENTICATED otherwise."""
        user = await self._accounts.authenticate(request.username, request.password)
        if user is None:
            await self._record(
                request.username, "auth.login", Outcome.DENIED, "bad credentials", context
            )
            # One message for unknown users, wrong passwords and disabled accounts.
            raise StatusError(
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid username or password",
                reason="LOGIN_FAILED",
            )
        response = await self._issue(user)
        await self._record(user.username, "auth.login", Outcome.SUCCEEDED, "", context)
        return response

    async def Refresh(
        self, request: auth_pb2.RefreshRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        """New tokens for a refresh token, which is spent by the call."""
        claims = await self._tokens.verifier.verify(request.refresh_token, token_type="refresh")
        try:
            await self._accounts.use_refresh_token(claims.token_id, claims.subject)
            user = await self._accounts.users.get(claims.subject)
            if user is None or user.disabled:
                raise StatusError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the account no longer exists or is disabled",
                    reason="ACCOUNT_DISABLED",
                )
        except StatusError as error:
            await self._record(
                claims.subject, "auth.refresh", Outcome.DENIED, error.message, context
            )
            raise
        response = await self._issue(user)
        await self._record(user.username, "auth.refresh", Outcome.SUCCEEDED, "", context)
        return response

    async def WhoAmI(
        self, request: auth_pb2.WhoAmIRequest, context: Context
    ) -> auth_pb2.WhoAmIResponse:
        """The caller as its token describes it."""
        principal = current_principal()
        if principal is None:  # the policy says authenticated; the pipeline ensured it
            raise StatusError(grpc.StatusCode.UNAUTHENTICATED, "authentication required")
        return auth_pb2.WhoAmIResponse(
            subject=principal.subject,
            roles=principal.roles,
            permissions=sorted(str(grant) for grant in principal.grants),
            team=principal.team,
        )

    async def CreateUser(
        self, request: auth_pb2.CreateUserRequest, context: Context
    ) -> auth_pb2.User:
        """A new user with an initial password."""
        _require_role_management(request.user.roles)
        return await self._accounts.create_user(request.user, request.password)

    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, context: Context
    ) -> auth_pb2.ListUsersResponse:
        """Users by name."""
        page = await self._accounts.users.list(
            order_by="username", page_size=request.page_size or 50, page_token=request.page_token
        )
        return auth_pb2.ListUsersResponse(users=page.items, next_page_token=page.next_page_token)

    async def SetUserRoles(
        self, request: auth_pb2.SetUserRolesRequest, context: Context
    ) -> auth_pb2.User:
        """Replace a user's roles; takes effect at the user's next login or refresh."""
        _require_role_management(request.roles)
        await self._accounts.check_roles(request.roles)
        async with self._accounts.storage.transaction() as unit:
            users = unit.repository(auth_pb2.User, id_field="username")
            user = await users.get(request.username, for_update=True)
            if user is None:
                raise NotFoundError("user", request.username)
            del user.roles[:]
            user.roles.extend(request.roles)
            return await users.update(user)

    async def PutRole(self, request: auth_pb2.PutRoleRequest, context: Context) -> auth_pb2.Role:
        """Create or replace a role."""
        existing = await self._accounts.roles.get(request.role.name)
        if existing is None:
            return await self._accounts.roles.create(request.role)
        return await self._accounts.roles.update(request.role)

    async def ListRoles(
        self, request: auth_pb2.ListRolesRequest, context: Context
    ) -> auth_pb2.ListRolesResponse:
        """Every role."""
        roles = []
        token = ""
        while True:
            page = await self._accounts.roles.list(order_by="name", page_size=200, page_token=token)
            roles.extend(page.items)
            token = page.next_page_token
            if not token:
                return auth_pb2.ListRolesResponse(roles=roles)

    async def _issue(self, user: auth_pb2.User) -> auth_pb2.LoginResponse:
        principal = await self._accounts.principal_of(user)
        access, expires_in = self._tokens.issuer.issue_access(principal)
        token_id = uuid.uuid4().hex
        refresh, refresh_ttl = self._tokens.issuer.issue_refresh(user.username, token_id)
        await self._accounts.remember_refresh_token(token_id, user.username, refresh_ttl)
        return auth_pb2.LoginResponse(
            access_token=access, refresh_token=refresh, token_type="Bearer", expires_in=expires_in
        )

    async def _record(
        self, actor: str, action: str, outcome: int, reason: str, context: Context
    ) -> None:
        if self._audit is not None:
            await self._audit.record(
                actor=actor or "anonymous",
                action=action,
                target="/nexus.auth.v1.AuthService",
                outcome=outcome,
                reason=reason,
                context=context,
            )
