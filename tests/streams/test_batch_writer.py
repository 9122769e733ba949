"""Bulk writes as whole batches (streams/batch_writer.py), against the real broker."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from ctower.settings import Settings
from ctower.streams.batch_writer import BatchedChangelog, BatchWriter
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

    async def run() -> tuple[BatchWriter, dict[int, list[tuple[bytes, bytes]]]]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
        await producer.start()
        writer = BatchWriter(lambda: producer)
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
