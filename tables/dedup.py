"""A re-sent event counts once: the identities seen, per source partition.

Producers deliver at least once, so the same event (same
:meth:`Event.identity`) can arrive twice: at once, minutes later, or after a
restart of the producer or of this worker. The raw tables collapse such
copies, but the windows, the rules and the coupon ledger would count them
again. So every stream's events pass through :class:`SeenEvents` before they
are folded or observed, and a copy of an event already counted is dropped
(and reported as a :class:`DuplicateEvent`).

Exact across crashes: each identity is kept with the *position* of its first
copy (source offset and index in the envelope). After a crash Faust replays
messages from the last commit; a replayed first copy finds its own position
and passes (the window and rule states then recognise it as a replay by
offset), while a replayed later copy finds an earlier position and is
dropped again. So the decisions on a replay are the decisions first taken,
whether or not the entries were persisted before the crash.

Exact within a horizon of event time (``horizon_ms``, default 16 minutes:
the longest window, 15 minutes, plus grace): an identity is forgotten once
the partition's newest event time is that far past its minute. A copy older
than that is late for every window anyway.

Forgetting must not break the replay either. A replay after a crash starts at
the committed offset, which at replay speed can be an hour of event time
behind what the worker had read; had the worker forgotten by its newest event
time, a replayed copy would find its first copy gone and count (seen in CI).
So "newest" is taken as of the *committed* offset: a minute is forgotten only
once every message that could still be replayed is more than the horizon
past it. Each record carries the last offset and newest event time it covers,
so a restarted worker knows them too. Memory is bounded by a
:class:`SeenBudget` of identities shared by every stream of a worker (about
140 bytes each, a Python dict of 64-bit hashes and positions: ``ctower
bench`` measures it); past it the oldest minutes of any stream are forgotten
early, which ``/stats/`` reports.

Persistence: the entries added since the last flush are written as one or
more records to the stream's window table (same changelog partition as the
windows), keyed ``[partition, "__seen__", seq]``, and tombstoned once all
their minutes are past the horizon. A restart or a rebalance loads them back.
"""

from __future__ import annotations

import logging
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import xxhash

from ctower.schemas.events import Event

log = logging.getLogger(__name__)

SEEN = "__seen__"
"""The window-table key name of the identity records."""
BUCKET_MS = 60_000
"""Identities are forgotten a minute of event time at a time."""
RECORD_ENTRIES = 32_768
"""Identities per changelog record: 512 kB, well under Kafka's 1 MB."""
INDEX_BITS = 20
"""A position is ``offset << INDEX_BITS | index`` (an envelope holds far fewer
than a million events: a message is at most 1 MB)."""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_hash = xxhash.xxh3_64_intdigest


class ChangelogTable(Protocol):
    @property
    def data(self) -> Any: ...

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> Any: ...


@dataclass(slots=True)
class _Partition:
    first: dict[int, int] = field(default_factory=dict)
    """Identity hash -> position of its first copy."""
    most: int = 0
    """The most identities ``first`` has held since it was last copied (see
    :meth:`SeenEvents._forget`)."""
    minutes: dict[int, list[int]] = field(default_factory=dict)
    """Event-time minute -> identities first seen in it (to forget them together)."""
    new: dict[int, list[int]] = field(default_factory=dict)
    """Minute -> [hash, position, ...] not written yet."""
    records: dict[int, int] = field(default_factory=dict)
    """Record number -> newest minute it holds (deleted once that is past the horizon)."""
    next_record: int = 0
    newest: int = 0
    """Newest event time seen."""
    last_offset: int = -1
    checkpoints: deque[tuple[int, int]] = field(default_factory=deque)
    """(last offset, newest event time up to it) at each write: the horizon follows
    the newest event time as of the committed offset."""


@dataclass(frozen=True, slots=True)
class Resent:
    """A dropped copy: its index in the message and where the counted copy was."""

    index: int
    event: Event
    first_offset: int
    first_index: int


