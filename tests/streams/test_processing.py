"""A stream's window state is written at most once a second, and a batch is
acked only once a write covers it (``streams/processing.py``, ``pending_acks.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from ctower.schemas.wire import EventDecoder
from ctower.streams.dead_letters import DeadLetterOutbox
from ctower.streams.pending_acks import PendingAcks, persist_and_release
from ctower.streams.processing import RawMessage, StreamProcessor
from ctower.tables.aggregates import STORE_MINUTE
from ctower.tables.dedup import SeenBudget, SeenEvents
from ctower.tables.window_state import WindowState

TS = 1_790_000_000_000 - 1_790_000_000_000 % 60_000
TOPIC = "ct.scan"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scan(offset: int) -> RawMessage:
    return RawMessage(0, offset, msgspec.json.encode(
        {"scan_id": f"s{offset}", "ts": TS + offset, "store_id": "S1", "sku": "K1",
         "action": "view"}
    ))


def processor(table: Any, clock: Clock, seen: SeenEvents | None = None) -> StreamProcessor:
    state = WindowState(
        table=table, source_topic=TOPIC, specs=[STORE_MINUTE], grace_ms=600_000,
        idle_close_ms=600_000, publish_closed=lambda records, acked: None,
        publish_late=lambda record: None,
    )
    return StreamProcessor(
        stream="scan", topic=TOPIC, decoder=EventDecoder.for_stream("scan", 10**9, 10**9),
        state=state, publish_dead_letter=lambda record: None, clock=clock, seen=seen,
        write_every_s=1.0,
    )


def test_the_window_state_is_written_at_most_once_per_interval(memory_table: Any) -> None:
    clock = Clock()
    proc = processor(memory_table, clock)
    proc.absorb(scan(0))
    assert proc.flush() is True  # the first batch is written at once
    written = len(memory_table.changelog)
    assert written > 0

    clock.now += 0.2
    proc.absorb(scan(1))
    assert proc.flush() is False  # held: the write is not due
    assert len(memory_table.changelog) == written

    clock.now += 0.3
    proc.absorb(scan(2))
    assert proc.flush() is False
    assert len(memory_table.changelog) == written

    clock.now += 0.5  # a second since the last write: this batch writes both before it
    proc.absorb(scan(3))
    assert proc.flush() is True
    assert len(memory_table.changelog) > written
    assert proc.position(0) == 3
    assert proc.stats()["state_writes"] == 2


def test_a_forced_write_covers_everything_folded(memory_table: Any) -> None:
    clock = Clock()
    proc = processor(memory_table, clock)
    proc.absorb(scan(0))
    proc.flush()
    proc.absorb(scan(1))
    assert proc.flush() is False
    assert proc.write_state() is True  # forced: the upkeep, a revocation, the stop
    restarted = processor(memory_table, clock)  # what recovery gives back
    assert restarted.position(0) == 1
    assert proc.write_state() is True  # nothing left: no write
    assert proc.stats()["state_writes"] == 2


def test_the_identities_seen_are_written_at_every_batch(memory_table: Any) -> None:
    """Each write of them is a checkpoint the forgetting goes by: held back with
    the windows, a drain kept minutes more of them in memory."""
    clock = Clock()
    seen_table = type(memory_table)()  # a second table of the same kind
    proc = processor(memory_table, clock, SeenEvents(seen_table, 600_000, SeenBudget(10_000)))
    proc.absorb(scan(0))
    assert proc.flush() is True
    windows, identities = len(memory_table.changelog), len(seen_table.changelog)
    clock.now += 0.2
    proc.absorb(scan(1))
    assert proc.flush() is False  # the windows wait for their write...
    assert len(memory_table.changelog) == windows
    assert len(seen_table.changelog) > identities  # ...the identities do not


class Consumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: Any) -> None:
        self.acked.append(message.offset)


class Writer:
    async def write(self) -> None:
        return None


def test_held_batches_are_acked_once_the_upkeep_wrote_their_windows(memory_table: Any) -> None:
    clock = Clock()
    proc = processor(memory_table, clock)
    writer = Writer()
    outbox = DeadLetterOutbox(TOPIC, "ct.dead-letter", lambda: None)  # type: ignore[arg-type,return-value]
    pending = PendingAcks(proc, 10, 0.2, writer.write, outbox)
    consumer = pending.consumer = Consumer()

    class Tower:
        def __init__(self) -> None:
            self.decisions = None
            self.processors = {"scan": proc}
            self.pending = {"scan": pending}
            self.writer = writer

    async def run() -> None:
        for offset in (0, 1):
            message = scan(offset)
            proc.absorb(message)
            pending.events.append(message)  # type: ignore[arg-type]
            await pending.settle()
            clock.now += 0.2
        assert consumer.acked == [0]  # the second batch's windows are not written yet
        before = len(memory_table.changelog)
        await persist_and_release(Tower())  # type: ignore[arg-type]
        assert len(memory_table.changelog) > before
        assert consumer.acked == [0, 1]

    asyncio.run(run())
