"""A partition's messages reach the state in offset order, whatever Faust delivers.

The first test replays what the two-worker pipeline test caught: after a
rebalance, a kept partition delivered offsets from where its fetcher had
been (155..171) before the recovery's seek brought back the committed ones
(136..). Folded as delivered, 136..154 were skipped as replays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition
from faust.types import TP
from kafka.admin import KafkaAdminClient, NewTopic

from ctower.schemas.wire import EventDecoder
from ctower.settings import Settings
from ctower.streams.offset_order import (
    RESEEK_SECONDS,
    SEEKS_BEFORE_PROBE,
    STILL_SECONDS,
    OffsetOrder,
    kafka_first_offset,
    let_go,
)
from ctower.streams.processing import RawMessage, StreamProcessor
from ctower.tables.aggregates import STORE_MINUTE
from ctower.tables.window_state import WindowState

TS = 1_790_000_000_000 - 1_790_000_000_000 % 60_000
TOPIC = "ct.scan"


def scans(offsets: Iterable[int], ts: int | None = None) -> list[RawMessage]:
    """One scan of store S1 per message, all in the same minute."""
    encode = msgspec.json.Encoder().encode
    return [
        RawMessage(0, offset, encode(
            {"scan_id": f"s{offset}", "ts": ts or TS + offset, "store_id": "S1", "sku": "K1",
             "action": "view"}
        ))
        for offset in offsets
    ]


def processor(table: Any) -> StreamProcessor:
    state = WindowState(
        table=table, source_topic=TOPIC, specs=[STORE_MINUTE], grace_ms=600_000,
        idle_close_ms=600_000, publish_closed=lambda records, acked: None,
        publish_late=lambda record: None,
    )
    return StreamProcessor(
        stream="scan", topic=TOPIC, decoder=EventDecoder.for_stream("scan", 10**9, 10**9),
        state=state, publish_dead_letter=lambda record: None,
    )


def scans_counted(proc: StreamProcessor) -> int:
    bucket = proc.state.partition(0).open[(STORE_MINUTE.name, TS)]
    return sum(entry[1] for shard in bucket.shards for entry in shard.values())


class Consumer:
    """What the order needs of Faust's consumer and of Kafka: whether a seek may
    be asked for, the seek, and the first offset Kafka holds from a given one."""

    def __init__(self, settled: bool, holes: dict[int, int] | None = None) -> None:
        self.is_settled = settled
        self.holes = holes or {}
        """Offset missing from Kafka -> the first offset after it."""
        self.seeks: list[tuple[int, int]] = []
        self.probes: list[int] = []
        self.now = 0.0

    def settled(self, tp: Any) -> bool:
        return self.is_settled

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp.partition, offset))

    async def first_offset(self, tp: Any, offset: int) -> int | None:
        self.probes.append(offset)
        return self.holes.get(offset, offset)

    def order(self, proc: StreamProcessor) -> OffsetOrder:
        return OffsetOrder(
            TOPIC, proc.position, self.settled, self.seek, self.first_offset,
            clock=lambda: self.now,
        )


def deliver(
    order: OffsetOrder | None, proc: StreamProcessor, messages: list[RawMessage]
) -> list[int]:
    """Feed messages as the agent does; returns the offsets folded."""

    async def run() -> list[int]:
        folded = []
        for message in messages:
            if order is not None and not await order.admit(message.partition, message.offset):
                continue
            proc.absorb(message)
            folded.append(message.offset)
        if not proc.flush():
            proc.write_state()  # the upkeep's write, which the batch's ack waits for
        return folded

    return asyncio.run(run())


def stale_prefetch_then_seek() -> list[RawMessage]:
    """136..154 were fetched and cleared by the rebalance; the fetcher's stale
    position (155) is delivered first, then the seek to the commit (136)."""
    return scans(range(155, 172)) + scans(range(136, 200))


def test_without_the_order_a_stale_prefetch_loses_what_came_before_it(
    memory_table: Any,
) -> None:
    proc = processor(memory_table)
    deliver(None, proc, scans(range(136)))
    deliver(None, proc, stale_prefetch_then_seek())
    assert scans_counted(proc) == 200 - 19  # 136..154 skipped as replays: the bug


def test_the_order_folds_every_offset_once_after_a_stale_prefetch(memory_table: Any) -> None:
    proc = processor(memory_table)
    consumer = Consumer(settled=False)  # the recovery's own seek is still to come
    order = consumer.order(proc)
    deliver(order, proc, scans(range(136)))
    folded = deliver(order, proc, stale_prefetch_then_seek())
    assert folded[:19] == list(range(136, 155))
    assert scans_counted(proc) == 200
    assert order.stats() == {"let_go": 17, "seeks": 0, "holes": 0, "unstuck": 0, "waiting": {}}
    assert consumer.seeks == []  # not settled: Faust seeks, not us


def test_a_settled_worker_seeks_back_and_again_while_the_seek_is_undone(
    memory_table: Any,
) -> None:
    proc = processor(memory_table)
    consumer = Consumer(settled=True)
    order = consumer.order(proc)
    deliver(order, proc, scans(range(10)))
    deliver(order, proc, scans(range(14, 18)))  # 10..13 went missing on the way
    assert consumer.seeks == [(0, 10)]  # once, not once a message
    consumer.now += 0.5
    assert order.stats()["waiting"] == {"0": {"expected": 10, "seeks": 1, "since_seek_s": 0.5}}
    # Faust's fetch loop, still draining an older batch, dropped what the seek
    # brought: later offsets keep coming, and after a while the seek is asked again
    deliver(order, proc, scans(range(18, 22)))
    assert consumer.seeks == [(0, 10)]
    consumer.now += RESEEK_SECONDS
    deliver(order, proc, scans(range(22, 24)))
    assert consumer.seeks == [(0, 10), (0, 10)]
    deliver(order, proc, scans(range(10, 30)))  # what the second seek brings
    assert scans_counted(proc) == 30
    assert order.stats() == {"let_go": 10, "seeks": 2, "holes": 0, "unstuck": 0, "waiting": {}}
    assert consumer.probes == []  # two seeks, then Kafka would have been asked


def test_a_partition_whose_last_messages_came_before_a_seek_could_be_made_is_sought_by_the_timer(
    memory_table: Any,
) -> None:
    """The last messages came ahead of their turn while no seek could be made
    (the recovery not quite done): nothing more comes to ask for one, so the
    once-a-second retry does, once the worker is settled, and again while the
    expected offset does not come."""
    proc = processor(memory_table)
    consumer = Consumer(settled=False)
    order = consumer.order(proc)
    deliver(order, proc, scans(range(10)))
    deliver(order, proc, scans(range(14, 18)))  # 10..13 went missing, and no seek yet
    assert consumer.seeks == []

    asyncio.run(order.retry())
    assert consumer.seeks == []  # still not settled: the recovery seeks itself
    consumer.is_settled = True
    asyncio.run(order.retry())
    assert consumer.seeks == [(0, 10)]
    asyncio.run(order.retry())
    assert consumer.seeks == [(0, 10)]  # not again within RESEEK_SECONDS
    consumer.now += RESEEK_SECONDS
    asyncio.run(order.retry())
    assert consumer.seeks == [(0, 10), (0, 10)]

    deliver(order, proc, scans(range(10, 18)))  # what the seek brings
    assert scans_counted(proc) == 18
    consumer.now += RESEEK_SECONDS
    asyncio.run(order.retry())
    assert consumer.seeks == [(0, 10), (0, 10)]  # nothing waits any more


def test_an_offset_kafka_does_not_hold_is_stepped_over_after_asking_it(
    memory_table: Any,
) -> None:
    proc = processor(memory_table)
    consumer = Consumer(settled=True, holes={10: 12})  # 10, 11: transaction markers
    order = consumer.order(proc)
    deliver(order, proc, scans(range(10)))
    for _ in range(SEEKS_BEFORE_PROBE):
        assert deliver(order, proc, scans([12, 13])) == []  # what each seek brings
        consumer.now += RESEEK_SECONDS
    assert consumer.seeks == [(0, 10)] * SEEKS_BEFORE_PROBE
    assert consumer.probes == []
    assert deliver(order, proc, scans([12, 13, 14])) == [12, 13, 14]
    assert consumer.probes == [10]
    assert order.stats()["holes"] == 1
    assert scans_counted(proc) == 13


def test_the_seek_past_a_hole_counts_as_a_seek(memory_table: Any) -> None:
    proc = processor(memory_table)
    consumer = Consumer(settled=True, holes={10: 12})
    order = consumer.order(proc)
    deliver(order, proc, scans(range(10)))
    for _ in range(SEEKS_BEFORE_PROBE):
        deliver(order, proc, scans([13]))  # 12 was fetched and cleared: 13 comes first
        consumer.now += RESEEK_SECONDS
    assert deliver(order, proc, scans([13, 14])) == []  # hole found: seek to 12, once
    assert consumer.seeks == [(0, 10)] * SEEKS_BEFORE_PROBE + [(0, 12)]
    assert deliver(order, proc, scans(range(12, 15))) == [12, 13, 14]
    assert scans_counted(proc) == 13


def test_no_hole_is_assumed_while_kafka_holds_the_expected_offset(memory_table: Any) -> None:
    proc = processor(memory_table)
    consumer = Consumer(settled=True)
    order = consumer.order(proc)
    deliver(order, proc, scans(range(10)))
    for _ in range(SEEKS_BEFORE_PROBE + 2):
        assert deliver(order, proc, scans([15])) == []
        consumer.now += RESEEK_SECONDS
    assert consumer.probes == [10, 10]  # asked, told it is there: seek again
    assert deliver(order, proc, scans(range(10, 16))) == list(range(10, 16))
    assert order.stats()["holes"] == 0


def test_a_rebalance_forgets_the_seeks_asked_before_it(memory_table: Any) -> None:
    proc = processor(memory_table)
    consumer = Consumer(settled=True)
    order = consumer.order(proc)
    deliver(order, proc, scans(range(10)))
    deliver(order, proc, scans([20]))
    assert consumer.seeks == [(0, 10)]
    order.forget(0)  # revoked and given back: the recovery seeks, ours is stale
    deliver(order, proc, scans([21]))
    assert consumer.seeks == [(0, 10), (0, 10)]  # settled again: asked at once


def test_the_position_survives_a_restart_with_the_state(memory_table: Any) -> None:
    proc = processor(memory_table)
    deliver(None, proc, scans(range(7)))
    deliver(None, proc, scans(range(7, 10), ts=TS))  # older events: the watermark stays
    restarted = processor(memory_table)  # same table: what recovery gives back
    assert restarted.position(0) == 9


def test_let_go_leaves_the_offset_uncommitted_and_the_message_forgotten() -> None:
    class Message:
        acked = False

    class FaustConsumer:
        def __init__(self, message: Message) -> None:
            self.unacked = {message}

    message = Message()
    consumer = FaustConsumer(message)
    let_go(consumer, message)  # type: ignore[arg-type]
    assert message.acked  # a later ack() is a no-op: the offset never reaches a commit
    assert consumer.unacked == set()  # a rebalance does not wait for it


@pytest.mark.kafka
def test_kafka_says_which_offset_it_holds_first(settings: Settings) -> None:
    """The probe against the real broker, with a hole retention would leave."""
    topic = settings.topic("offset-probe")
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    tp = TopicPartition(topic, 0)

    async def run() -> list[int | None]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
        await producer.start()
        try:
            for value in range(6):
                await producer.send_and_wait(topic, str(value).encode(), partition=0)
        finally:
            await producer.stop()
        kafka_admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
        await kafka_admin.start()
        try:
            await kafka_admin.delete_records({tp: RecordsToDelete(before_offset=3)})
        finally:
            await kafka_admin.close()
        first_offset = kafka_first_offset(settings.bootstrap, timeout_ms=500)
        faust_tp = TP(topic, 0)
        return [await first_offset(faust_tp, offset) for offset in (0, 4, 6)]

    assert asyncio.run(run()) == [3, 4, None]


def test_a_replayed_message_dropped_on_the_way_is_sought_back_not_skipped(
    memory_table: Any,
) -> None:
    """What a clean-clone CI run caught after a killed worker: the restarted
    one replayed 0..27, then 28..31 were dropped on the way and 32.. came.
    All were replays the state recognised (it had folded up to 40), so they
    were admitted as such: 28..31 were never seen again, their duplicate
    records never written again, and the commit stayed at 28 for good."""
    proc = processor(memory_table)
    deliver(None, proc, scans(range(41)))  # the killed worker folded 0..40
    consumer = Consumer(settled=True)
    order = consumer.order(proc)  # the restarted worker's order
    admitted = deliver(order, proc, scans(range(28)) + scans(range(32, 41)))
    assert admitted == list(range(28))
    assert consumer.seeks == [(0, 28)]
    admitted = deliver(order, proc, scans(range(28, 45)))  # what the seek brings
    assert admitted == list(range(28, 45))
    assert scans_counted(proc) == 45  # each once: the replays skipped by the state


def test_the_first_message_after_an_assignment_is_the_committed_one(
    memory_table: Any,
) -> None:
    """Before any message of a partition came, a fetch starts at the commit:
    a later first offset means what came before it was dropped on the way."""
    proc = processor(memory_table)
    deliver(None, proc, scans(range(41)))
    consumer = Consumer(settled=True)
    order = OffsetOrder(
        TOPIC, proc.position, consumer.settled, consumer.seek, consumer.first_offset,
        clock=lambda: consumer.now, committed=lambda partition: 20,
    )
    assert deliver(order, proc, scans(range(25, 30))) == []
    assert consumer.seeks == [(0, 20)]
    assert deliver(order, proc, scans(range(20, 30))) == list(range(20, 30))
    order.forget(0)  # a rebalance: the next fetch starts at the commit again
    assert deliver(order, proc, scans(range(20, 22))) == [20, 21]


def test_a_hole_in_a_replay_is_stepped_over_too(memory_table: Any) -> None:
    """Offsets 10..14 are not in Kafka (a transaction's markers, say): the
    replay goes on from 15 once Kafka says so, and does not wait for 10."""
    proc = processor(memory_table)
    deliver(None, proc, scans([*range(10), *range(15, 30)]))
    consumer = Consumer(settled=True, holes={10: 15})
    order = consumer.order(proc)
    deliver(order, proc, scans(range(10)))
    for _ in range(SEEKS_BEFORE_PROBE + 1):
        deliver(order, proc, scans(range(15, 17)))
        consumer.now += RESEEK_SECONDS
    assert consumer.probes == [10]
    assert deliver(order, proc, scans(range(15, 30))) == list(range(15, 30))


def test_a_partition_whose_last_messages_went_missing_is_sought_back_once_it_stands_still(
    memory_table: Any,
) -> None:
    """The two-worker bench stall: 10..13 were read by the fetch loop and never
    reached the agent, and nothing came after them to ask for a seek. Once
    the partition has stood still for STILL_SECONDS it is sought back to 10;
    a partition whose fetch has not reached its expected offset is not (a
    busy worker fetches small topics late), nor one read to its end."""
    proc = processor(memory_table)
    consumer = Consumer(settled=True)
    fetched = {0: 13, 1: -1}
    order = OffsetOrder(
        TOPIC, proc.position, consumer.settled, consumer.seek, consumer.first_offset,
        clock=lambda: consumer.now, fetched=lambda: fetched,
    )
    deliver(order, proc, scans(range(10)))

    asyncio.run(order.retry())
    consumer.now += STILL_SECONDS - 0.5
    asyncio.run(order.retry())
    assert consumer.seeks == []  # not still for long enough yet
    consumer.now += 0.5
    asyncio.run(order.retry())
    assert consumer.seeks == [(0, 10)]
    assert order.stats()["unstuck"] == 1
    asyncio.run(order.retry())
    assert consumer.seeks == [(0, 10)]  # not again at once

    fetched[0] = 9  # the seek made: nothing read since
    consumer.now += STILL_SECONDS
    asyncio.run(order.retry())
    assert consumer.seeks == [(0, 10)]  # 10 not fetched yet: nothing went missing
    fetched[0] = 13
    deliver(order, proc, scans(range(10, 14)))  # what the seek brings
    assert scans_counted(proc) == 14
    for _ in range(3):
        consumer.now += STILL_SECONDS
        asyncio.run(order.retry())
    assert consumer.seeks == [(0, 10)]  # at its end now


def test_a_partition_that_moves_or_waits_for_a_seek_is_not_sought_as_still(
    memory_table: Any,
) -> None:
    """A busy partition whose expected offset keeps moving is left alone, and so
    is one the offset order already seeks for (RESEEK_SECONDS does that)."""
    proc = processor(memory_table)
    consumer = Consumer(settled=True)
    order = OffsetOrder(
        TOPIC, proc.position, consumer.settled, consumer.seek, consumer.first_offset,
        clock=lambda: consumer.now, fetched=lambda: {0: 999},
    )
    for start in range(0, 100, 10):
        deliver(order, proc, scans(range(start, start + 10)))
        consumer.now += STILL_SECONDS - 1
        asyncio.run(order.retry())
    assert consumer.seeks == []
    deliver(order, proc, scans(range(105, 107)))  # ahead of its turn: a seek to 100
    assert consumer.seeks == [(0, 100)]
    for _ in range(3):
        consumer.now += STILL_SECONDS
        asyncio.run(order.retry())
    assert order.stats()["unstuck"] == 0
    assert set(consumer.seeks) == {(0, 100)}  # the waiting partition's own re-seeks