class SeenBudget:
    """How many identities one worker keeps, over all its streams."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.members: list[SeenEvents] = []
        self._warned = False

    @property
    def size(self) -> int:
        return sum(member.size for member in self.members)

    def enforce(self) -> None:
        """Over the budget: forget the oldest minutes, whichever stream holds them."""
        while self.size > self.max_entries:
            oldest = min(
                (
                    (min(part.minutes), member, partition)
                    for member in self.members
                    for partition, part in member._parts.items()
                    if part.minutes
                ),
                default=None,
                key=lambda found: found[0],
            )
            if oldest is None:
                return
            minute, member, partition = oldest
            member.forgotten_early += member._forget(
                partition, member._parts[partition], minute + BUCKET_MS
            )
            if not self._warned:
                self._warned = True
                log.warning(
                    "de-duplication holds more than %d identities (CTOWER_DEDUP_MAX_ENTRIES): "
                    "forgetting the oldest minutes before the %d s horizon",
                    self.max_entries, member.horizon_ms // 1000,
                )


class SeenEvents:
    """The identities of one stream's counted events, per source partition."""

    def __init__(
        self,
        table: ChangelogTable,
        horizon_ms: int,
        budget: SeenBudget,
        committed: Callable[[int], int | None] | None = None,
    ) -> None:
        self.table = table
        self.horizon_ms = horizon_ms
        self.committed = committed
        """Partition -> the offset a replay would start from (None: nothing committed).
        Without it (tests, benches) everything read counts as committed."""
        self.budget = budget
        budget.members.append(self)
        self._parts: dict[int, _Partition] = {}
        self.duplicates = 0
        self.forgotten_early = 0
        """Identities forgotten before the horizon to stay within the budget."""

    # ------------------------------------------------------------- the filter
    def filter(
        self, partition: int, offset: int, events: Sequence[Event]
    ) -> tuple[Sequence[Event], list[Resent]]:
        """The events that count, and the copies dropped as re-sends."""
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = self._load(partition)
        first = part.first
        if offset > part.last_offset:
            part.last_offset = offset
        base = offset << INDEX_BITS
        kept: list[Event] | None = None
        resent: list[Resent] = []
        for index, event in enumerate(events):
            key = _hash(event.identity().encode())
            position = base | index
            seen_at = first.get(key)
            if seen_at is None or seen_at >= position:
                # new, or the first copy itself again (a replay after a crash)
                if seen_at is None:
                    self._remember(part, key, position, event.ts)  # type: ignore[arg-type]
                elif seen_at > position:
                    first[key] = position
                if kept is not None:
                    kept.append(event)
                continue
            if kept is None:
                kept = list(events[:index])
            resent.append(
                Resent(index, event, seen_at >> INDEX_BITS, seen_at & ((1 << INDEX_BITS) - 1))
            )
        if kept is None:
            return events, resent
        self.duplicates += len(resent)
        return kept, resent

    @staticmethod
    def _remember(part: _Partition, key: int, position: int, ts: int) -> None:
        part.first[key] = position
        minute = ts - ts % BUCKET_MS
        keys = part.minutes.get(minute)
        if keys is None:
            keys = part.minutes[minute] = []
        keys.append(key)
        new = part.new.get(minute)
        if new is None:
            new = part.new[minute] = []
        new.append(key)
        new.append(position)
        if ts > part.newest:
            part.newest = ts

    # ------------------------------------------------------------ persistence
    def flush(self, partition: int) -> None:
        """Write the identities added since the last flush; forget those past the horizon."""
        part = self._parts.get(partition)
        if part is None:
            return
        if part.new:
            self._write_new(partition, part)
        self._forget_past_horizon(partition, part)
        self.budget.enforce()

    def forget_past_horizon(self, owns: Callable[[int], bool]) -> int:
        """Forget what is past the horizon in every partition held that ``owns``
        says is still this worker's; returns how many identities went.

        :meth:`flush` forgets only in the partitions a batch touched, with the
        commit as it stood then; a partition that went quiet kept the rest
        until its next message. Draining a backlog, a small stream was read to
        its end before the first commit, and every one of its identities was
        still held at the end (47k of the inventory stream's in a 1M-event
        drain). The worker calls this once a second."""
        return sum(
            self._forget_past_horizon(partition, part)
            for partition, part in self._parts.items() if owns(partition)
        )

    def _forget_past_horizon(self, partition: int, part: _Partition) -> int:
        replayable = self._replayable_newest(partition, part)
        if replayable is None:
            return 0
        return self._forget(partition, part, replayable - self.horizon_ms)

    def _replayable_newest(self, partition: int, part: _Partition) -> int | None:
        """The newest event time of the messages a replay would not read again."""
        if self.committed is None:
            return part.newest
        start = self.committed(partition)
        if start is None:
            return None
        checkpoints = part.checkpoints
        newest = None
        while checkpoints and checkpoints[0][0] < start:
            newest = checkpoints[0][1]
            if len(checkpoints) > 1 and checkpoints[1][0] < start:
                checkpoints.popleft()
            else:
                break
        return newest

    def _write_new(self, partition: int, part: _Partition) -> None:
        chunk: list[list[Any]] = []
        entries = 0
        for minute in sorted(part.new):
            flat = part.new[minute]
            for start in range(0, len(flat), 2 * RECORD_ENTRIES):
                piece = flat[start : start + 2 * RECORD_ENTRIES]
                chunk.append(
                    [minute, array("Q", piece[0::2]).tobytes(), array("Q", piece[1::2]).tobytes()]
                )
                entries += len(piece) // 2
                if entries >= RECORD_ENTRIES:
                    self._write_record(partition, part, chunk)
                    chunk, entries = [], 0
        if chunk:
            self._write_record(partition, part, chunk)
        part.new.clear()

    def _write_record(self, partition: int, part: _Partition, chunk: list[list[Any]]) -> None:
        number = part.next_record
        part.next_record += 1
        part.records[number] = max(minute for minute, _, _ in chunk)
        part.checkpoints.append((part.last_offset, part.newest))
        self._put(partition, number, _encode([part.last_offset, part.newest, chunk]))

    def _put(self, partition: int, number: int, value: bytes | None) -> None:
        key = _encode([partition, SEEN, number])
        if value is None:
            self.table.data.pop(key, None)
        else:
            self.table.data[key] = value
        self.table.send_changelog(partition, key, value)

    def _forget(self, partition: int, part: _Partition, cut: int) -> int:
        """Forget the minutes that ended at or before ``cut``; return how many identities.

        A dict never gives back its table when entries are popped: the table
        sized for the most identities ever held stays. A fast 1M-event drain
        held about 300,000 identities in its first seconds and 70,000-100,000
        at its end, when the worker's RSS peaks; there its dicts still took
        20 MB for 84,000 identities, which right-sized dicts keep in about 3 MB.
        So once a partition holds half its most, its dict is copied, which
        sizes the copy to what it holds (each copy follows more removals than
        it copies: linear overall)."""
        first = part.first
        part.most = max(part.most, len(first))
        forgotten = 0
        for minute in [m for m in part.minutes if m + BUCKET_MS <= cut]:
            for key in part.minutes.pop(minute):
                first.pop(key, None)
                forgotten += 1
        if forgotten and len(first) * 2 < part.most:
            part.first = dict(first)
            part.most = len(first)
        for number in [n for n, newest in part.records.items() if newest + BUCKET_MS <= cut]:
            del part.records[number]
            self._put(partition, number, None)
        return forgotten

    def _load(self, partition: int) -> _Partition:
        part = _Partition()
        found: list[tuple[int, list[Any]]] = []
        for raw_key, raw_value in list(self.table.data.items()):
            if raw_value is None or SEEN.encode() not in raw_key:
                continue
            key = _decode(raw_key)
            if key[0] == partition and key[1] == SEEN:
                found.append((key[2], _decode(raw_value)))
        for number, (last_offset, newest, chunk) in sorted(found):
            part.records[number] = max(minute for minute, _, _ in chunk)
            part.next_record = number + 1
            part.checkpoints.append((last_offset, newest))
            part.last_offset = max(part.last_offset, last_offset)
            part.newest = max(part.newest, newest)
            for minute, raw_hashes, raw_positions in chunk:
                hashes, positions = array("Q"), array("Q")
                hashes.frombytes(raw_hashes)
                positions.frombytes(raw_positions)
                part.first.update(zip(hashes, positions, strict=True))
                part.minutes.setdefault(minute, []).extend(hashes)
        return part

    # --------------------------------------------------------------- lifecycle
    def drop(self, partition: int) -> None:
        """Forget a partition given to another worker (its records move with it)."""
        self._parts.pop(partition, None)

    @property
    def size(self) -> int:
        return sum(len(part.first) for part in self._parts.values())

    def stats(self) -> dict[str, int]:
        return {
            "duplicates": self.duplicates,
            "identities": self.size,
            "forgotten_early": self.forgotten_early,
        }


def is_seen_key(raw_key: bytes) -> bool:
    """Whether a window-table key is one of this module's records."""
    return SEEN.encode() in raw_key
