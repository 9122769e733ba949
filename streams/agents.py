"""One agent per topic the worker folds: a raw stream into its windows, or an
internal topic (events re-keyed by the worker itself) into the rules.

Every agent is built the same way: its messages come a list at a time from
the intake (``streams/intake.py``), in offset order (``streams/offset_order.py``),
are absorbed by a processor and acked once persisted (``streams/pending_acks.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from faust.tables.manager import TableManager
from faust.transport.consumer import Consumer
from faust.types import TP, StreamT

from ctower.schemas.wire import EventDecoder
from ctower.settings import Settings
from ctower.streams.aggregates_out import AggregatesOut
from ctower.streams.batch_writer import BatchedChangelog, faust_producer
from ctower.streams.dead_letters import DeadLetterOutbox
from ctower.streams.decisions import RuleProcessor
from ctower.streams.faust_parts import raw_topic
from ctower.streams.intake import Intake, fetched
from ctower.streams.offset_order import OffsetOrder, kafka_first_offset, let_go
from ctower.streams.pending_acks import PendingAcks
from ctower.streams.processing import RawMessage, StreamProcessor
from ctower.streams.tower import ControlTower
from ctower.tables.dedup import SeenBudget, SeenEvents
from ctower.tables.folds import SPECS_BY_STREAM
from ctower.tables.window_state import WindowState

CHANGELOG_CONFIGS = {
    # Closed windows are tombstoned; small segments let compaction drop them,
    # so recovering a table reads recent state, not the whole history.
    "segment.ms": 600_000,
    "min.cleanable.dirty.ratio": 0.1,
    "delete.retention.ms": 600_000,
}


def install_stream_agents(tower: ControlTower, intake: Intake, streams: tuple[str, ...]) -> None:
    """An agent and a window table per raw stream; the coupon stream feeds the
    coupon ledger, the others the rules."""
    app, settings, writer = tower.app, tower.settings, tower.writer
    decisions, coupons = tower.decisions, tower.coupons
    aggregates = AggregatesOut(app, settings)
    seen_budget = SeenBudget(settings.dedup_max_entries)
    for stream in streams:
        topic_name = settings.topic(stream)
        table = app.Table(
            f"{stream}-windows",
            default=None,
            # bytes in, bytes out: the state encodes itself (msgpack); Faust
            # derives the changelog's "raw" serializers from these types
            key_type=bytes,
            value_type=bytes,
            partitions=settings.topic_partitions,
            extra_topic_configs=CHANGELOG_CONFIGS,
        )
        tower.window_tables[stream] = table
        changelog = BatchedChangelog(table, writer)
        state = WindowState(
            table=changelog,
            source_topic=topic_name,
            specs=SPECS_BY_STREAM[stream],
            grace_ms=int(settings.grace_seconds * 1000),
            idle_close_ms=int(settings.idle_close_seconds * 1000),
            publish_closed=aggregates.closed,
            publish_late=aggregates.late,
        )
        if stream == "coupon":  # the coupon ledger counts what was issued and redeemed
            assert coupons is not None
            observer, after_flush = coupons.observe_coupons, coupons.flush
        else:
            assert decisions is not None
            observer, after_flush = decisions.observer(stream), decisions.after_flush(stream)
        outbox = _outbox(tower, f"{stream}-agent", topic_name)
        processor = StreamProcessor(
            stream=stream,
            topic=topic_name,
            decoder=EventDecoder.for_stream(
                stream, settings.ts_max_past_days * 86400, settings.ts_max_future_seconds,
                settings.max_event_kb * 1024,
            ),
            state=state,
            publish_dead_letter=outbox.add,
            dead_letter_raw_bytes=settings.dead_letter_raw_kb * 1024,
            seen=(
                SeenEvents(
                    changelog, int(settings.dedup_horizon_seconds * 1000), seen_budget,
                    _committed(app, topic_name),
                )
                if settings.dedup_horizon_seconds > 0 else None
            ),
            publish_duplicate=aggregates.duplicate,
            observer=observer,
            after_flush=after_flush,
        )
        tower.processors[stream] = processor
        write: Callable[[], Awaitable[None]] = tower.writer.write
        if stream == "coupon":
            assert coupons is not None
            write = _both(tower.writer.write, coupons.handed_over)
        _install_agent(tower, intake, stream, topic_name, processor, outbox, write)


def install_rule_agents(tower: ControlTower, intake: Intake) -> None:
    """An agent per internal topic of the rules (none in the coupon role)."""
    if tower.decisions is None:
        return
    for name, rule_processor in tower.decisions.processors.items():
        outbox = _outbox(tower, f"{name}-agent", rule_processor.topic)
        rule_processor.publish_dead_letter = outbox.add
        _install_agent(tower, intake, name, rule_processor.topic, rule_processor, outbox)


def _outbox(tower: ControlTower, name: str, topic: str) -> DeadLetterOutbox:
    app = tower.app
    outbox = tower.outboxes[name] = DeadLetterOutbox(
        topic, tower.settings.topic("dead-letter"), lambda: faust_producer(app)
    )
    return outbox


def _both(
    first: Callable[[], Awaitable[None]], second: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    async def write() -> None:
        await first()
        await second()

    return write


def _install_agent(
    tower: ControlTower, intake: Intake, name: str, topic: str,
    processor: StreamProcessor | RuleProcessor, outbox: DeadLetterOutbox,
    write: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """``write``: what a settle awaits before its acks (default: the tower's writer)."""
    app, settings = tower.app, tower.settings
    source = raw_topic(app, topic)
    pending = tower.pending[name] = PendingAcks(
        processor, settings.batch_max_messages, settings.batch_within_seconds,
        write or tower.writer.write, outbox,
    )
    order = tower.orders[name] = _offset_order(app, intake, settings, topic, processor.position)
    app.agent(source, name=f"{name}-agent")(
        _agent_body(app, pending, order, intake.queue(topic))
    )


def _agent_body(
    app: faust.App, pending: PendingAcks, order: OffsetOrder, queue: Any
) -> Any:
    processor = pending.processor

    async def agent(stream: StreamT[bytes]) -> None:
        pending.consumer = app.consumer
        outbox = pending.outbox
        async for messages in fetched(app, stream, queue, pending.until_due):
            if not messages:  # nothing came while the batch aged: it goes out now
                if pending.events:
                    await pending.settle()
                continue
            for message in messages:
                if outbox.blocked and outbox.is_blocked(message.partition):
                    # its dead letters cannot be written: the partition waits, and this
                    # message comes again in order once they are (a seek, as below)
                    let_go(app.consumer, message)
                    continue
                if not await order.admit(message.partition, message.offset):
                    let_go(app.consumer, message)  # it comes again, in order
                    continue
                processor.absorb(RawMessage(message.partition, message.offset, message.value))
                pending.events.append(message)
                if pending.due():
                    await pending.settle(wait=False)  # folds on while it is written

    agent.__name__ = f"{processor.stream}_agent"
    return agent


def _offset_order(
    app: faust.App, intake: Intake, settings: Settings, topic: str,
    position: Callable[[int], int],
) -> OffsetOrder:
    """The order for one agent's topic, seeking through the app's consumer."""

    def settled(tp: TP) -> bool:
        # a seek during a rebalance could hit a partition no longer assigned,
        # and the recovery seeks every partition itself when it completes
        return (
            not app.rebalancing
            and cast(TableManager, app.tables).recovery.completed.is_set()
            and tp in app.consumer.assignment()
        )

    async def seek(tp: TP, offset: int) -> None:
        # Made by the fetch loop between two fetches (streams/intake.py): made
        # from here, the loop undid it while still handing over a fetch taken
        # before it.
        intake.request_seek(tp, offset)

    def fetched() -> dict[int, int]:
        return {tp.partition: offset for tp, offset in intake.fetched.items()
                if tp.topic == topic}

    return OffsetOrder(
        topic, position, settled, seek, kafka_first_offset(settings.bootstrap),
        committed=_committed(app, topic), fetched=fetched,
    )


def _committed(app: faust.App, topic: str) -> Callable[[int], int | None]:
    """Where a replay of a partition would start: the offset Faust committed last.

    Faust keeps it in ``Consumer._committed_offset`` (next offset to read) and
    has no public accessor; the identities a replay may still need are kept
    until this passes them (``tables/dedup.py``)."""

    def committed(partition: int) -> int | None:
        offsets = cast(Consumer, app.consumer)._committed_offset
        offset: int | None = offsets.get(TP(topic, partition))
        return offset

    return committed
