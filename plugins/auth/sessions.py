"""Token epochs and the last administrator: the auth plugin's side of revocation.

Every user may have a :class:`SessionRecord` (epoch, revoked). Tokens carry the
epoch of their user; a change that must void them (roles, disable, delete, "log out
everywhere") raises the epoch in the same transaction as the change itself, and the
host's :class:`~nexus_grpc.auth.SessionGuard` refuses tokens below it. A user without
a record has epoch 0 (created before epochs existed, or never changed since).

Changes that could leave nobody able to administer the installation are refused:
each of them takes the same lock record first (so two admins demoting each other at
once cannot both succeed) and counts the enabled administrators left. A user is an
administrator when its roles together grant ``users.manage`` and ``roles.manage`` with
scope all, whether one role grants both or each comes from another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

import grpc
from nexus.auth.v1 import auth_pb2, records_pb2
from nexus.options.v1 import options_pb2

from nexus_grpc import AlreadyExistsError, StatusError
from nexus_grpc.auth import REVOKED
from nexus_grpc.storage import Namespace

__all__ = [
    "ADMIN_LOCK",
    "SessionStore",
    "bump_epoch",
    "check_admins_left",
    "ensure_admin_lock",
    "is_admin",
    "is_admin_role",
    "lock_admins",
]

#: Id of the record every admin-affecting transaction locks first. "~" cannot start
#: a user name (see User.username's pattern), so it names no user.
ADMIN_LOCK = "~admins"

_ADMIN_PERMISSIONS = (("users", "manage"), ("roles", "manage"))


def is_admin(grants: Iterable[auth_pb2.Grant]) -> bool:
    """Whether ``grants`` (all of a user's roles together) manage users and roles everywhere.

    Such a user can give access back to anyone; with none left, nobody can. The grants
    may come from several roles (``users.*`` from one, ``roles.*`` from another).
    """
    held = {grant.permission for grant in grants if grant.scope == options_pb2.SCOPE_ALL}

    def covers(resource: str, action: str) -> bool:
        return bool(
            held.intersection((f"{resource}.{action}", f"{resource}.*", f"*.{action}", "*.*"))
        )

    return all(covers(resource, action) for resource, action in _ADMIN_PERMISSIONS)


def is_admin_role(role: auth_pb2.Role) -> bool:
    """Whether ``role`` alone makes its holder an administrator (see :func:`is_admin`)."""
    return is_admin(role.grants)


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


async def ensure_admin_lock(storage: Namespace) -> None:
    """Create the lock record of :func:`lock_admins` if it is missing, outside any
    transaction, tolerating another caller creating it at the same moment.

    Inside a transaction two first-ever admin changes on PostgreSQL would both find it
    missing, both insert it, and the second would fail with ALREADY_EXISTS; call this
    before opening the transaction that calls :func:`lock_admins`.
    """
    records = storage.repository(records_pb2.SessionRecord)
    if await records.get(ADMIN_LOCK) is None:
        with contextlib.suppress(AlreadyExistsError):
            await records.create(records_pb2.SessionRecord(id=ADMIN_LOCK))


async def lock_admins(unit: object) -> None:
    """Take the lock every admin-affecting change takes (see :func:`ensure_admin_lock`)."""
    records = unit.repository(records_pb2.SessionRecord)  # type: ignore[attr-defined]
    record = await records.get(ADMIN_LOCK, for_update=True)
    if record is None:
        # Only when the caller did not ensure it: SQLite serializes writers anyway.
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
    role_repo = unit.repository(auth_pb2.Role, id_field="name")  # type: ignore[attr-defined]
    users = unit.repository(auth_pb2.User, id_field="username")  # type: ignore[attr-defined]
    roles_now: dict[str, auth_pb2.Role] = {}
    token = ""
    while True:
        page = await role_repo.list(order_by="name", page_size=200, page_token=token)
        roles_now.update((role.name, role) for role in page.items)
        token = page.next_page_token
        if not token:
            break
    roles_after = {**roles_now, **(roles or {})}

    def admin(user: auth_pb2.User | None, by_name: Mapping[str, auth_pb2.Role]) -> bool:
        # Over the union of the user's roles: users.* from one role and roles.* from
        # another make an administrator as much as one role granting both.
        if user is None or user.disabled:
            return False
        return is_admin(
            grant for name in user.roles if name in by_name for grant in by_name[name].grants
        )

    before = after = False
    token = ""
    while not after:
        page = await users.list(order_by="username", page_size=200, page_token=token)
        for user in page.items:
            before = before or admin(user, roles_now)
            after = after or admin(changed.get(user.username, user), roles_after)
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
