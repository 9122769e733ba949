"""Event-time windowed counters, per source partition, exact across crashes.

Why not Faust's own ``.tumbling()`` tables: a table update per event costs
about 180 µs (one changelog record each), updates are refused inside
``stream.take()`` batches, and ``on_window_close`` fires once per window
*time*, not per key, and never again after a restart (docs/domain.md, "Window families"). So the
windows are kept here, in plain dicts, and mirrored to a plain Faust table
(raw bytes, changelog-backed) at each :meth:`WindowState.flush` (the stream's
processor calls it at most every half second), with the partition given
explicitly.

What is written is what the producer can afford: producing records is the
worker's main cost, so the unit of persistence is a *shard* of a window
(partition, aggregate, window start, one of ``SHARDS`` slices of the keys),
rewritten at a flush when it changed, and a closed window leaves one
marker, not one per key.

Exactness under at-least-once delivery rests on these rules:

1. Every record carries its source partition, so it is written from one
   partition only and its changelog lives in that partition.
2. Every key's entry carries ``through``, the last source offset folded into
   it. After a crash Faust replays messages from the last commit; a message
   at offset ``o`` is skipped for every key whose ``through >= o``. A shard
   is one changelog record, so its entries and their ``through`` are durable
   together. Faust flushes the producer before it commits offsets.
3. A closed window leaves a marker holding the largest ``through`` of its
   keys. Every event counted in a window precedes (in offset order) every
   event that came too late for it, because the watermark only moves
   forward; so a replayed event at or below the marker was counted, and one
   above it is late. The watermark is persisted too.
4. The marker is written only once the closed window's records are
   acknowledged by Kafka: a marker without its records would lose the
   window. A crash before that leaves the window open in the changelog; it
   is closed and published again after recovery, and the store keeps the
   same rows once (same key).

Windows close when the partition's watermark (max event time - grace)
passes their end, or, for a partition that has seen events, once it has
been idle for ``idle_close_ms`` and the wall clock (minus grace) passes it.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import msgspec

from ctower.schemas.control import ClosedWindow, LateEvent
from ctower.tables.aggregates import AggregateSpec
from ctower.tables.dedup import is_seen_key

WindowKey = tuple[str, tuple[str, ...], int]
"""(aggregate name, dims, window start in epoch ms)."""

Contributions = dict[WindowKey, list[int]]
"""What one message adds: per window key, one delta per aggregate field."""

Window = tuple[str, int]
"""(aggregate name, window start)."""

SHARDS = 16
"""Slices of a window's keys, each one changelog record."""

_MARKER = -1
_WATERMARK = "__watermark__"
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def shard_of(dims: tuple[str, ...]) -> int:
    """A stable slice for a key (Python's str hash changes between processes)."""
    return zlib.crc32("\x1f".join(dims).encode()) % SHARDS


class ChangelogTable(Protocol):
    """The part of a Faust table used here (tests may pass a stand-in)."""

    @property
    def data(self) -> Any: ...

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> Any: ...


@dataclass(slots=True)
class _Bucket:
    """One open window of one aggregate: its keys, sliced into shards."""

    end: int
    shards: list[dict[tuple[str, ...], list[int]]] = field(
        default_factory=lambda: [{} for _ in range(SHARDS)]
    )
    """Per shard: dims -> [through, value per field...]."""
    written: set[int] = field(default_factory=set)
    """Shards that have a record in the changelog."""


@dataclass(slots=True)
class _Partition:
    open: dict[Window, _Bucket] = field(default_factory=dict)
    by_end: dict[int, set[Window]] = field(default_factory=dict)
    markers: dict[Window, int] = field(default_factory=dict)
    """Closed windows still remembered: window -> largest through."""
    marker_queue: deque[tuple[int, Window]] = field(default_factory=deque)
    dirty: set[tuple[str, int, int]] = field(default_factory=set)
    """(aggregate, window start, shard) changed since the last flush."""
    max_ts: int = 0
    watermark: int = 0
    last_offset: int = -1
    persisted_offset: int = -1
    """``last_offset`` as last written: the record is rewritten when it moves."""
    last_seen: float = 0.0
    watermark_dirty: bool = False


