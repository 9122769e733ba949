"""Per-partition rule state on a Faust changelog table, and its event clock.

Each rule family (pickup queues, stock, lanes) keeps one entity per key
(a store, a location and SKU, a carrier and region) in memory and writes the
entities that changed to a raw-bytes Faust table at each flush, the way
``window_state.py`` persists windows; on a restart or rebalance the table's
recovery brings them back. A per-partition record holds how far each source
(topic and partition) has been applied, written after the entities in the
same changelog partition: messages replayed after a crash are recognised and
skipped. (A crash in the middle of a flush can still replay the last batch
into the entities already written; window_state's per-key offsets avoid that
for the aggregates, and the rules tolerate it: one batch in a queue or a
stock level, corrected by the next snapshot.)

Flushing is the caller's choice of moment: the decision layer flushes about
once a second (``FLUSH_INTERVAL_S``), not at every batch, because each flush
rewrites every entity touched since the last one and a busy SKU is touched in
nearly every batch; the source messages are acknowledged only after the
flush that covers them, so an offset is never committed ahead of the state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from ctower.tables.window_state import ChangelogTable

E = TypeVar("E", bound=msgspec.Struct)


class Forwarded(Protocol):
    """An item re-keyed onto an internal topic, naming the message it came from."""

    source: str
    offset: int
    ts: int


F = TypeVar("F", bound=Forwarded)

FLUSH_INTERVAL_S = 1.0
"""How often the rule state is written at most (besides ``FLUSH_MAX_DIRTY``):
one record per changed entity per interval instead of one per batch."""
FLUSH_MAX_DIRTY = 20_000
"""Unwritten entities that force a flush before the interval is up: bounds the
work of one flush and the replay after a crash."""

_PROGRESS = "__progress__"
_READ = "__read__"
"""The progress entry for the family's own topic: the last offset read from it."""
_encode = msgspec.msgpack.Encoder().encode
_decode_key = msgspec.msgpack.Decoder(list[Any]).decode
_decode_progress = msgspec.msgpack.Decoder(tuple[dict[str, int], int, int]).decode


