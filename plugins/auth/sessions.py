"""Token epochs and the last administrator: the auth plugin's side of revocation.

Every user may have a :class:`SessionRecord` (epoch, revoked). Tokens carry the
epoch of their user; a change that must void them (roles, disable, delete, "log out
everywhere") raises the epoch in the same transaction as the change itself, and the
host's :class:`~nexus_grpc.auth.SessionGuard` refuses tokens below it. A user without
a record has epoch 0 (created before epochs existed, or never changed since).

Changes that could leave nobody able to administer the installation are refused:
each of them takes the same lock record first (so two admins demoting each other at
once cannot both succeed) and counts the enabled administrators left.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from nexus.auth.v1 import auth_pb2, records_pb2
from nexus.options.v1 import options_pb2

from nexus_grpc import StatusError
from nexus_grpc.auth import REVOKED
from nexus_grpc.storage import Namespace

__all__ = [
    "ADMIN_LOCK",
    "SessionStore",
    "bump_epoch",
    "check_admins_left",
    "is_admin_role",
    "lock_admins",
]

#: Id of the record every admin-affecting transaction locks first. "~" cannot start
#: a user name (see User.username's pattern), so it names no user.
ADMIN_LOCK = "~admins"

_ADMIN_PERMISSIONS = (("users", "manage"), ("roles", "manage"))


def is_admin_role(role: auth_pb2.Role) -> bool:
    """Whether ``role`` lets its holder manage users and roles everywhere.

    Such a user can give access back to anyone; with none left, nobody can.
    """

    def covers(resource: str, action: str) -> bool:
        return any(
            grant.permission in (f"{resource}.{action}", f"{resource}.*", f"*.{action}", "*.*")
            and grant.scope == options_pb2.SCOPE_ALL
            for grant in role.grants
        )

    return all(covers(resource, action) for resource, action in _ADMIN_PERMISSIONS)


class SessionStore:
    """Reads epochs for the host (it is the host's :class:`SessionSource`)."""

    def __init__(self, storage: Namespace) -> None:
        self._records = storage.repository(records_pb2.SessionRecord)

    async def session_floor(self, subject: str) -> int:
        """The user's epoch; REVOKED for a disabled or deleted user."""
        record = await self._records.get(subject)
        if record is None:
            return 0
        return REVOKED if record.revoked else record.epoch

    async def epoch(self, username: str) -> int:
        """The epoch new tokens of ``username`` carry."""
        record = await self._records.get(username)
        return record.epoch if record is not None else 0


async def bump_epoch(unit: object, username: str, *, revoked: bool | None = None) -> int:
    """Raise ``username``'s epoch in transaction ``unit`` (and set ``revoked`` if given).

    Every token issued so far carries a lower epoch, so the host refuses it.
    """
    records = unit.repository(records_pb2.SessionRecord)  # type: ignore[attr-defined]
    record = await records.get(username, for_update=True)
    if record is None:
        record = records_pb2.SessionRecord(id=username, epoch=1, revoked=bool(revoked))
        await records.create(record)
        return int(record.epoch)
    record.epoch += 1
    if revoked is not None:
        record.revoked = revoked
    await records.update(record)
    return int(record.epoch)


async def lock_admins(unit: object) -> None:
    """Take the lock every admin-affecting change takes (creating it once)."""
    records = unit.repository(records_pb2.SessionRecord)  # type: ignore[attr-defined]
    record = await records.get(ADMIN_LOCK, for_update=True)
    if record is None:
        await records.create(records_pb2.SessionRecord(id=ADMIN_LOCK))
        await records.get(ADMIN_LOCK, for_update=True)
    else:
        # A write, so that two transactions holding read locks on SQLite or a
        # snapshot on PostgreSQL/MongoDB conflict here rather than both commit.
        record.epoch += 1
        await records.update(record)


async def check_admins_left(
    unit: object,
    *,
    changed: Mapping[str, auth_pb2.User | None] | None = None,
    roles: Mapping[str, auth_pb2.Role] | None = None,
) -> None:
    """FAILED_PRECONDITION when a change removes the last enabled administrator.

    ``changed``: users as they will be (None: deleted); ``roles``: roles as they will
    be. Everything else is read in ``unit``, which must hold :func:`lock_admins`.
    An installation that has no administrator yet (its admins use tokens minted by the
    operator) may do as it likes: there is nobody to lock out.
    """
    changed = changed or {}
    roles = roles or {}
    role_repo = unit.repository(auth_pb2.Role, id_field="name")  # type: ignore[attr-defined]
    users = unit.repository(auth_pb2.User, id_field="username")  # type: ignore[attr-defined]
    admin_now: set[str] = set()
    admin_after = {name for name, role in roles.items() if is_admin_role(role)}
    token = ""
    while True:
        page = await role_repo.list(order_by="name", page_size=200, page_token=token)
        for role in page.items:
            if is_admin_role(role):
                admin_now.add(role.name)
                if role.name not in roles:
                    admin_after.add(role.name)
        token = page.next_page_token
        if not token:
            break

    def admin(user: auth_pb2.User | None, admin_roles: set[str]) -> bool:
        return user is not None and not user.disabled and bool(admin_roles.intersection(user.roles))

    before = after = False
    token = ""
    while not after:
        page = await users.list(order_by="username", page_size=200, page_token=token)
        for user in page.items:
            before = before or admin(user, admin_now)
            after = after or admin(changed.get(user.username, user), admin_after)
        token = page.next_page_token
        if not token:
            break
    if before and not after:
        raise StatusError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "this change would leave no enabled administrator (a user whose roles grant "
            "users.manage and roles.manage with scope all); make another user an "
            "administrator first",
            reason="LAST_ADMINISTRATOR",
        )
