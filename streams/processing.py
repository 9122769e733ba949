"""One stream's batch processing: decode, dead-letter, drop re-sends, fold, persist, close.

Kept apart from the Faust wiring so the whole path can be driven in a unit
test with plain message tuples, and so the agent body stays one line.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ctower.schemas.control import DEAD_LETTER_RAW_BYTES, DeadLetter, DuplicateEvent
from ctower.schemas.events import Event
from ctower.schemas.wire import EventDecoder
from ctower.tables.dedup import Resent, SeenEvents
from ctower.tables.folds import FOLDS, MessageFold
from ctower.tables.window_state import WindowState

WRITE_EVERY_S = 0.5
"""How often a stream's window state is written at most (besides a forced
write: the upkeep's once a second, a revocation, the stop). Each write
rewrites every changed shard of every open window whole, so writing at every
batch (five a second on a live stream) rewrote the same shards five times:
at 10,000 events/s the shards' encoding was a tenth of the worker's time,
and the bytes went through aiokafka and the broker as well. The batches in
between are held, not acknowledged, until the write that covers them.
Not a second: 1M-event drains then went over the 400 MB RSS target in most
runs, where half a second and every batch stayed under it (the cause was
not found; the identities held were the same)."""


@dataclass(frozen=True, slots=True)
class RawMessage:
    """What processing needs of a Kafka message."""

    partition: int
    offset: int
    value: bytes | None


class StreamProcessor:
    """Turns batches of raw messages of one stream into window state."""

    def __init__(
        self,
        *,
        stream: str,
        topic: str,
        decoder: EventDecoder,
        state: WindowState,
        publish_dead_letter: Callable[[DeadLetter], None],
        observer: Callable[[int, int, list[Event]], None] | None = None,
        after_flush: Callable[[], bool | None] | None = None,
        seen: SeenEvents | None = None,
        publish_duplicate: Callable[[DuplicateEvent], None] | None = None,
        dead_letter_raw_bytes: int = DEAD_LETTER_RAW_BYTES,
        write_every_s: float = WRITE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.topic = topic
        self.decoder = decoder
        self.state = state
        self.fold = FOLDS[stream]
        self.publish_dead_letter = publish_dead_letter
        self.dead_letter_raw_bytes = dead_letter_raw_bytes
        self.seen = seen
        """Identities already counted: a re-sent event is dropped before the folds
        and the observer, so windows, rules and the coupon ledger count it once."""
        self.publish_duplicate = publish_duplicate
        self.observer = observer
        """Sees each message's decoded events (the rules' input)."""
        self.after_flush = after_flush
        """Runs after the window state is persisted, before the batch is acked; returning
        False says what it holds is not written yet (the batch must wait for its ack)."""
        self.events = 0
        self.messages = 0
        self.dead_letters: Counter[str] = Counter()
        self.duplicates = 0
        self._touched: set[int] = set()
        self.write_every_s = write_every_s
        self.clock = clock
        self._written_at = float("-inf")
        self.writes = 0

    def process(self, batch: Iterable[RawMessage]) -> None:
        """Fold a batch in and persist it (what tests and one-shot callers want)."""
        for message in batch:
            self.absorb(message)
        self.write_state()
        if self.after_flush is not None:
            self.after_flush()

    def absorb(self, message: RawMessage) -> None:
        """Fold one message into the in-memory state; :meth:`flush` persists it."""
        partition, offset = message.partition, message.offset
        decoded = self.decoder.decode(message.value)
        if decoded.rejected:
            received_at = int(time.time() * 1000)
            for rejected in decoded.rejected:
                self.dead_letters[rejected.reason] += 1
                self.publish_dead_letter(
                    DeadLetter.bounded(
                        source_topic=self.topic,
                        partition=partition,
                        offset=offset,
                        index=rejected.index,
                        reason=rejected.reason,
                        detail=rejected.detail,
                        raw=rejected.raw,
                        received_at=received_at,
                        raw_limit=self.dead_letter_raw_bytes,
                    )
                )
        events = decoded.events
        if events and self.seen is not None:
            kept, resent = self.seen.filter(partition, offset, events)
            if resent:
                self._report_resent(partition, offset, resent)
                events = list(kept)
        max_ts = 0
        state = self.state
        if events:
            fold = MessageFold(state, partition, offset)
            self.fold(events, fold)
            state.apply(partition, offset, fold.contributions)
            max_ts = max(ev.ts for ev in events)
            self.events += len(events)
            if self.observer is not None:
                self.observer(partition, offset, events)
        state.observe(partition, offset, max_ts)
        self._touched.add(partition)
        self.messages += 1

    def _report_resent(self, partition: int, offset: int, resent: list[Resent]) -> None:
        self.duplicates += len(resent)
        if self.publish_duplicate is None:
            return
        for copy in resent:
            self.publish_duplicate(
                DuplicateEvent(
                    source_topic=self.topic,
                    partition=partition,
                    offset=offset,
                    index=copy.index,
                    identity=copy.event.identity(),
                    first_offset=copy.first_offset,
                    first_index=copy.first_index,
                    event_ts=copy.event.ts,  # type: ignore[arg-type]
                )
            )

    def position(self, partition: int) -> int:
        """The last offset of ``partition`` folded in (-1: none)."""
        return self.state.position(partition)

    def flush(self) -> bool:
        """After a batch: write the identities seen, the window state when due
        (:meth:`write_state`), then run ``after_flush``.

        True when everything absorbed is in the changelog, so the batch may be
        acked; False when the window state's write is not due yet or
        ``after_flush`` holds part of it back (the rules write about once a
        second).

        The identities go at every batch: each write of them is a checkpoint
        the forgetting goes by (what a replay would not read again), and
        written with the windows a draining worker held minutes more of event
        time of identities, and went over the 400 MB RSS target. Written
        ahead of the windows they are safe: a replayed message's events are
        recognised as the first copies, not as re-sends.

        Windows close only at a write, never between two: the watermark
        record that closed a window must be in the changelog before its
        marker. Closed ahead of it (tried), a worker killed after the marker
        and before the watermark came back with an older watermark, folded a
        late event of the closed window into a new one, and its partial row
        replaced the window's row in the store (one order short in the
        pipeline's kill test).
        """
        written = self.write_state(force=False)  # the identities first, when due
        if not written and self.seen is not None:
            for partition in self._touched:
                if self.state.owns(partition):
                    self.seen.flush(partition)
        if self.after_flush is not None:
            return self.after_flush() is not False and written
        return written

    def write_state(self, force: bool = True) -> bool:
        """Persist the window state (and the identities seen) of the partitions
        folded into since the last write, for those this worker still owns.

        Unless ``force``, only once ``write_every_s`` has passed since the last
        write. True when nothing folded is left unwritten.
        """
        if not self._touched:
            return True
        now = self.clock()
        if not force and now - self._written_at < self.write_every_s:
            return False
        self._written_at = now
        self.writes += 1
        touched, self._touched = self._touched, set()
        for partition in touched:
            if self.state.owns(partition):
                if self.seen is not None:
                    self.seen.flush(partition)
                self.state.flush(partition)
        return True

    def forget_seen(self) -> None:
        """Identities past the horizon go from the partitions no batch touched
        (once a second, from the upkeep: :meth:`flush` covers the others)."""
        if self.seen is not None:
            self.seen.forget_past_horizon(self.state.owns)

    def drop(self, partition: int) -> None:
        """Forget a partition given to another worker (its state moves with it)."""
        self.state.drop(partition)
        if self.seen is not None:
            self.seen.drop(partition)

    def stats(self) -> dict[str, object]:
        return {
            "messages": self.messages,
            "events": self.events,
            "dead_letters": dict(self.dead_letters),
            "duplicates": self.duplicates,
            "dedup": self.seen.stats() if self.seen is not None else {},
            "state_writes": self.writes,
            "windows_closed": self.state.windows_closed,
            "late_events": self.state.late_events,
            "replayed_skips": self.state.replayed_skips,
            # how far each partition held here is folded: ``events`` counts a
            # message again when a partition is folded again after a hand-over
            "positions": {str(p): offset for p, offset in self.state.positions().items()},
        }
