"""When to restart a worker that died, and when to give up.

A worker that dies is started again after a delay that doubles with each death of its
slot in a row (0.5 s, 1 s, 2 s ... at most ``max_delay``), so a worker failing at once
does not spin a core; a worker that ran ``stable_after`` seconds starts the count again.
``max_deaths`` deaths of any workers within ``window`` seconds is a crash loop: the
supervisor stops everything and exits non-zero instead of restarting forever, since
something outside the worker (a database, a bad deploy) is wrong and an operator or
an orchestrator has to act.

A worker that served and stopped on its own with status 0 (an operator's SIGTERM to
it) did not die: it is started again at once and not counted, once per slot every
``stable_after`` seconds. A slot that stops on its own more often than that (a plugin
or a watchdog stopping each new worker) is counted as dying, so it cannot restart a
worker in a loop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["CrashLoop", "RestartPolicy"]


@dataclass(frozen=True)
class RestartPolicy:
    """The numbers of the restart rule (see the module docstring)."""

    base_delay: float = 0.5
    max_delay: float = 30.0
    max_deaths: int = 5
    window: float = 60.0
    stable_after: float = 30.0


@dataclass
class CrashLoop:
    """Deaths seen so far, judged by a :class:`RestartPolicy`."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    _deaths: deque[float] = field(default_factory=deque)
    _in_a_row: dict[int, int] = field(default_factory=dict)
    _stopped_alone: dict[int, float] = field(default_factory=dict)

    def stopped_alone(self, slot: int, *, now: float) -> bool:
        """Record that ``slot``'s worker, having served, stopped on its own at ``now``
        with status 0: whether that is no death (the first such stop of the slot within
        ``stable_after`` seconds); if not, the caller counts it with :meth:`died`."""
        last = self._stopped_alone.get(slot)
        if last is not None and now - last < self.policy.stable_after:
            return False
        self._stopped_alone[slot] = now
        return True

    def died(self, slot: int, *, now: float, started: float) -> float | None:
        """Record that ``slot``'s worker (started at ``started``) died at ``now``: the
        seconds to wait before starting it again, or None for a crash loop."""
        policy = self.policy
        self._deaths.append(now)
        while self._deaths and self._deaths[0] <= now - policy.window:
            self._deaths.popleft()
        if len(self._deaths) >= policy.max_deaths:
            return None
        if now - started >= policy.stable_after:
            self._in_a_row[slot] = 0
        count = self._in_a_row.get(slot, 0)
        self._in_a_row[slot] = count + 1
        return float(min(policy.base_delay * 2**count, policy.max_delay))

    def describe(self) -> str:
        """The crash-loop rule, for the message that says why the supervisor gave up."""
        policy = self.policy
        return f"{policy.max_deaths} worker deaths within {policy.window:g}s"
