"""Users, roles and refresh tokens in the auth plugin's storage namespace.

Kept apart from the gRPC servicer so the ``nexus users`` command can create the first
admin with the same code, straight against storage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import grpc
from google.protobuf import timestamp_pb2
from nexus.auth.v1 import auth_pb2, records_pb2
from nexus.options.v1 import options_pb2

from nexus_grpc import AlreadyExistsError, FieldViolation, InvalidArgumentError, StatusError, quote
from nexus_grpc.auth.principal import Grant, Principal, Scope
from nexus_grpc.storage import Namespace

from .passwords import hash_password, verify_password
from .sessions import bump_epoch, ensure_admin_lock, lock_admins

#: Roles every installation has; their grants can be changed with PutRole.
BUILT_IN_ROLES = (
    auth_pb2.Role(
        name="admin", grants=[auth_pb2.Grant(permission="*.*", scope=options_pb2.SCOPE_ALL)]
    ),
    auth_pb2.Role(
        name="customer",
        grants=[
            auth_pb2.Grant(permission=f"orders.{action}", scope=options_pb2.SCOPE_OWN)
            for action in ("create", "read", "update")
        ],
    ),
)

_SCOPES = {
    options_pb2.SCOPE_OWN: Scope.OWN,
    options_pb2.SCOPE_TEAM: Scope.TEAM,
    options_pb2.SCOPE_ALL: Scope.ALL,
}

MIN_PASSWORD = 12


class Accounts:
    """The plugin's data: users, password hashes, roles, refresh tokens."""

    def __init__(self, storage: Namespace) -> None:
        self.storage = storage
        self.users = storage.repository(auth_pb2.User, id_field="username")
        self.passwords = storage.repository(records_pb2.PasswordRecord)
        self.roles = storage.repository(auth_pb2.Role, id_field="name")
        self.refresh_tokens = storage.repository(records_pb2.RefreshRecord)

    async def ensure_built_in_roles(self) -> None:
        """Create the built-in roles that do not exist yet (never overwrite edits)."""
        for role in BUILT_IN_ROLES:
            if await self.roles.get(role.name) is None:
                # Another instance may create it at the same moment.
                with contextlib.suppress(AlreadyExistsError):
                    await self.roles.create(role)

    async def create_user(self, user: auth_pb2.User, password: str) -> auth_pb2.User:
        """Store a new user with its password hash, in one transaction."""
        if len(password) < MIN_PASSWORD:
            raise InvalidArgumentError(
                [FieldViolation("password", f"at least {MIN_PASSWORD} characters")]
            )
        await self.check_roles(user.roles, "user.roles")
        stored = auth_pb2.User()
        stored.CopyFrom(user)
        stored.create_time.CopyFrom(_now())
        hashed = await hash_password(password)
        await ensure_admin_lock(self.storage)
        async with self.storage.transaction() as unit:
            # Granting roles changes who is an administrator: under the lock of every
            # such change, so a concurrent PutRole counts this user or waits for it.
            await lock_admins(unit)
            created = await unit.repository(auth_pb2.User, id_field="username").create(stored)
            await unit.repository(records_pb2.PasswordRecord).create(
                records_pb2.PasswordRecord(id=user.username, hash=hashed)
            )
            # A deleted user of the same name left a revoked record: the new user starts
            # above its epoch, so the old user's tokens stay void and the new one's work.
            await bump_epoch(unit, user.username, revoked=False)
        return created

    async def check_roles(self, names: Iterable[str], field: str = "roles") -> None:
        """INVALID_ARGUMENT naming the first role that does not exist.

        ``field`` is where the request holds the names (``roles`` or ``user.roles``):
        a violation names the request's own field.
        """
        for index, name in enumerate(names):
            if await self.roles.get(name) is None:
                raise InvalidArgumentError(
                    [FieldViolation(f"{field}[{index}]", f"role {quote(name)} does not exist")]
                )

    async def authenticate(self, username: str, password: str) -> auth_pb2.User | None:
        """The user when the password is right and the account enabled; None otherwise."""
        # Both reads happen whether or not the user exists, so response times do not
        # tell which user names are taken.
        user = await self.users.get(username or "-")
        record = await self.passwords.get(username or "-")
        valid = await verify_password(password, record.hash if record and user else None)
        if not valid or user is None or user.disabled:
            return None
        return user

    async def principal_of(self, user: auth_pb2.User, token_id: str = "") -> Principal:
        """The principal a token for ``user`` describes: its roles' grants."""
        grants = set()
        for name in user.roles:
            role = await self.roles.get(name)
            for grant in role.grants if role else ():
                resource, _, action = grant.permission.partition(".")
                grants.add(Grant(resource, action, _SCOPES.get(grant.scope, Scope.OWN)))
        return Principal(
            subject=user.username,
            roles=tuple(user.roles),
            grants=frozenset(grants),
            team=user.team,
            token_id=token_id,
        )

    async def use_refresh_token(self, token_id: str, username: str) -> None:
        """Mark a refresh token used; a second use revokes all of the user's tokens."""
        async with self.storage.transaction() as unit:
            tokens = unit.repository(records_pb2.RefreshRecord)
            record = await tokens.get(token_id, for_update=True)
            if record is None or record.username != username:
                raise _refused()
            if not record.revoked:
                record.revoked = True
                await tokens.update(record)
                return
        # Reuse of a spent token: someone else may hold a copy; end every session.
        await self.revoke_all(username)
        raise _refused()

    async def revoke_all(self, username: str) -> None:
        """Revoke every refresh token of ``username``."""
        token = ""
        while True:
            page = await self.refresh_tokens.list(
                filter={"username": username}, page_size=200, page_token=token
            )
            for record in page.items:
                if not record.revoked:
                    record.revoked = True
                    await self.refresh_tokens.update(record)
            token = page.next_page_token
            if not token:
                return

    async def remember_refresh_token(self, token_id: str, username: str, ttl: int) -> None:
        """Store a newly issued refresh token."""
        expire = _now()
        expire.seconds += ttl
        await self.refresh_tokens.create(
            records_pb2.RefreshRecord(id=token_id, username=username, expire_time=expire)
        )


def _refused() -> StatusError:
    return StatusError(
        grpc.StatusCode.UNAUTHENTICATED,
        "the refresh token is no longer valid; log in again",
        reason="REFRESH_TOKEN_INVALID",
    )


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp
