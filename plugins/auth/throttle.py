"""Per-account login throttling with growing lockouts, and aggregated audit records.

The host's rate limit counts logins per source address; an attacker with many
addresses is not slowed down by it. Here failures are counted per *user name*
(whether or not such a user exists, so the answer tells nothing about which names
are taken): after ``login_free_failures`` failures, each further attempt opens a
lockout window of ``login_lockout_base`` seconds, doubled each time up to
``login_lockout_max``. During a window attempts are refused with RESOURCE_EXHAUSTED
and RetryInfo *before* the password is checked, so a window lets one guess through.
A success forgets the user name's failures; so does ``login_failure_window`` seconds
without any (once no window is open).

A lock alone would let an attacker keep a real user out for as long as it spends
one guess per window. So each user keeps the last :data:`KNOWN_SOURCES` source
addresses it logged in from successfully; an attempt from one of them is not
refused by the lock: it goes to the password check (the host's per-address
``login`` rate class still bounds how often that address may guess), at most
``login_free_failures`` times between two successes of the user. The user logging in
from a usual address is not locked out; an attacker is locked unless it guesses
from an address the user logged in from (then a few times only), and a success that
came through a lock leaves that lock in place for everyone else.

The counters live in the plugin's storage, like the users: shared by every instance
on the same database, and race-safe: an attempt is counted in a transaction *before*
its password check (and uncounted by a success), so concurrent guesses cannot slip
past the count.

Audit: instead of one record per failed attempt, one record per user name when its
streak starts and one each time a lockout window opens, with the number of failures
and refused attempts since the last record and the addresses they came from; and one
when a login succeeds after failures.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from nexus.auth.v1 import records_pb2

from nexus_grpc import AlreadyExistsError, StatusError
from nexus_grpc.access.audit import AuditLog, Outcome
from nexus_grpc.config import AuthConfig
from nexus_grpc.ratelimit import peer_address
from nexus_grpc.storage import Namespace

__all__ = ["KNOWN_SOURCES", "LoginThrottle", "forget_known_sources"]

_log = logging.getLogger("nexus.plugins.auth")

#: Source addresses kept per record between two audit records.
MAX_SOURCES = 16
#: Successful source addresses remembered per user (most recent last).
KNOWN_SOURCES = 8
#: Collection of the remembered addresses: a LoginFailureRecord per user, only its
#: ``sources``, ``last_time`` and ``failures`` (guesses let through a lock since the
#: user's last success) used. Its own collection, so no user name typed into
#: a login can name one of these records.
KNOWN_COLLECTION = "nexus.auth.v1.KnownLoginSources"
_TARGET = "/nexus.auth.v1.AuthService/Login"
#: Attempts between two sweep steps, and records read by each step.
SWEEP_EVERY = 32
SWEEP_PAGE = 200


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    whole = math.floor(seconds)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=int((seconds - whole) * 1e9))


def _seconds(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def throttled(retry_after: float) -> StatusError:
    """RESOURCE_EXHAUSTED with RetryInfo: the same for every user name, existing or not."""
    millis = max(1, math.ceil(retry_after * 1000))
    delay = duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)
    return StatusError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"too many failed logins for this user name; retry in {math.ceil(millis / 100) / 10:.1f}s",
        reason="LOGIN_THROTTLED",
        metadata={"retry_after": str(math.ceil(millis / 1000))},
        details=(error_details_pb2.RetryInfo(retry_delay=delay),),
    )


class LoginThrottle:
    """Counts failed logins per user name in ``storage``; see the module docstring."""

    def __init__(
        self,
        storage: Namespace,
        config: AuthConfig,
        audit: AuditLog | None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._storage = storage
        self._free = max(config.login_free_failures, 1)
        self._base = config.login_lockout_base
        self._max = config.login_lockout_max
        self._window = config.login_failure_window
        self._audit = audit
        self._clock = clock or time.time
        # Records of names nobody tries again (most of them unknown names) are removed
        # by a sweep that reads one page every SWEEP_EVERY attempts, so storage holds
        # about one login failure window's worth of names.
        self._records = storage.repository(records_pb2.LoginFailureRecord)
        self._attempts = 0
        self._sweep_token = ""

    def _lockout(self, failures: int) -> float:
        over = failures - self._free
        if over < 0:
            return 0.0
        return float(min(self._max, self._base * 2 ** min(over, 32)))

    async def admit(self, username: str, context: Any) -> None:
        """Count an attempt for ``username``, or refuse it while the name is locked."""
        now = self._clock()
        source = _source(context)
        refused = 0.0
        async with self._storage.transaction() as unit:
            records = unit.repository(records_pb2.LoginFailureRecord)
            record = await records.get(username, for_update=True)
            # Not fresh while a lock is open, however long ago the last counted attempt
            # was (a lockout longer than the window must not be cut short).
            fresh = record is None or (
                now - _seconds(record.last_time) > self._window
                and now >= _seconds(record.locked_until)
            )
            if record is not None and fresh:
                await records.delete(username)
            if fresh:
                record = records_pb2.LoginFailureRecord(id=username, first_time=_stamp(now))
                record.last_time.CopyFrom(_stamp(now))
                creating = True
            else:
                creating = False
            assert record is not None
            locked_until = _seconds(record.locked_until)
            _add_source(record, source)
            if now < locked_until:
                if await self._known(unit, username, source):
                    # The user's own address: to the password check, lock untouched.
                    return
                record.throttled += 1
                refused = locked_until - now
            else:
                # Counted before the password check, so concurrent guesses all count;
                # a success takes it back.
                record.failures += 1
                record.last_time.CopyFrom(_stamp(now))
                lockout = self._lockout(record.failures)
                if lockout:
                    record.locked_until.CopyFrom(_stamp(now + lockout))
            if creating:
                await records.create(record)
            else:
                await records.update(record)
        self._attempts += 1
        if self._attempts % SWEEP_EVERY == 0:
            await self._sweep(now)
        if refused:
            raise throttled(refused)

    async def _known(self, unit: Any, username: str, source: str) -> bool:
        """Whether an attempt from ``source`` may pass ``username``'s lock, counting it.

        Only from an address the user logged in from lately, and only
        ``login_free_failures`` times between two of its successes: an attacker sharing
        such an address (a NAT, a proxy) gets that many guesses through the lock, not
        as many as the address's rate allows. Counted before the password check, like
        every attempt, so concurrent guesses cannot slip past.
        """
        if source == "unknown":
            return False
        known = _known_repository(unit)
        record = await known.get(username, for_update=True)
        if record is None or source not in record.sources or record.failures >= self._free:
            return False
        record.failures += 1
        await known.update(record)
        return True

    async def _sweep(self, now: float) -> None:
        """Delete the forgotten records of one page, and move on to the next page."""
        page = await self._records.list(
            order_by="id", page_size=SWEEP_PAGE, page_token=self._sweep_token
        )
        self._sweep_token = page.next_page_token
        stale = [
            record.id
            for record in page.items
            if now - _seconds(record.last_time) > self._window
            and now >= _seconds(record.locked_until)
        ]
        if stale:
            await self._records.delete_many(stale)

    async def failed(self, username: str, context: Any) -> None:
        """The attempt admitted for ``username`` had a wrong password (or no such user).

        Bookkeeping for the audit only (the failure was counted by :meth:`admit`): a
        storage error here is logged, and the caller still gets its LOGIN_FAILED.
        """
        try:
            await self._failed(username, context)
        except Exception:
            _log.exception("could not record a failed login of %r for the audit", username)

    async def _failed(self, username: str, context: Any) -> None:
        now = self._clock()
        report = ""
        async with self._storage.transaction() as unit:
            records = unit.repository(records_pb2.LoginFailureRecord)
            record = await records.get(username, for_update=True)
            if record is None:
                return
            record.unaudited += 1
            # A record when a streak starts and when a lockout window opens; failures
            # of attempts that ran concurrently go into the next one.
            starts = record.failures == 1 and record.unaudited == 1
            locked = _seconds(record.locked_until) > now
            if starts or (locked and record.reported_lock != record.locked_until):
                report = self._summary(record, now)
                record.reported_lock.CopyFrom(record.locked_until)
                _reset_report(record)
            await records.update(record)
        if report:
            await self._write(username, report, context)

    async def succeeded(self, username: str, context: Any) -> None:
        """``username`` logged in: forget its failures (reporting them if any).

        A storage error here leaves the count as it is (logged): the login stands.
        """
        try:
            await self._succeeded(username, context)
        except Exception:
            _log.exception("could not reset the failed logins of %r", username)

    async def _succeeded(self, username: str, context: Any) -> None:
        now = self._clock()
        source = _source(context)
        if source != "unknown":
            await _ensure_known(self._storage, username)
        async with self._storage.transaction() as unit:
            # Rows locked in the order admit locks them: failures, then known addresses.
            records = unit.repository(records_pb2.LoginFailureRecord)
            record = await records.get(username, for_update=True)
            await _remember(unit, username, source, now)
            if record is None:
                return
            if now < _seconds(record.locked_until):
                # Let through the lock from a known address: the lock stays for the
                # others, or each login of the user would give an attacker free guesses.
                return
            await records.delete(username)
        if record.unaudited or record.throttled:
            summary = self._summary(record, now)
            await self._write(username, f"{summary}; then a successful login", context)

    def _summary(self, record: records_pb2.LoginFailureRecord, now: float) -> str:
        text = f"{record.unaudited} failed login(s)"
        if record.throttled:
            text += f", {record.throttled} refused while locked"
        if record.sources:
            text += f" from {', '.join(record.sources)}"
        locked = _seconds(record.locked_until) - now
        if locked > 0:
            text += f"; user name locked for {math.ceil(locked)}s"
        return text

    async def _write(self, username: str, reason: str, context: Any) -> None:
        if self._audit is not None:
            await self._audit.record(
                actor=username,
                action="auth.login",
                target=_TARGET,
                outcome=Outcome.DENIED,
                reason=reason,
                context=context,
            )


def _source(context: Any) -> str:
    peer = context.peer() if context is not None else ""
    return peer_address(peer) if peer else "unknown"


def _known_repository(unit: Any) -> Any:
    return unit.repository(records_pb2.LoginFailureRecord, collection=KNOWN_COLLECTION)


async def _ensure_known(storage: Namespace, username: str) -> None:
    """Create ``username``'s record of known addresses if missing, outside any
    transaction: two first logins at once must not fail on the second insert."""
    repository = storage.repository(records_pb2.LoginFailureRecord, collection=KNOWN_COLLECTION)
    if await repository.get(username) is None:
        with contextlib.suppress(AlreadyExistsError):
            await repository.create(records_pb2.LoginFailureRecord(id=username))


async def _remember(unit: Any, username: str, source: str, now: float) -> None:
    """Put ``source`` last in ``username``'s known addresses (the oldest drops out),
    and give the known addresses their budget of guesses through a lock back."""
    if source == "unknown":
        return
    repository = _known_repository(unit)
    record = await repository.get(username, for_update=True)
    if record is None:  # deleted since _ensure_known: the user is gone
        return
    record.failures = 0
    kept = [known for known in record.sources if known != source][-(KNOWN_SOURCES - 1) :]
    del record.sources[:]
    record.sources.extend([*kept, source])
    record.last_time.CopyFrom(_stamp(now))
    await repository.update(record)


async def forget_known_sources(unit: Any, username: str) -> None:
    """Drop ``username``'s known addresses (the user is deleted)."""
    await _known_repository(unit).delete(username)


def _add_source(record: records_pb2.LoginFailureRecord, source: str) -> None:
    if source not in record.sources and len(record.sources) < MAX_SOURCES:
        record.sources.append(source)


def _reset_report(record: records_pb2.LoginFailureRecord) -> None:
    record.unaudited = 0
    record.throttled = 0
    del record.sources[:]
