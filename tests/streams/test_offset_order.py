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

from ctower.schemas.wire import EventDecoder
from ctower.streams.offset_order import OffsetOrder, let_go
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
    """What the order needs of Faust's consumer: whether a seek may be asked, and seek."""

    def __init__(self, settled: bool) -> None:
        self.is_settled = settled
        self.seeks: list[tuple[int, int]] = []

    def settled(self, tp: Any) -> bool:
        return self.is_settled

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp.partition, offset))


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
        proc.flush()
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
    order = OffsetOrder(TOPIC, proc.position, consumer.settled, consumer.seek)
    deliver(order, proc, scans(range(136)))
    folded = deliver(order, proc, stale_prefetch_then_seek())
    assert folded[:19] == list(range(136, 155))
    assert scans_counted(proc) == 200
    assert order.stats() == {"let_go": 17, "holes": 0}
    assert consumer.seeks == []  # not settled: Faust seeks, not us


def test_a_settled_worker_asks_for_one_seek_back_to_the_expected_offset(
    memory_table: Any,
) -> None:
    proc = processor(memory_table)
    consumer = Consumer(settled=True)
    order = OffsetOrder(TOPIC, proc.position, consumer.settled, consumer.seek)
    deliver(order, proc, scans(range(10)))
    deliver(order, proc, scans(range(14, 18)))  # 10..13 went missing on the way
    assert consumer.seeks == [(0, 10)]
    deliver(order, proc, scans(range(10, 20)))  # what the seek brings
    assert scans_counted(proc) == 20
    assert order.stats() == {"let_go": 4, "holes": 0}


def test_an_offset_missing_from_kafka_is_stepped_over_after_one_seek(
    memory_table: Any,
) -> None:
    proc = processor(memory_table)
    consumer = Consumer(settled=True)
    order = OffsetOrder(TOPIC, proc.position, consumer.settled, consumer.seek)
    deliver(order, proc, scans(range(10)))
    # 10 is a transaction marker: 11 comes, then 12 (already fetched), the seek
    # to 10 brings 11 again: the hole is real
    folded = deliver(order, proc, scans([11, 12, 11, 12, 13]))
    assert folded == [11, 12, 13]
    assert consumer.seeks == [(0, 10)]
    assert order.stats() == {"let_go": 2, "holes": 1}
    assert scans_counted(proc) == 13


def test_a_rebalance_forgets_what_was_let_go_before_it(memory_table: Any) -> None:
    proc = processor(memory_table)
    consumer = Consumer(settled=True)
    order = OffsetOrder(TOPIC, proc.position, consumer.settled, consumer.seek)
    deliver(order, proc, scans(range(10)))
    deliver(order, proc, scans(range(20, 30)))  # let go, seek to 10 asked, peak 29
    order.forget(0)  # revoked, and given back
    consumer.is_settled = False
    # the fetcher had read 10..14 after our seek; the rebalance cleared them and
    # its stale position (15) comes first: not a hole, though it is under the peak
    assert deliver(order, proc, scans([15, 16])) == []
    assert deliver(order, proc, scans(range(10, 30))) == list(range(10, 30))
    assert scans_counted(proc) == 30
    assert order.stats()["holes"] == 0


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
