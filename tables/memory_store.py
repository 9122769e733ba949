"""Faust's in-memory table store, which remembers how far each partition is written.

Faust's memory store says it has no persisted offset, so after every
rebalance the recovery reads each partition's changelog again from its
start, the partitions the worker kept as much as the ones it gained. A
worker draining a backlog had written tens of thousands of rule-state
records by the time a second worker joined; reading its own kept partitions
back took it about four seconds, in which it folded nothing (``ctower bench``
with two workers, the first worker's log at INFO).

This store keeps, per changelog partition, the newest offset Kafka
acknowledged for a write (:meth:`set_persisted_offset`: Faust's own
changelog path reports every acknowledged write, and so do our batch
writers, ``streams/batch_writer.py``) or that a recovery applied. A kept
partition is then recovered from there: the data in memory already holds
everything up to it. Our own code only removes a key from the data when it
writes that key's tombstone, so the data never falls behind the offset.

Faust's memory store deletes a partition's recovered keys once a recovery
completes without the partition active here (a standby's too); its offset
is forgotten at the same moment, and an acknowledgement for it that comes
later is ignored, so a partition gained back is read from its start as
before. (The keys our writers put in the data themselves stay: the base
store knows the partition only of the keys a recovery read. Reading the
partition from its start again overwrites them.)
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
        self._active: set[int] | None = None
        """The partitions active here as of the last completed recovery (None: none yet)."""
        self.recovered = 0
        """Changelog records the recoveries applied here since start: what the
        restart and the rebalances read (``/stats/`` ``recovered_records``)."""

    def persisted_offset(self, tp: TP) -> int | None:
        return self._offsets.get(tp)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        if self._active is not None and tp.partition not in self._active:
            return  # a write acknowledged after its partition left: its keys may be gone
        self._advance(tp, offset)

    def _advance(self, tp: TP, offset: int) -> None:
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
        self.recovered += len(events)
        for event in events:  # a partition being recovered here need not be active yet
            message = event.message
            self._advance(message.tp, message.offset)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        # the base store just dropped the keys of every partition not active here
        active = self._active = {tp.partition for tp in active_tps}
        for tp in [tp for tp in self._offsets if tp.partition not in active]:
            del self._offsets[tp]

    def _clear(self) -> None:
        super()._clear()
        self._offsets.clear()


STORES.aliases[STORE_URL.removesuffix("://")] = f"{__name__}:{MemoryStore.__name__}"
