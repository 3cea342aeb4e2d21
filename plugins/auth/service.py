"""nexus.auth.v1.AuthService: logins, token refresh, users and roles."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import grpc
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc, records_pb2

from nexus_grpc import NotFoundError, PluginContext, StatusError
from nexus_grpc.access.audit import AuditLog, Outcome
from nexus_grpc.auth.principal import Scope, current_principal

from .accounts import Accounts
from .sessions import (
    SessionStore,
    bump_epoch,
    check_admins_left,
    ensure_admin_lock,
    lock_admins,
)
from .throttle import LoginThrottle, forget_known_sources

Context = Any


def _require_user_management(action: str) -> None:
    """PERMISSION_DENIED unless the caller may manage users everywhere."""
    principal = current_principal()
    if principal is None or principal.scope_for("users", "manage") is not Scope.ALL:
        raise StatusError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{action} of another user needs permission users.manage with scope all",
            reason="PERMISSION_REQUIRED",
            metadata={"permission": "users.manage"},
        )


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
        self._sessions = SessionStore(ctx.storage)
        self._throttle = LoginThrottle(ctx.storage, ctx.tokens.config, ctx.audit)

    @property
    def sessions(self) -> SessionStore:
        """The epochs the host checks tokens against (its SessionSource)."""
        return self._sessions

    @property
    def accounts(self) -> Accounts:
        """The plugin's data (its start hook creates the built-in roles)."""
        return self._accounts

    async def Login(
        self, request: auth_pb2.LoginRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        """Tokens for a right username and password; UNAUTHENTICATED otherwise.

        RESOURCE_EXHAUSTED (with RetryInfo) while the user name is locked after
        repeated failures, whether or not such a user exists (see throttle.py).
        """
        await self._throttle.admit(request.username, context)
        user = await self._accounts.authenticate(request.username, request.password)
        if user is None:
            # Aggregated: one audit record per streak and lockout, not per attempt.
            await self._throttle.failed(request.username, context)
            # One message for unknown users, wrong passwords and disabled accounts.
            raise StatusError(
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid username or password",
                reason="LOGIN_FAILED",
            )
        await self._throttle.succeeded(user.username, context)
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
            floor = await self._sessions.session_floor(claims.subject)
            if user is None or user.disabled or claims.epoch < floor:
                raise StatusError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the account no longer exists, is disabled, or was logged out "
                    "everywhere; log in again",
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
        created = await self._accounts.create_user(request.user, request.password)
        # A host may still hold the epoch of a deleted user of the same name.
        await self._changed(created.username)
        return created

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
        """Replace a user's roles; the user's tokens issued before stop working at once."""
        _require_role_management(request.roles)
        await self._accounts.check_roles(request.roles)

        def change(user: auth_pb2.User) -> None:
            del user.roles[:]
            user.roles.extend(request.roles)

        return await self._change_user(request.username, change)

    async def DisableUser(
        self, request: auth_pb2.DisableUserRequest, context: Context
    ) -> auth_pb2.User:
        """Disable a user: no login, no refresh, and its tokens stop working at once."""

        def change(user: auth_pb2.User) -> None:
            user.disabled = True

        return await self._change_user(request.username, change, revoked=True)

    async def EnableUser(
        self, request: auth_pb2.EnableUserRequest, context: Context
    ) -> auth_pb2.User:
        """Enable a user again; its tokens from before stay void (it logs in afresh)."""

        def change(user: auth_pb2.User) -> None:
            user.disabled = False

        return await self._change_user(request.username, change, revoked=False)

    async def DeleteUser(
        self, request: auth_pb2.DeleteUserRequest, context: Context
    ) -> auth_pb2.DeleteUserResponse:
        """Delete a user and its password; its tokens stop working at once.

        Its session record stays (revoked), so its tokens are refused until they
        expire, and a user created later with the same name starts above its epoch.
        """
        await ensure_admin_lock(self._accounts.storage)
        async with self._accounts.storage.transaction() as unit:
            await lock_admins(unit)
            users = unit.repository(auth_pb2.User, id_field="username")
            if await users.get(request.username, for_update=True) is None:
                raise NotFoundError("user", request.username)
            await check_admins_left(unit, changed={request.username: None})
            await users.delete(request.username)
            await unit.repository(records_pb2.PasswordRecord).delete(request.username)
            # A user created later under this name does not inherit its login addresses.
            await forget_known_sources(unit, request.username)
            await bump_epoch(unit, request.username, revoked=True)
        await self._changed(request.username)
        return auth_pb2.DeleteUserResponse()

    async def RevokeSessions(
        self, request: auth_pb2.RevokeSessionsRequest, context: Context
    ) -> auth_pb2.RevokeSessionsResponse:
        """Log a user out everywhere (the caller when no user is named)."""
        principal = current_principal()
        if principal is None:  # the policy says authenticated; the pipeline ensured it
            raise StatusError(grpc.StatusCode.UNAUTHENTICATED, "authentication required")
        username = request.username or principal.subject
        if username != principal.subject:
            _require_user_management("logging out")
        async with self._accounts.storage.transaction() as unit:
            await bump_epoch(unit, username)
        await self._changed(username)
        await self._accounts.revoke_all(username)
        await self._record(
            principal.subject, "auth.revoke_sessions", Outcome.SUCCEEDED, username, context
        )
        return auth_pb2.RevokeSessionsResponse()

    async def _change_user(
        self,
        username: str,
        change: Callable[[auth_pb2.User], None],
        *,
        revoked: bool | None = None,
    ) -> auth_pb2.User:
        """Apply ``change`` to a user, refuse it if no administrator would be left,
        and void the user's tokens: one transaction, then every host is told."""
        await ensure_admin_lock(self._accounts.storage)
        async with self._accounts.storage.transaction() as unit:
            await lock_admins(unit)
            users = unit.repository(auth_pb2.User, id_field="username")
            user = await users.get(username, for_update=True)
            if user is None:
                raise NotFoundError("user", username)
            change(user)
            await check_admins_left(unit, changed={username: user})
            updated = await users.update(user)
            await bump_epoch(unit, username, revoked=revoked)
        await self._changed(username)
        return updated

    async def _changed(self, username: str) -> None:
        await self._tokens.sessions.changed(username)

    async def PutRole(self, request: auth_pb2.PutRoleRequest, context: Context) -> auth_pb2.Role:
        """Create or replace a role; tokens of the users holding it stop working at once
        (their permissions were copied into them), and the last administrator's role
        cannot lose its power."""
        name = request.role.name
        await ensure_admin_lock(self._accounts.storage)
        async with self._accounts.storage.transaction() as unit:
            await lock_admins(unit)
            roles = unit.repository(auth_pb2.Role, id_field="name")
            existing = await roles.get(name, for_update=True)
            if existing is None:
                return await roles.create(request.role)
            await check_admins_left(unit, roles={name: request.role})
            stored = await roles.update(request.role)
            holders = await _holders(unit, name)
            for username in holders:
                await bump_epoch(unit, username)
        for username in holders:
            await self._changed(username)
        return stored

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
        # The epoch is read first, the user's roles after: a change committed in
        # between raised the epoch, so a token with the old roles has the old epoch
        # and is refused, never one with the old roles and the new epoch.
        epoch = await self._sessions.epoch(user.username)
        current = await self._accounts.users.get(user.username)
        if current is None or current.disabled:
            raise StatusError(
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid username or password",
                reason="LOGIN_FAILED",
            )
        principal = replace(await self._accounts.principal_of(current), epoch=epoch)
        access, expires_in = self._tokens.issuer.issue_access(principal)
        token_id = uuid.uuid4().hex
        refresh, refresh_ttl = self._tokens.issuer.issue_refresh(
            user.username, token_id, epoch=epoch
        )
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


async def _holders(unit: Any, role: str) -> list[str]:
    """Names of the users holding ``role``."""
    users = unit.repository(auth_pb2.User, id_field="username")
    names: list[str] = []
    token = ""
    while True:
        page = await users.list(order_by="username", page_size=200, page_token=token)
        names.extend(user.username for user in page.items if role in user.roles)
        token = page.next_page_token
        if not token:
            return names