class WindowState:
    """All windowed aggregates fed by one source topic."""

    def __init__(
        self,
        *,
        table: ChangelogTable,
        source_topic: str,
        specs: Iterable[AggregateSpec],
        grace_ms: int,
        idle_close_ms: int,
        publish_closed: Callable[[list[ClosedWindow], Callable[[], None]], None],
        publish_late: Callable[[LateEvent], None],
        marker_retention_ms: int = 300_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.source_topic = source_topic
        self.specs = {spec.name: spec for spec in specs}
        self.grace_ms = grace_ms
        self.idle_close_ms = idle_close_ms
        self.marker_retention_ms = marker_retention_ms
        self.publish_closed = publish_closed
        self.publish_late = publish_late
        self.clock = clock
        self._parts: dict[int, _Partition] = {}
        self.windows_closed = 0
        self.close_delays = 0
        self.close_delay_ms_sum = 0
        self.close_delay_ms_last = 0
        """Wall clock at a window's close minus its end, once per window (``/metrics``)."""
        self.late_events = 0
        self.replayed_skips = 0

    # ----------------------------------------------------------------- state
    def partition(self, partition: int) -> _Partition:
        """The partition's state, loaded from the recovered table on first use."""
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = self._load(partition)
        return part

    def _load(self, partition: int) -> _Partition:
        part = _Partition(last_seen=self.clock())
        shard_records = []
        for raw_key, raw_value in list(self.table.data.items()):
            if raw_value is None or is_seen_key(raw_key):
                continue  # identities of counted events (tables/dedup.py) share the table
            key = _decode(raw_key)
            if key[0] != partition:
                continue
            value = _decode(raw_value)
            if key[1] == _WATERMARK:
                part.last_offset, part.watermark, part.max_ts = value
                part.persisted_offset = part.last_offset
            elif key[3] == _MARKER:
                window = (key[1], key[2])
                part.markers[window] = value[0]
                part.marker_queue.append((value[1], window))
            else:
                shard_records.append((key, value))
        part.marker_queue = deque(sorted(part.marker_queue))
        for (_, aggregate, start, shard), entries in shard_records:
            window = (aggregate, start)
            if window in part.markers:
                # closed, and the crash came before its shards were deleted
                self._delete(partition, aggregate, start, shard)
                continue
            bucket = self._bucket(part, window)
            bucket.written.add(shard)
            for dims, *entry in entries:
                bucket.shards[shard][tuple(dims)] = entry
        return part

    def _bucket(self, part: _Partition, window: Window) -> _Bucket:
        bucket = part.open.get(window)
        if bucket is None:
            end = window[1] + self.specs[window[0]].window_ms
            bucket = part.open[window] = _Bucket(end)
            part.by_end.setdefault(end, set()).add(window)
        return bucket

    def adopt(self, partitions: Iterable[int]) -> None:
        """Load partitions this worker owns even if no message has come yet.

        Without this, windows recovered after a restart would wait for new
        traffic on their partition before they could close. Call it only once
        the table's recovery is complete.
        """
        for partition in partitions:
            self.partition(partition)

    def owns(self, partition: int) -> bool:
        """Loaded here and not dropped: this worker may write the partition."""
        return partition in self._parts

    def drop(self, partition: int) -> None:
        """Forget a partition given to another worker (its table moves with it)."""
        self._parts.pop(partition, None)

    def watermark(self, partition: int) -> int:
        return self.partition(partition).watermark

    def position(self, partition: int) -> int:
        """The last source offset folded in (-1: none): where the partition's
        messages carry on (``streams/offset_order.py``)."""
        return self.partition(partition).last_offset

    def positions(self) -> dict[int, int]:
        """Each partition held here -> the last source offset folded in."""
        return {partition: part.last_offset for partition, part in self._parts.items()}

    # --------------------------------------------------------------- updates
    def apply(self, partition: int, offset: int, contributions: Contributions) -> None:
        """Fold one message's contributions in, skipping keys that already hold it."""
        part = self.partition(partition)
        for (aggregate, dims, start), deltas in contributions.items():
            window = (aggregate, start)
            bucket = part.open.get(window)
            if bucket is None:
                if part.markers.get(window, -1) >= offset:
                    self.replayed_skips += 1
                    continue
                bucket = self._bucket(part, window)
            shard = shard_of(dims)
            entries = bucket.shards[shard]
            entry = entries.get(dims)
            if entry is None:
                entries[dims] = [offset, *deltas]
            elif entry[0] >= offset:
                self.replayed_skips += 1
                continue
            else:
                entry[0] = offset
                for index, delta in enumerate(deltas, 1):
                    entry[index] += delta
            part.dirty.add((aggregate, start, shard))

    def late(
        self, partition: int, offset: int, key: WindowKey, event_ts: int, index: int = 0
    ) -> None:
        """An event for a window the watermark has passed: count it as late,
        unless it is a replay of an event the window already holds."""
        part = self.partition(partition)
        aggregate, dims, start = key
        window = (aggregate, start)
        bucket = part.open.get(window)
        if bucket is not None:
            entry = bucket.shards[shard_of(dims)].get(dims)
            through = entry[0] if entry is not None else -1
        else:
            through = part.markers.get(window, -1)
        if through >= offset:
            self.replayed_skips += 1
            return
        self.late_events += 1
        self.publish_late(
            LateEvent(
                aggregate=aggregate,
                dims=list(dims),
                window_start=start,
                source_topic=self.source_topic,
                partition=partition,
                offset=offset,
                index=index,
                event_ts=event_ts,
                watermark=part.watermark,
            )
        )

    def observe(self, partition: int, offset: int, max_ts: int) -> None:
        """Advance the partition's clock after a message."""
        part = self.partition(partition)
        part.last_offset = max(part.last_offset, offset)
        part.last_seen = self.clock()
        if max_ts > part.max_ts:
            part.max_ts = max_ts
            watermark = max_ts - self.grace_ms
            if watermark > part.watermark:
                part.watermark = watermark
                part.watermark_dirty = True

    # ------------------------------------------------- persistence and closing
    def flush(self, partition: int) -> int:
        """Write changed shards, close due windows, persist the watermark and position.

        All into the same changelog partition, in this order, so a durable
        watermark (and the last offset folded, which orders the messages after a
        rebalance) implies durable shards. Returns the number of windows closed.
        """
        part = self.partition(partition)
        for aggregate, start, shard in part.dirty:
            bucket = part.open.get((aggregate, start))
            if bucket is None:
                continue
            entries = [[list(dims), *entry] for dims, entry in bucket.shards[shard].items()]
            self._put(_encode([partition, aggregate, start, shard]), _encode(entries), partition)
            bucket.written.add(shard)
        part.dirty.clear()
        closed = self._close_due(partition, part)
        if part.watermark_dirty or closed or part.last_offset != part.persisted_offset:
            self._put(
                _encode([partition, _WATERMARK]),
                _encode([part.last_offset, part.watermark, part.max_ts]),
                partition,
            )
            part.watermark_dirty = False
            part.persisted_offset = part.last_offset
        self._purge_markers(partition, part)
        return closed

    def _put(self, raw_key: bytes, raw_value: bytes | None, partition: int) -> None:
        if raw_value is None:
            self.table.data.pop(raw_key, None)
        else:
            self.table.data[raw_key] = raw_value
        self.table.send_changelog(partition, raw_key, raw_value)

    def _delete(self, partition: int, aggregate: str, start: int, shard: int) -> None:
        self._put(_encode([partition, aggregate, start, shard]), None, partition)

    def _close_due(self, partition: int, part: _Partition) -> int:
        due = sorted(end for end in part.by_end if end <= part.watermark)
        if not due:
            return 0
        now_ms = int(self.clock() * 1000)
        closed = 0
        for end in due:
            for window in sorted(part.by_end.pop(end)):
                bucket = part.open.pop(window)
                aggregate, start = window
                records = [
                    ClosedWindow(
                        aggregate=aggregate,
                        dims=list(dims),
                        window_start=start,
                        window_end=end,
                        values=entry[1:],
                        source_topic=self.source_topic,
                        partition=partition,
                        through_offset=entry[0],
                        closed_at=now_ms,
                    )
                    for shard in bucket.shards
                    for dims, entry in shard.items()
                ]
                through = max((record.through_offset for record in records), default=-1)
                part.markers[window] = through
                self.close_delays += 1
                self.close_delay_ms_last = now_ms - end
                self.close_delay_ms_sum += self.close_delay_ms_last
                part.marker_queue.append((now_ms, window))
                on_acked = partial(
                    self._write_marker, part, partition, window, through, now_ms, bucket.written
                )
                if records:
                    self.publish_closed(records, on_acked)
                else:
                    on_acked()
                closed += 1
        self.windows_closed += closed
        return closed

    def _write_marker(
        self,
        part: _Partition,
        partition: int,
        window: Window,
        through: int,
        closed_at: int,
        written: set[int],
    ) -> None:
        """Called once the closed window's records are acknowledged by Kafka."""
        if self._parts.get(partition) is not part or window not in part.markers:
            return  # the partition moved to another worker, or the marker expired
        aggregate, start = window
        self._put(
            _encode([partition, aggregate, start, _MARKER]), _encode([through, closed_at]),
            partition,
        )
        for shard in written:
            self._delete(partition, aggregate, start, shard)

    def _purge_markers(self, partition: int, part: _Partition) -> None:
        horizon = int(self.clock() * 1000) - self.marker_retention_ms
        queue = part.marker_queue
        while queue and queue[0][0] < horizon:
            _, window = queue.popleft()
            if part.markers.pop(window, None) is None:
                continue
            self._delete(partition, window[0], window[1], _MARKER)

    def tick(self, caught_up: Callable[[int, int], bool] | None = None) -> int:
        """Close windows of idle partitions by the wall clock.

        A quiet store must still see its last minute closed; and at the end of
        a replay of past events this closes everything that is left. Idle
        means caught up: ``caught_up(partition, last_offset)`` says whether
        nothing more is waiting in Kafka. A partition whose consumer is paused
        (a rebalance) with a backlog behind it is not idle, and closing its
        windows by the wall clock would make the backlog late.
        """
        now = self.clock()
        closed = 0
        for partition, part in list(self._parts.items()):
            if part.max_ts == 0:
                continue  # nothing seen yet: a replay of past events may be about to start
            if (now - part.last_seen) * 1000 < self.idle_close_ms:
                continue
            if caught_up is not None and not caught_up(partition, part.last_offset):
                continue
            wall_mark = int(now * 1000) - self.grace_ms
            if wall_mark > part.watermark:
                part.watermark = wall_mark
                part.watermark_dirty = True
            closed += self.flush(partition)
        return closed