@dataclass(slots=True)
class EventClock:
    """The rules' "now": event time, moved on by the wall clock when quiet.

    Rules must judge a replay of last week by last week's times, so the
    clock follows the events. A partition of the rules is fed by several
    sources (the stock of a SKU by every partition of the scan, order and
    inventory streams) that a worker drains at different speeds, so "now"
    is the *slowest* active source's newest event time: a scan from minute
    20 must not be judged at minute 70 because the inventory stream is
    further ahead. A source that sent nothing for ``idle_ms`` of wall time
    does not hold the clock back; when every source is quiet, time still
    passes (a shipment goes stale because nothing comes), so the clock
    advances with the wall clock.
    """

    idle_ms: int = 5_000
    sources: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Source -> (newest event time, wall time it was seen)."""
    first_ts: int = 0
    """The oldest event time seen: how much history the rules have to go on."""
    restored_ts: int = 0
    """The newest event time before a restart, until a source speaks again."""

    def observe(self, source: str, ts: int, wall: float) -> None:
        if ts <= 0:
            return  # items without an event time (member hints) say nothing of "now"
        seen = self.sources.get(source)
        if seen is None or ts > seen[0]:
            self.sources[source] = (ts, wall)
        else:
            self.sources[source] = (seen[0], wall)
        if ts and (not self.first_ts or ts < self.first_ts):
            self.first_ts = ts

    @property
    def max_ts(self) -> int:
        return max((ts for ts, _ in self.sources.values()), default=self.restored_ts)

    def now(self, wall: float) -> int:
        if not self.sources:
            return self.restored_ts
        idle = self.idle_ms / 1000
        active = [ts for ts, seen in self.sources.values() if wall - seen < idle]
        if active:
            return min(active)
        last_seen = max(seen for _, seen in self.sources.values())
        return self.max_ts + max(0, int((wall - last_seen) * 1000) - self.idle_ms)


@dataclass(slots=True)
class _Part(Generic[E]):
    entities: dict[str, E] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    progress: dict[str, int] = field(default_factory=dict)
    """Source ("topic:partition") -> last offset applied."""
    clock: EventClock = field(default_factory=EventClock)
    progress_dirty: bool = False


class RuleState(Generic[E]):
    """Entities of one rule family, per partition of its source topic."""

    def __init__(
        self,
        table: ChangelogTable,
        family: str,
        entity_type: type[E],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.family = family
        self.wall = clock
        self._decode = msgspec.msgpack.Decoder(entity_type).decode
        self._parts: dict[int, _Part[E]] = {}
        self.replayed_skips = 0

    # ------------------------------------------------------------ partitions
    def part(self, partition: int) -> _Part[E]:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = self._load(partition)
        return part

    def _load(self, partition: int) -> _Part[E]:
        part: _Part[E] = _Part()
        for raw_key, raw_value in list(self.table.data.items()):
            if raw_value is None:
                continue
            key = _decode_key(raw_key)
            if key[0] != partition or key[1] != self.family:
                continue
            if key[2] == _PROGRESS:
                part.progress, part.clock.restored_ts, part.clock.first_ts = (
                    _decode_progress(raw_value)
                )
            else:
                part.entities[key[2]] = self._decode(raw_value)
        return part

    def adopt(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.part(partition)

    def owns(self, partition: int) -> bool:
        return partition in self._parts

    def drop(self, partition: int) -> None:
        self._parts.pop(partition, None)

    def partitions(self) -> list[int]:
        return list(self._parts)

    def unflushed(self) -> int:
        """Changes not yet in the changelog: dirty entities, plus one per progress record."""
        return sum(len(part.dirty) + part.progress_dirty for part in self._parts.values())

    # -------------------------------------------------------------- entities
    def fresh(self, partition: int, source: str, offset: int) -> bool:
        """Whether a message of ``source`` at ``offset`` is new here (not a replay)."""
        if self.part(partition).progress.get(source, -1) >= offset:
            self.replayed_skips += 1
            return False
        return True

    def fresh_items(
        self, partition: int, items: Iterable[F], after_message: Callable[[], object]
    ) -> Iterator[F]:
        """The items of an array that are not replays, whole source messages at a time.

        A message is recognised as replayed at its first item; once its last
        item is applied, its progress is recorded and ``after_message`` runs
        (the rules evaluate as event time passes inside a long array).
        """
        current: tuple[str, int] | None = None
        skip = False
        newest = 0
        for item in items:
            if current != (item.source, item.offset):
                if current is not None and not skip:
                    self.applied(partition, current[0], current[1], newest)
                    after_message()
                current = (item.source, item.offset)
                skip = not self.fresh(partition, item.source, item.offset)
                newest = 0
            if skip:
                continue
            newest = max(newest, item.ts)
            yield item
        if current is not None and not skip:
            self.applied(partition, current[0], current[1], newest)

    def read(self, partition: int, offset: int) -> None:
        """A message of the family's own topic is in (whatever it held)."""
        part = self.part(partition)
        if offset > part.progress.get(_READ, -1):
            part.progress[_READ] = offset
            part.progress_dirty = True

    def position(self, partition: int) -> int:
        """The last offset of the family's own topic read (-1: none): where the
        partition's messages carry on (``streams/offset_order.py``)."""
        return self.part(partition).progress.get(_READ, -1)

    def applied(self, partition: int, source: str, offset: int, ts: int) -> None:
        part = self.part(partition)
        if offset > part.progress.get(source, -1):
            part.progress[source] = offset
            part.progress_dirty = True
        part.clock.observe(source, ts, self.wall())

    def now(self, partition: int) -> int:
        return self.part(partition).clock.now(self.wall())

    def history_from(self, partition: int) -> int:
        return self.part(partition).clock.first_ts

    def get(self, partition: int, key: str) -> E | None:
        return self.part(partition).entities.get(key)

    def put(self, partition: int, key: str, entity: E) -> None:
        part = self.part(partition)
        part.entities[key] = entity
        part.dirty.add(key)

    def touch(self, partition: int, key: str) -> None:
        self.part(partition).dirty.add(key)

    def delete(self, partition: int, key: str) -> None:
        part = self.part(partition)
        if part.entities.pop(key, None) is not None:
            part.dirty.add(key)

    def items(self, partition: int) -> Iterable[tuple[str, E]]:
        return list(self.part(partition).entities.items())

    # ------------------------------------------------------------ persisting
    def flush(self, partition: int) -> int:
        """Write changed entities, then the progress record; returns entities written."""
        part = self._parts.get(partition)
        if part is None:
            return 0
        written = 0
        for key in part.dirty:
            entity = part.entities.get(key)
            self._put(partition, key, None if entity is None else _encode(entity))
            written += 1
        part.dirty.clear()
        if part.progress_dirty or written:
            clock = part.clock
            self._put(partition, _PROGRESS, _encode((part.progress, clock.max_ts, clock.first_ts)))
            part.progress_dirty = False
        return written

    def flush_all(self) -> int:
        """:meth:`flush` every partition held here; returns entities written."""
        return sum(self.flush(partition) for partition in list(self._parts))

    def _put(self, partition: int, key: str, value: bytes | None) -> None:
        raw_key = _encode([partition, self.family, key])
        if value is None:
            self.table.data.pop(raw_key, None)
        else:
            self.table.data[raw_key] = value
        self.table.send_changelog(partition, raw_key, value)
