"""Each robot's budget: at most N messages in any window (20 a minute).

WeChat Work counts every request against a robot's 20 a minute, failed
ones too, and answers 45009 beyond that. The budget is a sliding window
over the times sends *ended*: a send that ended at ``t`` occupies its slot
until ``t + window``. Counting from the end rather than the start keeps us
inside the limit whatever the server counts by, because the server saw the
request before we saw its answer. A 45009 (someone else shares the robot,
or the server counts differently) fills the window: nothing more goes
until the next minute.

The clock is the wall clock (sends are remembered across restarts, in the
outbox) and injectable, so tests can run a minute in no time. A request a
crash caught in the air is replayed into the budget at the time it started
(the outbox cannot know when, or whether, the robot counted it).
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable


class RateBudget:
    """The sliding-window budget of one robot."""

    def __init__(
        self, per_window: int, window: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.per_window = per_window
        self.window = window
        self.clock = clock
        self._ends: deque[float] = deque()
        self._blocked_until = 0.0

    def _expire(self, now: float) -> None:
        while self._ends and self._ends[0] + self.window <= now:
            self._ends.popleft()

    def free(self) -> int:
        """How many sends may start now."""
        now = self.clock()
        if now < self._blocked_until:
            return 0
        self._expire(now)
        return max(0, self.per_window - len(self._ends))

    def next_free_in(self) -> float:
        """Seconds until a send may start (0 when one may start now)."""
        now = self.clock()
        if now < self._blocked_until:
            return self._blocked_until - now
        self._expire(now)
        if len(self._ends) < self.per_window:
            return 0.0
        return self._ends[len(self._ends) - self.per_window] + self.window - now

    def spent(self, at: float | None = None) -> None:
        """A send ended (delivered or not: failed sends count too); ``at``
        replays one remembered from before a restart."""
        ended = self.clock() if at is None else at
        if self._ends and ended < self._ends[-1]:
            bisect.insort(self._ends, ended)  # kept in order: expiry pops from the left
        else:
            self._ends.append(ended)

    def exhausted(self) -> None:
        """The robot said 45009: wait a whole window from now."""
        self._blocked_until = self.clock() + self.window
