"""Bulk writes as whole batches (streams/batch_writer.py), against the real broker."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.types import TP
from kafka.admin import KafkaAdminClient, NewTopic

from ctower.settings import Settings
from ctower.streams.batch_writer import AckedChangelog, BatchedChangelog, BatchWriter
from ctower.topics import partition_for

PARTITIONS = 3


def _topic(settings: Settings, name: str) -> str:
    topic = settings.topic(name)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        admin.close()
    return topic


async def _read(settings: Settings, topic: str, count: int) -> dict[int, list[tuple[bytes, bytes]]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    try:
        seen = 0
        for _ in range(100):
            batches = await consumer.getmany(timeout_ms=200)
            for tp, messages in batches.items():
                for message in messages:
                    got[tp.partition].append((message.key, message.value))  # type: ignore[arg-type]
                    seen += 1
            if seen >= count:
                break
    finally:
        await consumer.stop()
    return got


def test_writes_arrive_whole_and_in_order_per_partition_across_batches(
    settings: Settings,
) -> None:
    topic = _topic(settings, "batch-writer")
    value = b"v" * 5_000  # about 3 records per 16 kB batch: many batches per partition

    written: dict[int, list[int]] = defaultdict(list)

    async def run() -> tuple[BatchWriter, dict[int, list[tuple[bytes, bytes]]]]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
        await producer.start()
        writer = BatchWriter(lambda: producer)
        writer.on_acked(topic, lambda partition, offset: written[partition].append(offset))
        try:
            # two writes racing: the second's records must all come after the first's
            for n in range(60):
                writer.add(topic, n % PARTITIONS, f"k{n % 7}".encode(), value + b"%d" % n)
            first = asyncio.ensure_future(writer.write())
            await asyncio.sleep(0)
            for n in range(60, 90):
                writer.add_keyed(topic, PARTITIONS, f"k{n % 7}".encode(), value + b"%d" % n)
            await asyncio.gather(first, writer.write())
            await producer.flush()
        finally:
            await producer.stop()
        return writer, await _read(settings, topic, 90)

    writer, got = asyncio.run(run())
    assert writer.records == 90
    assert writer.batches > PARTITIONS * 2  # full batches were sent and new ones begun
    assert sum(len(records) for records in got.values()) == 90
    for partition, records in got.items():
        numbers = [int(v[len(value):]) for _, v in records]
        assert numbers == sorted(numbers), partition  # no write overtook an earlier one
        for key, v in records:
            n = int(v[len(value):])
            if n >= 60:  # keyed: where the Java client would put it
                assert partition == partition_for(key, PARTITIONS)
            else:
                assert partition == n % PARTITIONS
        # told, batch by batch, the offset of each one's last record
        assert len(written[partition]) > 1
        assert max(written[partition]) == len(records) - 1


def test_a_batched_changelog_writes_to_the_tables_changelog_topic(settings: Settings) -> None:
    class Topic:
        def get_topic_name(self) -> str:
            return "app-rules-state-changelog"

    class Table:
        def __init__(self) -> None:
            self.data = {b"k": b"v"}
            self.changelog_topic = Topic()

    writer = BatchWriter(lambda: None)  # type: ignore[arg-type, return-value]
    changelog = BatchedChangelog(Table(), writer)
    assert changelog.data == {b"k": b"v"}  # reads stay the table's
    changelog.send_changelog(2, b"key", None)  # a tombstone
    assert writer.pending == {("app-rules-state-changelog", 2): [(b"key", None)]}


def test_a_record_added_outside_any_write_goes_out_on_its_own(settings: Settings) -> None:
    """A window's closed marker is added from a Kafka ack callback: nobody
    calls write() for it, yet it must reach the producer before a rebalance
    flushes it."""
    topic = _topic(settings, "batch-writer-drain")

    async def run() -> tuple[int, dict[int, list[tuple[bytes, bytes]]]]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
        await producer.start()
        writer = BatchWriter(lambda: producer)
        try:
            asyncio.get_running_loop().call_soon(writer.add, topic, 1, b"marker", b"closed")
            for _ in range(100):
                await asyncio.sleep(0.02)
                if writer.records:
                    break
            await producer.flush()
        finally:
            await producer.stop()
        return writer.records, await _read(settings, topic, 1)

    records, got = asyncio.run(run())
    assert records == 1
    assert got == {1: [(b"marker", b"closed")]}


def test_a_write_with_nothing_to_write_never_asks_for_the_producer() -> None:
    """Acks may be settled before the app's producer exists (it raises then)."""

    def no_producer() -> AIOKafkaProducer:
        raise RuntimeError("the producer is not started")

    asyncio.run(BatchWriter(no_producer).write())


class _Data(dict[bytes, bytes]):
    """A table's store: its data, and how far each changelog partition is written."""

    def __init__(self) -> None:
        super().__init__()
        self.written: dict[TP, int] = {}

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.written[tp] = max(offset, self.written.get(tp, -1))


