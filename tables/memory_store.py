"""Faust's in-memory table store, which remembers how far each partition is written.

Faust's memory store says it has no persisted offset, so after every
rebalance the recovery reads each partition's changelog again from its
start, the partitions the worker kept as much as the ones it gained. A
worker draining a backlog had written tens of thousands of rule-state
records by the time a second worker joined; reading its own kept partitions
back took it about four seconds, in which it folded nothing (``ctower bench``
with two workers, the first worker's log at INFO).

This store keeps, per changelog partition, the newest offset Kafka
acknowledged for a write (Faust reports every acknowledged changelog write
through :meth:`set_persisted_offset`) or that a recovery applied. A kept
partition is then recovered from there: the data in memory already holds
everything up to it. Faust's memory store deletes a partition's recovered
keys once the partition is neither active nor standby here; the offset is
forgotten at the same moment, so a partition gained back later is read from
its start as before. Our own code only removes a key from the data when it
writes that key's tombstone, so the data never falls behind the offset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from faust.stores import STORES
from faust.stores.memory import Store
from faust.types import TP, EventT

STORE_URL = "ctower-memory://"
"""The ``store`` setting that selects this store (Faust picks a store by scheme)."""


class MemoryStore(Store[bytes, bytes]):
    """Faust's memory store with persisted offsets that last while the data does."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._offsets: dict[TP, int] = {}

    def persisted_offset(self, tp: TP) -> int | None:
        return self._offsets.get(tp)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        # acknowledgements can come back out of order across batches
        if offset > self._offsets.get(tp, -1):
            self._offsets[tp] = offset

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT[Any]],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        for event in events:
            message = event.message
            self.set_persisted_offset(message.tp, message.offset)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        # the base store just dropped the keys of every partition not active here
        active = {tp.partition for tp in active_tps}
        for tp in [tp for tp in self._offsets if tp.partition not in active]:
            del self._offsets[tp]

    def _clear(self) -> None:
        super()._clear()
        self._offsets.clear()


STORES.aliases[STORE_URL.removesuffix("://")] = f"{__name__}:{MemoryStore.__name__}"
