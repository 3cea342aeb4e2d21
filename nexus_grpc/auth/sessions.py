"""Whether a verified token is still good: per-user token epochs, checked on every call.

A signature proves who issued a token, not that its user still holds what it says:
an admin demoted to customer, a disabled or deleted user, a user logged out
everywhere must lose its access at once, not when its token expires. The user store
(the auth plugin) keeps an *epoch* per user and raises it on every such change; each
token it issues carries the epoch of its user (claim ``ep``). The host refuses a
token whose epoch is below its user's.

The host does not import the user store: the store hands the host a
:class:`SessionSource` (``ctx.tokens.sessions.attach(source)``), as the host hands it
the token issuer. Without a source attached (no auth plugin loaded *in this process*,
even if another instance on the same storage runs it), every token is good for its
lifetime: such a host cannot tell a revoked token from a good one, so it logs a
WARNING when it accepts its first token that way (and again after a source detaches).

Cost: the epochs are cached in process, so a call pays one dict lookup.
Coherence:

* **This process**: :meth:`SessionGuard.changed` drops the user's entry before it
  returns, so the next call loads the new epoch.
* **Other processes**, when the cache runs on Redis (``[cache] backend = "redis"``,
  ``redis_url``): ``changed`` publishes the user on the cache's invalidation channel
  (key ``{prefix}:sessions:{user}``); every host drops the entry when it hears it,
  normally within milliseconds. When that subscription breaks, every entry is
  dropped, and again when it is back (messages in between are lost).
* **Lost messages, and hosts without Redis**: every ``ttl`` seconds
  (``auth.session_check_ttl``) all entries are dropped and loaded again on use, so
  none is trusted longer than that.

A load that fails (storage down) refuses the call with UNAVAILABLE: we cannot tell
whether the token is still good, so it is not (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc

from nexus_grpc.auth.principal import Principal
from nexus_grpc.auth.tokens import AuthError
from nexus_grpc.errors import StatusError

__all__ = ["REVOKED", "SessionGuard", "SessionSource"]

_log = logging.getLogger("nexus.auth")

#: The floor of a user none of whose tokens is good (disabled, deleted).
REVOKED = 2**62

#: Start of the keys announced on the invalidation channel: ``<prefix>:sessions:<user>``.
CHANNEL_SEGMENT = ":sessions:"


class SessionSource(Protocol):
    """What the user store provides: the least epoch a user's tokens must carry."""

    async def session_floor(self, subject: str) -> int:
        """The user's current epoch; :data:`REVOKED` when no token of it is good.

        A subject the store has never heard of has floor 0 (tokens the host minted for
        service accounts and tests). A deleted user keeps a record with REVOKED.
        """
        ...


#: Announces a changed user to every process: ``await announce(key)``.
Announce = Callable[[str], Awaitable[bool]]