class _Table:
    """The part of a Faust table a changelog wrapper uses."""

    def __init__(self, topic: str) -> None:
        self.data = _Data()
        name = topic

        class Topic:
            def get_topic_name(self) -> str:
                return name

        self.changelog_topic = Topic()


def test_acked_records_arrive_in_order_and_their_futures_wait_for_kafka(
    settings: Settings,
) -> None:
    """The coupon ledger's path: a turn's records share one future per
    partition, done only once Kafka acknowledged them; turns stay in order."""
    topic = _topic(settings, "acked-changelog")
    value = b"v" * 5_000  # several batches per partition and turn

    table = _Table(topic)

    async def run() -> list[asyncio.Future[None]]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=5)
        await producer.start()
        changelog = AckedChangelog(table, lambda: producer)
        try:
            first = [changelog.send_changelog(n % PARTITIONS, b"k%d" % n, value + b"%d" % n)
                     for n in range(30)]
            assert len({id(f) for f in first}) == PARTITIONS  # one per partition and turn
            assert not any(f.done() for f in first)  # nothing handed over yet
            await asyncio.sleep(0)
            second = [changelog.send_changelog(n % PARTITIONS, b"k%d" % n, value + b"%d" % n)
                      for n in range(30, 45)]
            await changelog.handed_over()
            await asyncio.wait_for(asyncio.gather(*first, *second), 10)
        finally:
            await producer.stop()
        return first + second

    futures = asyncio.run(run())
    assert all(f.done() and f.exception() is None for f in futures)
    got = asyncio.run(_read(settings, topic, 45))
    assert sum(len(records) for records in got.values()) == 45
    for partition, records in got.items():
        numbers = [int(v[len(value):]) for _, v in records]
        assert numbers == sorted(numbers), partition
        assert all(n % PARTITIONS == partition for n in numbers)
        # the store knows how far the partition is written (kept through a rebalance)
        assert table.data.written[TP(topic, partition)] == len(records) - 1


class _HeldProducer:
    """aiokafka's send, where partition 0's records are held until released
    (as a full batch waits for the one before it to leave)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sent: list[tuple[int, bytes]] = []
        self.acks: list[asyncio.Future[Any]] = []
        self.fail = False

    async def send(self, topic: str, value: bytes, key: bytes, partition: int
                   ) -> asyncio.Future[Any]:
        if self.fail:
            raise RuntimeError("the producer is closed")
        if partition == 0:
            await self.release.wait()
        self.sent.append((partition, key))
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack

    def acknowledge(self, n: int) -> None:
        """Kafka's answer to the n-th record sent (offsets as on a fresh topic)."""
        partition = self.sent[n][0]
        offset = sum(1 for p, _ in self.sent[:n] if p == partition)
        self.acks[n].set_result(SimpleNamespace(offset=offset))


def test_a_partition_waiting_to_hand_over_holds_no_other() -> None:
    """Through Faust's one send queue a partition's full batch held every
    record behind it (a reservation's record waited up to a quarter of a
    second); here partition 1 goes out while partition 0 still waits."""

    async def run() -> None:
        producer = _HeldProducer()
        table = _Table("t")
        changelog = AckedChangelog(table, lambda: producer)  # type: ignore[arg-type, return-value]
        held = changelog.send_changelog(0, b"a", b"1")
        free = changelog.send_changelog(1, b"b", b"2")
        handed = asyncio.ensure_future(changelog.handed_over())
        for _ in range(10):
            await asyncio.sleep(0)
        assert producer.sent == [(1, b"b")]  # partition 1 went out, 0 waits
        assert not handed.done()  # not everything is in the producer yet
        producer.acknowledge(0)
        await asyncio.sleep(0)
        assert free.done() and not held.done()
        later = changelog.send_changelog(0, b"c", b"3")  # queued behind the held batch
        producer.release.set()
        await asyncio.wait_for(handed, 1)
        for _ in range(10):
            await asyncio.sleep(0)
        assert producer.sent == [(1, b"b"), (0, b"a"), (0, b"c")]  # in order on 0
        for n in range(1, len(producer.acks)):
            producer.acknowledge(n)
        await asyncio.wait_for(asyncio.gather(held, later), 1)
        assert table.data.written == {TP("t", 1): 0, TP("t", 0): 1}

    asyncio.run(run())


def test_a_batch_that_cannot_be_handed_over_fails_its_records() -> None:
    """The ledger marks such records changed again, so a later flush resends them."""

    async def run() -> None:
        producer = _HeldProducer()
        producer.fail = True
        changelog = AckedChangelog(_Table("t"), lambda: producer)  # type: ignore[arg-type, return-value]
        written = changelog.send_changelog(2, b"k", b"v")
        await changelog.handed_over()
        assert written.done() and isinstance(written.exception(), RuntimeError)

    asyncio.run(run())
