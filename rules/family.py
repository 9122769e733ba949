"""What every rule family shares: when to judge the keys events touched.

A family (pickup queues, stock items, lanes) judges a key after events
touched it, but not after every event: at most once per second of event
time per partition. A replay of an hour of history arrives in one batch, so
judging only at the end of the batch would alert at the wrong minute;
judging at every event would cost more than the events themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ctower.rules.rule_state import RuleState

EVALUATE_EVERY_MS = 1_000
"""Event time between two evaluations of a partition inside a batch."""


class RuleFamily:
    """Base of the rule families: touched keys, and when they come due.

    Subclasses set ``state`` and implement :meth:`evaluate`; they may widen
    :meth:`due` (stock: moves that arrived ahead of the clock; lanes: lanes
    that went silent) and :meth:`pending`/:meth:`forget` with it.
    """

    state: RuleState[Any]

    def __init__(self) -> None:
        self._touched: dict[int, set[str]] = {}
        self._evaluated_at: dict[int, int] = {}

    def evaluate(self, partition: int, key: str, now: int) -> None:
        raise NotImplementedError

    def touch(self, partition: int, key: str) -> None:
        self._touched.setdefault(partition, set()).add(key)

    def due(self, partition: int, now: int) -> set[str]:
        """The keys to judge now; taken away, so each is judged once."""
        return self._touched.pop(partition, set())

    def pending(self) -> Iterable[int]:
        """Partitions that may have keys due."""
        return list(self._touched)

    def forget(self, partition: int) -> None:
        """A partition this worker no longer owns: nothing of it is due here."""
        self._touched.pop(partition, None)

    def evaluate_if_time_passed(self, partition: int) -> int:
        """Judge what is due if a second of event time passed since the last time;
        return the partition's event time."""
        now = self.state.now(partition)
        if now - self._evaluated_at.get(partition, 0) >= EVALUATE_EVERY_MS:
            self._evaluated_at[partition] = now
            for key in self.due(partition, now):
                self.evaluate(partition, key, now)
        return now

    def evaluate_touched(self) -> None:
        """At the end of a batch: judge everything due, whatever the event time."""
        for partition in self.pending():
            if self.state.owns(partition):
                now = self.state.now(partition)
                for key in self.due(partition, now):
                    self.evaluate(partition, key, now)
            else:
                self.forget(partition)