class SessionGuard:
    """The epoch check of the AuthStage, with its in-process cache.

    ``ttl``: longest time an epoch is trusted without asking the source again.
    ``max_entries``: bound of the cache (cleared when full: one load per active user).
    """

    def __init__(
        self,
        *,
        ttl: float = 5.0,
        max_entries: int = 100_000,
        prefix: str = "nexus",
    ) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("SessionGuard needs ttl > 0 and max_entries >= 1")
        self._ttl = ttl
        self._max_entries = max_entries
        self._key_prefix = f"{prefix}{CHANNEL_SEGMENT}"
        #: subject -> least epoch its tokens must carry; read on every authenticated
        #: call, so it is one dict, cleared in place (never replaced), and emptied
        #: every ``ttl`` seconds by a timer rather than checking a clock per call.
        self.floors: dict[str, int] = {}
        #: Raised by every invalidation, so a load that straddled one is not kept.
        self._version = 0
        self._source: SessionSource | None = None
        self._announce: Announce | None = None
        self._loads: dict[str, asyncio.Future[int]] = {}
        self._timer: asyncio.TimerHandle | None = None
        #: Whether the "no session source" warning was logged since the last attach.
        self._warned = False

    # -- the hot path -----------------------------------------------------------------

    def fresh(self, principal: Principal) -> bool:
        """Whether ``principal``'s token is known good right now (no await needed).

        False means "ask :meth:`check`", which loads the floor or refuses. The
        AuthStage inlines this test on :attr:`floors`.
        """
        floor = self.floors.get(principal.subject)
        return floor is not None and principal.epoch >= floor

    async def check(self, principal: Principal) -> None:
        """Raise UNAUTHENTICATED when ``principal``'s token was voided, else return."""
        source = self._source
        subject = principal.subject
        if source is None:
            # Nobody keeps epochs: every token is good; remember it so the next call
            # of this subject stays on the hot path.
            if not self._warned:
                self._warned = True
                _log.warning(
                    "a token was verified but no session source is attached (the auth "
                    "plugin is not loaded in this host): tokens of users whose roles were "
                    "changed, or who were disabled, deleted or logged out everywhere, are "
                    "accepted here until they expire; load the auth plugin on every "
                    "instance that must honour revocation"
                )
            self._remember(subject, 0)
            return
        floor = self.floors.get(subject)
        if floor is None:
            floor = await self._load(source, subject)
        if floor >= REVOKED:
            raise AuthError("SESSION_REVOKED", "the account is disabled or no longer exists")
        if principal.epoch < floor:
            raise AuthError(
                "SESSION_REVOKED",
                "the token was revoked (roles changed or logged out); log in again",
            )

    def _remember(self, subject: str, floor: int) -> None:
        if len(self.floors) >= self._max_entries:
            self.floors.clear()
        self.floors[subject] = floor
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._ttl, self._expire)

    def _expire(self) -> None:
        """Every ttl: forget every entry (the bound on a lost invalidation)."""
        self._timer = None
        self.forget_all()

    def close(self) -> None:
        """Stop the expiry timer (the host stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.forget_all()

    async def _load(self, source: SessionSource, subject: str) -> int:
        # One load per subject at a time: a popular user's entry expiring must not
        # become a burst of identical storage reads.
        pending = self._loads.get(subject)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._loads[subject] = future
        version = self._version
        try:
            floor = await source.session_floor(subject)
        except Exception as error:
            _log.warning("could not load the session state of %s: %s", subject, error)
            failure = StatusError(
                grpc.StatusCode.UNAVAILABLE,
                "could not check whether the token is still valid; retry",
                reason="SESSION_STATE_UNAVAILABLE",
            )
            future.set_exception(failure)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise failure from None
        else:
            future.set_result(floor)
            if version == self._version:
                self._remember(subject, floor)
            return floor
        finally:
            if self._loads.get(subject) is future:
                del self._loads[subject]

    # -- the user store's side --------------------------------------------------------

    def attach(self, source: SessionSource) -> None:
        """Make ``source`` the authority on epochs (the auth plugin, when it starts)."""
        self._source = source
        self._warned = False
        self.forget_all()

    def detach(self, source: SessionSource) -> None:
        """Stop consulting ``source`` (its plugin stops); other sources stay."""
        if self._source is source:
            self._source = None
            self.forget_all()

    async def changed(self, subject: str) -> None:
        """``subject``'s epoch or state changed: drop it here, then in every process."""
        self.forget(subject)
        announce = self._announce
        if announce is not None and not await announce(self._key_prefix + subject):
            _log.warning(
                "session change of %s not announced (Redis unreachable); other instances "
                "notice it within auth.session_check_ttl",
                subject,
            )

    # -- what the invalidation channel reports ----------------------------------------

    def connect(self, announce: Announce | None) -> None:
        """Announce changes with ``announce`` (the cache's channel); None: this process only."""
        self._announce = announce

    def on_key(self, key: str) -> None:
        """A key heard on the invalidation channel; ours name a user."""
        if key.startswith(self._key_prefix):
            self.forget(key[len(self._key_prefix) :])

    def forget(self, subject: str) -> None:
        """Drop ``subject``'s entry (the next call loads it again)."""
        self._version += 1
        self.floors.pop(subject, None)
        # A load in flight may have read the old state: later calls start their own.
        self._loads.pop(subject, None)

    def forget_all(self) -> None:
        """Drop every entry (invalidations may have been lost)."""
        self._version += 1
        self.floors.clear()
        self._loads.clear()
