"""Pacing of the rules' writes: acks wait for the flush that covers them.

No broker: the ack bookkeeping (``PendingAcks``) and the decision layer's
``persist`` are driven directly, with the rule state on an in-memory table,
because the invariant is about order (state, progress record, then ack), not
about Kafka.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import faust
import pytest

from ctower.rules.rule_state import FLUSH_INTERVAL_S
from ctower.schemas.control import StockLevel
from ctower.settings import Settings
from ctower.streams import decisions as decisions_module
from ctower.streams.batch_writer import BatchWriter
from ctower.streams.dead_letters import DeadLetterOutbox
from ctower.streams.decisions import DecisionLayer
from ctower.streams.pending_acks import PendingAcks, persist_and_release
from ctower.topics import partition_for


async def nothing_to_write() -> None:
    return None


class Consumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: Any) -> None:
        self.acked.append(message)


class Processor:
    def __init__(self) -> None:
        self.stream = "fake"
        self.durable: list[bool] = []

    def flush(self) -> bool:
        return self.durable.pop(0)



def no_letters() -> DeadLetterOutbox:
    """An outbox with nothing in it: these batches hold no malformed events."""

    def no_producer() -> Any:
        raise AssertionError("nothing to send")

    return DeadLetterOutbox("ct.t", "ct.dead-letter", no_producer)

def test_a_batch_not_yet_written_is_held_then_acked_with_the_next_complete_flush() -> None:
    processor = Processor()
    pending = PendingAcks(processor, 10, 0.2, nothing_to_write, no_letters())  # type: ignore[arg-type]
    consumer = pending.consumer = Consumer()
    processor.durable = [False, False, True]

    async def run() -> None:
        for batch in ([1, 2], [3], [4, 5]):
            pending.events.extend(batch)  # type: ignore[arg-type]
            await pending.settle()

    asyncio.run(run())
    assert consumer.acked == [1, 2, 3, 4, 5]
    assert pending.held == []


def test_held_batches_are_acked_only_after_the_timer_has_written_the_state() -> None:
    processor = Processor()
    writes: list[str] = []

    async def write() -> None:
        await asyncio.sleep(0)  # a batch settled meanwhile is not covered by this write
        writes.append(f"written with {len(consumer.acked)} acked")

    pending = PendingAcks(processor, 10, 0.2, write, no_letters())  # type: ignore[arg-type]
    consumer = pending.consumer = Consumer()
    processor.durable = [False, False]

    class Decisions:
        def __init__(self) -> None:
            self.writer = self

        def persist(self, force: bool = False) -> bool:
            assert force
            writes.append(f"persist with {len(consumer.acked)} acked")
            return True

        async def write(self) -> None:
            await write()

    class Tower:
        decisions = Decisions()
        writer = decisions.writer
        processors: ClassVar[dict[str, Any]] = {}

    Tower.pending = {"stock-moves": pending}

    async def settle_during_the_write() -> None:
        pending.events.extend([9])  # type: ignore[arg-type]
        await pending.settle()

    async def run() -> None:
        pending.events.extend([7, 8])  # type: ignore[arg-type]
        await pending.settle()
        assert consumer.acked == []
        await asyncio.gather(persist_and_release(Tower()), settle_during_the_write())  # type: ignore[arg-type]

    asyncio.run(run())
    # the first settle's write, the timer's persist, then its write before any ack
    assert writes[:3] == ["written with 0 acked", "persist with 0 acked", "written with 0 acked"]
    assert consumer.acked == [7, 8]
    assert pending.held == [9]  # settled after the timer took the held list


def test_an_agent_folds_on_while_its_batch_is_written_and_acks_follow_the_writes() -> None:
    """settle(wait=False) hands the write to a task: the agent goes on folding,
    its messages are acked only once their write is done, in settle order, and
    no more than WRITES_IN_FLIGHT settles are under way."""
    processor = Processor()
    gates: list[asyncio.Event] = []

    async def write() -> None:
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()

    pending = PendingAcks(processor, 10, 0.2, write, no_letters())  # type: ignore[arg-type]
    consumer = pending.consumer = Consumer()
    processor.durable = [True, True, True]

    async def run() -> list[Any]:
        seen = []
        pending.events.extend([1, 2])  # type: ignore[arg-type]
        await pending.settle(wait=False)  # returns with its write under way
        seen.append((list(consumer.acked), len(pending.in_flight)))
        pending.events.extend([3])  # type: ignore[arg-type]
        second = asyncio.ensure_future(pending.settle(wait=False))
        await asyncio.sleep(0.01)
        seen.append((second.done(), list(consumer.acked)))  # two in flight: waits
        gates[0].set()
        await second
        seen.append((list(consumer.acked), len(pending.in_flight)))
        last = asyncio.ensure_future(pending.settle())  # the timer's: waits for all
        await asyncio.sleep(0.01)
        seen.append(last.done())
        gates[1].set()
        await last
        seen.append((list(consumer.acked), len(pending.in_flight)))
        return seen

    assert asyncio.run(run()) == [
        ([], 1), (False, []), ([1, 2], 1), False, ([1, 2, 3], 0),
    ]


def test_writers_queued_behind_a_write_go_out_as_one() -> None:
    """What each settle added while another write held the writer goes in the
    next write, whole: the writers behind it return without a write of their own."""
    sent: list[list[bytes]] = []

    class Producer:
        def create_batch(self) -> Any:
            return Batch()

        async def send_batch(self, batch: Any, topic: str, partition: int) -> None:
            sent.append(batch.values)
            await asyncio.sleep(0.01)

    class Batch:
        def __init__(self) -> None:
            self.values: list[bytes] = []

        def append(self, key: Any, value: bytes, timestamp: Any) -> object:
            self.values.append(value)
            return object()

    writer = BatchWriter(lambda: Producer())  # type: ignore[arg-type, return-value]

    async def run() -> None:
        writer.add("t", 0, b"k", b"a")
        first = asyncio.ensure_future(writer.write())
        await asyncio.sleep(0)  # the first write holds the writer
        writes = []
        for value in (b"b", b"c", b"d"):  # three settles, each starting its write
            writer.add("t", 0, b"k", value)
            writes.append(asyncio.ensure_future(writer.write()))
            await asyncio.sleep(0)
        await asyncio.gather(first, *writes)

    asyncio.run(run())
    assert sent == [[b"a"], [b"b", b"c", b"d"]]


@pytest.fixture
def layer(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, memory_table: Any
) -> DecisionLayer:
    app = faust.App("test-rule-flush", broker="kafka://127.0.0.1:1", store="memory://",
                    datadir=str(tmp_path))
    layer = DecisionLayer(app, Settings(data_dir=tmp_path), BatchWriter(lambda: None))  # type: ignore[arg-type, return-value]
    table = memory_table
    for state in layer.states():
        state.table = table  # type: ignore[assignment]
    layer.test_table = table
    now = [100.0]
    monkeypatch.setattr(decisions_module.time, "monotonic", lambda: now[0])
    layer._flushed_at = now[0]
    layer.test_now = now
    return layer


def test_rule_state_is_written_once_per_interval_with_its_progress(layer: Any) -> None:
    state = layer.stock.state
    table = layer.test_table
    for offset in range(3):  # three batches within the interval, one key
        state.applied(0, "scan:0", offset, 1_000 + offset)
        state.put(0, "L1|A", state.get(0, "L1|A") or _item())
        assert not layer.persist()
    assert table.changelog == []
    layer.test_now[0] += FLUSH_INTERVAL_S
    assert layer.persist()
    keys = [key for _, key, _ in table.changelog]
    assert len(keys) == 2  # the entity once, then the progress record
    assert b"__progress__" in keys[-1]
    assert state.unflushed() == 0
    assert layer.persist()  # nothing left: durable without writing


def test_levels_are_coalesced_to_the_latest_per_key(layer: Any) -> None:
    for on_hand in (5, 4, 3):
        layer.publish_stock_level(StockLevel(
            location_id="L1", sku="A", region="r", on_hand=on_hand, velocity_per_h=1.0,
            cover_h=None, ts=on_hand,
        ))
    topic = layer.stock_levels_topic.get_topic_name()
    assert not layer.persist()  # within the interval: nothing sent yet
    assert not layer.writer.pending
    assert layer.persist(force=True)
    # to the writer, on the partition Kafka's partitioner gives the key
    partition = partition_for(b"L1|A", layer.settings.topic_partitions)
    sent = layer.writer.pending[(topic, partition)]
    assert [key for key, _ in sent] == [b"L1|A"]
    assert json.loads(sent[0][1])["on_hand"] == 3


def _item() -> Any:
    from ctower.rules.stock import StockItem

    return StockItem(deltas=[], sales={}, scans={}, scan_marks=[])
