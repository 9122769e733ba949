"""Bulk writes to Kafka as whole record batches, bypassing the per-record path.

The rules write thousands of records at once, about once a second: every
entity touched since the last write (its changelog record) and every live
level that changed. Through Faust's ``send_soon`` each record costs a future,
a queue round trip, Faust's and aiokafka's per-record send and, when more
than 100 are queued, a stall of the consumer until the buffer ebbs (with a
warning logged per message). py-spy put that path at about a quarter of a
busy worker's time.

Here the records of one write are grouped per topic and partition and
appended to aiokafka batch builders (the record encoding is aiokafka's C
code), one ``send_batch`` per full batch. Order is kept per partition: a
lock makes one write's batches go out before the next write's, so a key's
newer value is never overtaken by an older one (compaction keeps the last).

Durability follows the same rule as Faust's: a write hands its batches to the
producer before the caller acknowledges its source messages, and Faust's
commit flushes the producer before committing offsets.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from faust.types import TP

from ctower.topics import partition_for

Record = tuple[bytes | None, bytes | None]
Acked = Callable[[int, int], None]
"""Told (partition, offset of the batch's last record) once Kafka has a batch."""


def faust_producer(app: Any) -> AIOKafkaProducer:
    """The aiokafka producer under a started Faust app (its transport's own
    accessor: Faust has no public one; it raises before the app started)."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()
    return producer


class BatchWriter:
    """Records gathered per (topic, partition), sent as batches by :meth:`write`."""

    def __init__(self, producer: Callable[[], AIOKafkaProducer]) -> None:
        self._producer = producer
        """Looked up at each write: the app's producer exists only once it started."""
        self.pending: defaultdict[tuple[str, int], list[Record]] = defaultdict(list)
        self._lock = asyncio.Lock()
        self._drain: asyncio.Handle | None = None
        self._drain_task: asyncio.Future[None] | None = None
        self.records = 0
        self.batches = 0
        self._acked: dict[str, Acked] = {}

    def on_acked(self, topic: str, acked: Acked) -> None:
        """Have ``acked`` told how far each partition of ``topic`` is written."""
        self._acked[topic] = acked

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Queue a record. It is written by the next :meth:`write`: the caller's,
        or one scheduled here for the next turn of the event loop, so a record
        added from a callback (a window's closed marker, written once Kafka has
        its records) is in the producer before a rebalance's flush, as it
        would be with Faust's own buffer."""
        self.pending[(topic, partition)].append((key, value))
        if self._drain is None:
            self._schedule_drain()

    def add_keyed(self, topic: str, partitions: int, key: bytes, value: bytes) -> None:
        """A record on the partition Kafka's default partitioner gives ``key``."""
        self.add(topic, partition_for(key, partitions), key, value)

    def _schedule_drain(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a test driving the rules directly): the caller writes
        self._drain = loop.call_soon(self._start_drain)

    def _start_drain(self) -> None:
        self._drain = None
        if self.pending:
            self._drain_task = asyncio.ensure_future(self.write())

    async def write(self) -> None:
        """Hand everything added so far to the producer, in order per partition.

        Returns once it is all there, including what a write already under way
        (a scheduled one) took: the lock is taken even with nothing new.
        """
        async with self._lock:
            # taken under the lock: writers that queued behind a write go out
            # as one (each taking its own share sent a batch per partition that
            # waited for the previous one to leave: a round trip per settle)
            pending, self.pending = self.pending, defaultdict(list)
            if not pending:
                return  # what an earlier write took is in the producer now
            producer = self._producer()
            for (topic, partition), records in pending.items():
                await self._send(producer, topic, partition, records)

    async def _send(
        self, producer: AIOKafkaProducer, topic: str, partition: int, records: list[Record]
    ) -> None:
        acked = self._acked.get(topic)
        batch: Any = producer.create_batch()
        in_batch = 0
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                # full: send it and start the next (a first record always fits)
                await self._send_batch(producer, batch, topic, partition, in_batch, acked)
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
                in_batch = 0
            in_batch += 1
        await self._send_batch(producer, batch, topic, partition, in_batch, acked)
        self.records += len(records)

    async def _send_batch(
        self, producer: AIOKafkaProducer, batch: Any, topic: str, partition: int,
        count: int, acked: Acked | None,
    ) -> None:
        sent = await producer.send_batch(batch, topic, partition=partition)
        self.batches += 1
        if acked is not None:
            sent.add_done_callback(partial(_tell_acked, acked, partition, count))


def _tell_acked(acked: Acked, partition: int, count: int, sent: asyncio.Future[Any]) -> None:
    """``sent`` resolves to the offset of the first of its ``count`` records."""
    if not sent.cancelled() and sent.exception() is None:
        acked(partition, sent.result().offset + count - 1)


def persisted_offsets(table: Any) -> Acked:
    """Tells a Faust table's store how far its changelog is written, as Faust's
    own changelog path does (``tables/memory_store.py``: a partition kept
    through a rebalance is then not read back)."""
    topic = table.changelog_topic.get_topic_name()

    def acked(partition: int, offset: int) -> None:
        table.data.set_persisted_offset(TP(topic, partition), offset)

    return acked


class BatchedChangelog:
    """A Faust table whose changelog records go through a :class:`BatchWriter`.

    Reads (``data``, filled by Faust's recovery) stay the table's; only the
    writing path changes, to the same topic, partition, key and value bytes.
    """

    def __init__(self, table: Any, writer: BatchWriter) -> None:
        self.table = table
        self.writer = writer
        self.topic = table.changelog_topic.get_topic_name()
        writer.on_acked(self.topic, persisted_offsets(table))

    @property
    def data(self) -> Any:
        return self.table.data

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> None:
        assert partition is not None, "rule state always names its partition"
        self.writer.add(self.topic, partition, key, value)


class AckedChangelog:
    """A Faust table whose changelog records go straight to aiokafka, each
    with a future that Kafka's acknowledgement completes.

    For the coupon ledger, whose reservations answer only once their records
    are acknowledged. Through Faust's ``send_soon`` every record waited in
    one queue that a single task hands to aiokafka a record at a time, and a
    partition's full batch stopped that task until the batch left. Timed in
    the coupon server during ``ctower bench decisions``, while the
    aggregation drained its backlog, records waited there (the wait's p99)
    longer than the server's event loop was ever late. Here the records of one turn of
    the loop are handed over per partition, in order, and one partition
    waiting for room in its batch holds no other.
    """

    def __init__(self, table: Any, producer: Callable[[], AIOKafkaProducer]) -> None:
        self.table = table
        self._producer = producer
        self.topic = table.changelog_topic.get_topic_name()
        self._acked = persisted_offsets(table)
        self._gathering: dict[int, tuple[list[Record], asyncio.Future[None]]] = {}
        self._handing: dict[int, asyncio.Task[None]] = {}
        """Per partition, the last hand-over to the producer: the next one waits for it."""
        self._scheduled: asyncio.Handle | None = None

    @property
    def data(self) -> Any:
        return self.table.data

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> asyncio.Future[None]:
        """Queue a record for this turn's batch of its partition; the future is
        the batch's, done once Kafka acknowledged it."""
        assert partition is not None, "the ledger always names its partition"
        gathering = self._gathering.get(partition)
        if gathering is None:
            loop = asyncio.get_running_loop()
            gathering = self._gathering[partition] = ([], loop.create_future())
            if self._scheduled is None:
                self._scheduled = loop.call_soon(self._hand_over_all)
        gathering[0].append((key, value))
        return gathering[1]

    def _hand_over_all(self) -> None:
        self._scheduled = None
        gathered, self._gathering = self._gathering, {}
        for partition, (records, acked) in gathered.items():
            previous = self._handing.get(partition)
            self._handing[partition] = asyncio.ensure_future(
                self._hand_over(partition, records, acked, previous)
            )

    async def _hand_over(
        self, partition: int, records: list[Record], acked: asyncio.Future[None],
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own batch's
        try:
            producer = self._producer()
            send = producer.send
            # appended to the partition's open batch (a batch of our own per
            # turn would wait for the one before it to leave: one a request)
            sent = [await send(self.topic, value, key=key, partition=partition)
                    for key, value in records]
        except Exception as exc:  # not handed over: the batch's records are not durable
            if not acked.done():
                acked.set_exception(exc)
            return
        complete_when_all(sent, acked)
        # each record has its own future: the last one's offset is the partition's
        sent[-1].add_done_callback(partial(_tell_acked, self._acked, partition, 1))

    async def handed_over(self) -> None:
        """Return once every record queued so far is in the producer (what
        Faust's commit flushes): acks of the messages that caused them may go."""
        if self._gathering:
            if self._scheduled is not None:
                self._scheduled.cancel()
            self._hand_over_all()
        pending = [task for task in self._handing.values() if not task.done()]
        if pending:
            await asyncio.wait(pending)


def complete_when_all(sent: list[asyncio.Future[Any]], target: asyncio.Future[None]) -> None:
    """Complete ``target`` once every future of ``sent`` is done, or fail it
    with the first that fails (a write that did not reach Kafka)."""
    remaining = [len(sent)]

    def one_done(fut: asyncio.Future[Any]) -> None:
        remaining[0] -= 1
        if target.done():
            return
        if fut.cancelled():
            target.set_exception(RuntimeError("the write was cancelled"))
        elif fut.exception() is not None:
            target.set_exception(fut.exception())  # type: ignore[arg-type]
        elif remaining[0] == 0:
            target.set_result(None)

    for fut in sent:
        fut.add_done_callback(one_done)
