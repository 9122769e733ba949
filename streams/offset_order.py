"""Each partition's messages are folded in offset order, also across rebalances.

The state recognises a replayed message by offset: a window key's
``through``, a rule family's progress per source, both mean "everything up
to here is in". That is only true if a partition's messages are folded in
offset order, and Faust does not promise it around a rebalance. A worker
that keeps a partition can get messages from where its fetcher had got to
before the recovery's seek back to the committed offset
(faust-streaming/faust#221, #236). Seen here with a second worker joining:
offsets 155..171 were folded, then the seek brought back 136.., whose
keys already held 171, so they were skipped as replays and 136..154 were
never counted.

So a message beyond the next expected offset is not folded and not
acknowledged; it is let go (Faust forgets it without committing its
offset) and comes again in order after a seek, which the fetch loop makes
between two fetches (``streams/intake.py``: made while a fetch taken before it
was still being handed over, it was undone). While a settled worker (no
rebalance, recovery done) keeps getting messages ahead of their turn, the
seek is asked for again every ``RESEEK_SECONDS``. After a few seeks,
Kafka itself is asked which offset comes first from the expected one: if the
expected offset is not there (deleted by retention, compacted, a
transaction marker), the hole is stepped over.

A replay comes in order too. Up to the state's position every message is a
replay the state recognises, so any offset there used to be admitted; but a
replayed message dropped on the way (a fetched list cleared by Faust's flow
control around a recovery) was then simply never seen again. Its state was
already in, yet what it causes besides the state (the record of a re-sent
event, a dead letter) was never written again, and since it was never
acknowledged the group's commit stayed behind it for good: a clean-clone CI
run lost the duplicate records of offsets 28..31 of three partitions so, the
commit of every partition stuck at 28. So the next offset is the one after
the last admitted (or, first after an assignment, the committed one).

Every seek above is asked for by a message that came ahead of its turn. A
partition whose last messages were dropped on the way (the fetch loop read
them, so it does not read them again) has nothing more coming to ask: a
two-worker bench drain stopped so, 5,170 coupon events short, with no
partition waiting for an offset (1 run in 19). So, whatever dropped them, a
partition whose fetch loop has read its expected offset (``Intake.fetched``)
and that has not moved for ``STILL_SECONDS`` is sought back to it; each such
seek is counted (``unstuck``) and logged, since it means a message went
missing between the fetch and the agent. Kafka's end of the partition says
too little: a worker draining a backlog leaves small topics' partitions
unfetched for seconds while the big ones fill its fetches, and seeking them
only threw their fetched records away (25 needless seeks in a three-worker
drain).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.types import TP, Message
from faust.types.transports import ConsumerT

log = logging.getLogger(__name__)

RESEEK_SECONDS = 1.0
"""Between two seeks of a partition still getting messages ahead of their turn."""
SEEKS_BEFORE_PROBE = 2
"""Seeks that did not bring the expected offset before Kafka is asked whether it exists."""
STILL_SECONDS = 5.0
"""A partition whose fetch loop has read past its expected offset, which has not
moved for this long, is sought back to it. Long enough that a busy agent's
queued lists are taken first (a needless seek costs a re-read, never a count)."""


@dataclass(slots=True)
class _Waiting:
    """A partition waiting for its expected offset."""

    expected: int
    seeks: int = 0
    sought_at: float = float("-inf")


class OffsetOrder:
    """Admits one topic's messages in offset order per partition.

    ``position(partition)`` is the last offset folded into the state (-1 for
    none); the state persists it with what it folded, so after a restart or
    a rebalance the order carries on where the state is.
    """

    def __init__(
        self,
        topic: str,
        position: Callable[[int], int],
        settled: Callable[[TP], bool],
        seek: Callable[[TP, int], Awaitable[None]],
        first_offset: Callable[[TP, int], Awaitable[int | None]],
        clock: Callable[[], float] = time.monotonic,
        committed: Callable[[int], int | None] | None = None,
        fetched: Callable[[], Mapping[int, int]] | None = None,
    ) -> None:
        self.topic = topic
        self.position = position
        self.settled = settled
        """Whether a seek may be asked for now (assigned, not rebalancing)."""
        self.seek = seek
        self.first_offset = first_offset
        """The first offset Kafka holds at or after the given one (None: none yet)."""
        self.clock = clock
        self.committed = committed
        """Partition -> the group's committed offset (where a fetch starts after an
        assignment; None: nothing committed, or not known)."""
        self.fetched = fetched
        """Partition -> the last offset the fetch loop took from Kafka since its
        last seek (None: no check for still partitions)."""
        self._last: dict[int, int] = {}
        """Partition -> the last offset admitted since it was assigned here."""
        self._waiting: dict[int, _Waiting] = {}
        self._floor: dict[int, int] = {}
        """Partition -> first offset after a hole Kafka confirmed."""
        self._still: dict[int, tuple[int, float]] = {}
        """Partition read past its expected offset -> (expected offset, when first seen)."""
        self.let_go = 0
        """Messages that came ahead of their turn (they come again)."""
        self.seeks = 0
        self.holes = 0
        """Stretches of offsets Kafka does not have, stepped over."""
        self.unstuck = 0
        """Seeks of a partition whose expected offset stood still after the fetch
        loop had read it (see the module's docstring)."""

    def expected(self, partition: int) -> int:
        """The offset that must come next: the state's next one, or earlier while
        a replay is under way (the one after the last admitted; the committed one
        before any was)."""
        expected = max(self.position(partition) + 1, self._floor.get(partition, 0))
        last = self._last.get(partition)
        if last is not None:
            return min(expected, last + 1)
        if self.committed is not None:
            start = self.committed(partition)
            if start is not None and start < expected:
                return max(start, self._floor.get(partition, 0))
        return expected

    async def admit(self, partition: int, offset: int) -> bool:
        """True: fold the message now. False: let it go (see :func:`let_go`)."""
        expected = self.expected(partition)
        if offset <= expected:
            self._waiting.pop(partition, None)
            self._last[partition] = offset
            return True  # the next one, or one again after a seek back
        waiting = self._waiting.get(partition)
        if waiting is None or waiting.expected != expected:
            waiting = self._waiting[partition] = _Waiting(expected)
            log.info(
                "%s:%d offset %d came while %d is next; letting it go until a seek",
                self.topic, partition, offset, expected,
            )
        self.let_go += 1
        tp = TP(self.topic, partition)
        now = self.clock()
        if now - waiting.sought_at < RESEEK_SECONDS or not self.settled(tp):
            return False  # a seek is on its way (ours, or the recovery's)
        try:
            if waiting.seeks >= SEEKS_BEFORE_PROBE:
                first = await self.first_offset(tp, expected)
                if first is not None and first > expected:
                    waiting = self._step_over(partition, expected, first)
                    if offset == first:
                        del self._waiting[partition]
                        self._last[partition] = offset
                        return True
                    expected = first
            await self.seek(tp, expected)
        except Exception:  # a rebalance took the partition meanwhile: its seek comes
            log.warning("could not seek %s to %d", tp, expected, exc_info=True)
            return False
        self.seeks += 1
        waiting.seeks += 1
        waiting.sought_at = now
        return False

    def _step_over(self, partition: int, expected: int, first: int) -> _Waiting:
        """Go on from ``first``; the partition now waits for it (the seek to it is
        counted on what this returns)."""
        self._floor[partition] = first
        if partition in self._last:
            self._last[partition] = first - 1  # the hole counts as admitted
        waiting = self._waiting[partition] = _Waiting(first)
        self.holes += 1
        log.warning(
            "%s:%d offsets %d..%d are not in Kafka (retention, compaction or "
            "transaction markers); going on from %d",
            self.topic, partition, expected, first - 1, first,
        )
        return waiting

    async def retry(self) -> None:
        """Once a second: seek again for a partition still waiting for its
        expected offset. A seek is otherwise asked for only when a message
        comes ahead of its turn; if the last ones came while a seek could not
        be made (the recovery not quite done) or while one was under way and
        then dropped, nothing more would come to ask, and the partition would
        wait for good."""
        now = self.clock()
        for partition, waiting in list(self._waiting.items()):
            if now - waiting.sought_at < RESEEK_SECONDS:
                continue
            tp = TP(self.topic, partition)
            if not self.settled(tp):
                continue
            try:
                await self.seek(tp, waiting.expected)
            except Exception:
                log.warning("could not seek %s to %d", tp, waiting.expected, exc_info=True)
                continue
            self.seeks += 1
            waiting.seeks += 1
            waiting.sought_at = now
        if self.fetched is not None:
            await self._unstick(now)

    async def _unstick(self, now: float) -> None:
        """Seek a partition back to its expected offset when the fetch loop has
        read it and it has not come for ``STILL_SECONDS`` (see the module's
        docstring)."""
        assert self.fetched is not None
        fetched = self.fetched()
        for partition in [p for p in self._still if p not in fetched]:
            del self._still[partition]
        for partition, read in fetched.items():
            expected = self.expected(partition)
            if read < expected or partition in self._waiting:
                self._still.pop(partition, None)  # not read yet, or a seek is under way
                continue
            seen = self._still.get(partition)
            if seen is None or seen[0] != expected:
                self._still[partition] = (expected, now)
                continue
            tp = TP(self.topic, partition)
            if now - seen[1] < STILL_SECONDS or not self.settled(tp):
                continue
            log.warning(
                "%s:%d has waited %.0f s for offset %d, which the fetch loop read "
                "(up to %d); seeking back to it (its messages went missing on the way)",
                self.topic, partition, now - seen[1], expected, read,
            )
            try:
                await self.seek(tp, expected)
            except Exception:
                log.warning("could not seek %s to %d", tp, expected, exc_info=True)
                continue
            self.seeks += 1
            self.unstuck += 1
            self._still[partition] = (expected, now)

    async def rewind(self, partition: int) -> None:
        """Seek the partition back to its next offset: messages let go for a
        reason of ours (a dead letter Kafka would not take) come again even if
        nothing newer arrives to trigger :meth:`admit`'s seek."""
        tp = TP(self.topic, partition)
        if not self.settled(tp):
            return  # a rebalance is under way: the recovery seeks every partition
        try:
            await self.seek(tp, self.expected(partition))
        except Exception:
            log.warning("could not seek %s to %d", tp, self.expected(partition), exc_info=True)
            return
        self.seeks += 1

    def forget(self, partition: int) -> None:
        """A rebalance came: seeks asked for before it say nothing now, and the
        partition's next fetch starts from the commit."""
        self._waiting.pop(partition, None)
        self._last.pop(partition, None)
        self._still.pop(partition, None)

    def stats(self) -> dict[str, object]:
        """Totals, and each partition waiting for its next offset: which offset,
        for how long, after how many seeks (what a stalled partition shows)."""
        now = self.clock()
        waiting = {
            str(partition): {
                "expected": w.expected, "seeks": w.seeks,
                "since_seek_s": None if w.seeks == 0 else round(now - w.sought_at, 1),
            }
            for partition, w in sorted(self._waiting.items())
        }
        return {"let_go": self.let_go, "seeks": self.seeks, "holes": self.holes,
                "unstuck": self.unstuck, "waiting": waiting}


def let_go(consumer: ConsumerT, message: Message) -> None:
    """Make Faust forget a message without acknowledging its offset.

    Acknowledging it would let Faust commit past the earlier offsets still
    to come (it commits the first run of consecutive acknowledged offsets);
    leaving it unacknowledged would make a rebalance wait for it forever
    (``Consumer.wait_empty``), since it is never processed.
    """
    message.acked = True
    consumer.unacked.discard(message)


def kafka_first_offset(bootstrap: str, timeout_ms: int = 3_000) -> Callable[
    [TP, int], Awaitable[int | None]
]:
    """Ask Kafka, with a consumer of no group, which offset it holds first
    at or after ``offset`` (an offset below the log start gives the log start)."""

    async def first_offset(tp: TP, offset: int) -> int | None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            partition = TopicPartition(tp.topic, tp.partition)
            consumer.assign([partition])
            consumer.seek(partition, offset)
            got = await consumer.getmany(partition, timeout_ms=timeout_ms, max_records=1)
            records = got.get(partition, [])
            return records[0].offset if records else None
        finally:
            await consumer.stop()

    return first_offset
