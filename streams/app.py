"""The Faust application: topics, tables, agents, timer and views, declared once.

Each event stream has one agent and one changelog-backed table holding its
windows (see ``tables/window_state.py`` for why the windows are ours). The
agents read raw bytes, fold each message at once and persist in batches: decoding with
msgspec and folding a whole batch is what makes one worker fast; Faust's
per-message machinery is the floor (about 85 µs a message).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP, Message, StreamT

from ctower.metrics import install_worker_metrics
from ctower.schemas.control import ClosedWindow, DuplicateEvent, LateEvent
from ctower.schemas.control import encoder as control_encoder
from ctower.schemas.wire import EventDecoder
from ctower.settings import STREAMS, Settings
from ctower.streams.batch_writer import BatchedChangelog, BatchWriter, faust_producer
from ctower.streams.coupon_service import install_coupon_service
from ctower.streams.dead_letters import DeadLetterOutbox
from ctower.streams.decisions import DecisionLayer, RuleProcessor
from ctower.streams.gc_tuning import gc_stats
from ctower.streams.intake import Intake, fetched
from ctower.streams.offset_order import OffsetOrder, kafka_first_offset, let_go
from ctower.streams.processing import RawMessage, StreamProcessor
from ctower.streams.watch import install_worker_watch
from ctower.tables.dedup import SeenBudget, SeenEvents
from ctower.tables.folds import SPECS_BY_STREAM
from ctower.tables.window_state import WindowState

log = logging.getLogger(__name__)

KIND_HEADER = "kind"
"""Header telling the sink what a message on ct.aggregates holds."""

DEAD_LETTER_WAIT_SECONDS = 1.0
"""Longest a batch waits for Kafka to acknowledge its dead letters; what is not
acknowledged by then waits on, alone with its partition."""

CLOSED_PER_MESSAGE = 500
"""Closed keys per message on ct.aggregates: about 150 kB, under Kafka's 1 MB limit."""

CHANGELOG_CONFIGS = {
    # Closed windows are tombstoned; small segments let compaction drop them,
    # so recovering a table reads recent state, not the whole history.
    "segment.ms": 600_000,
    "min.cleanable.dirty.ratio": 0.1,
    "delete.retention.ms": 600_000,
}


@dataclass
class ControlTower:
    """The running pieces of one worker, reachable from tests and views."""

    settings: Settings
    app: faust.App
    writer: BatchWriter
    """The changelogs and live levels, written as whole batches."""
    processors: dict[str, StreamProcessor] = field(default_factory=dict)
    window_tables: dict[str, faust.Table] = field(default_factory=dict)
    """Stream -> its Faust table (recovery says which partitions it holds)."""
    pending: dict[str, PendingAcks] = field(default_factory=dict)
    orders: dict[str, OffsetOrder] = field(default_factory=dict)
    """Agent -> the order its topic's messages are folded in."""
    outboxes: dict[str, DeadLetterOutbox] = field(default_factory=dict)
    """Agent -> its dead letters not yet acknowledged by Kafka."""
    decisions: DecisionLayer | None = None
    coupons: Any = None
    watch: Any = None
    """The system alerts' watch (``streams/watch.py``)."""
    metrics: Any = None
    """``/metrics`` (``ctower/metrics.py``)."""

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            stream: proc.stats() for stream, proc in self.processors.items()
        }
        if self.decisions is not None:
            stats["decisions"] = self.decisions.stats()
        stats["offset_order"] = {name: order.stats() for name, order in self.orders.items()}
        stats["dead_letter_outbox"] = {
            name: outbox.stats() for name, outbox in self.outboxes.items()
        }
        stats["gc"] = gc_stats()
        return stats


ROLE_STREAMS: dict[str, tuple[str, ...]] = {
    "all": STREAMS,
    "aggregate": tuple(stream for stream in STREAMS if stream != "coupon"),
    "coupons": ("coupon",),
}
"""The raw streams each worker role folds (``CTOWER_WORKER_ROLE``)."""


def app_id_for(settings: Settings) -> str:
    """The coupon role is a consumer group of its own: it is scaled apart from
    the aggregation, and its ledger's changelog is its own."""
    if settings.worker_role == "coupons":
        return f"{settings.app_id}-coupons"
    return settings.app_id


def build_app(settings: Settings) -> ControlTower:
    role = settings.worker_role
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id_for(settings),
        broker=[f"kafka://{server}" for server in settings.bootstrap.split(",")],
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_host=settings.worker_web_host,
        web_bind=settings.worker_bind,  # issue 13: where it listens (0.0.0.0 in a container)
        web_port=settings.worker_web_port,
        canonical_url=settings.worker_url,  # where other workers forward to (its hostname)
        web_in_thread=False,
        stream_buffer_maxsize=max(4096, settings.batch_max_messages * 2),
        broker_session_timeout=10.0,  # a killed worker's partitions move on sooner
        producer_linger=0.005,
    )
    writer = BatchWriter(lambda: faust_producer(app))
    intake = Intake(app)
    intake.install()
    tower = ControlTower(settings=settings, app=app, writer=writer)
    # a reservation waits behind whatever its process is busy with: the coupon
    # role keeps the aggregation's batches out of its event loop
    decisions = tower.decisions = (
        DecisionLayer(app, settings, writer) if role != "coupons" else None
    )
    coupons = tower.coupons = (
        install_coupon_service(app, settings) if role != "aggregate" else None
    )

    aggregates = app.topic(
        settings.topic("aggregates"), key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    )

    def publish_closed(records: list[ClosedWindow], on_acked: Callable[[], None]) -> None:
        """One window's closed keys, as JSON arrays of at most CLOSED_PER_MESSAGE;
        ``on_acked`` runs once Kafka has acknowledged every chunk."""
        chunks = [
            records[i : i + CLOSED_PER_MESSAGE] for i in range(0, len(records), CLOSED_PER_MESSAGE)
        ]
        pending = [len(chunks)]

        def acked(_fut: Any) -> None:
            pending[0] -= 1
            if pending[0] == 0:
                on_acked()

        first = records[0]
        key = f"{first.aggregate}:{first.window_start}:{first.source_topic}:{first.partition}"
        for chunk in chunks:
            aggregates.send_soon(
                key=key.encode(),
                value=control_encoder.encode(chunk),
                headers={KIND_HEADER: b"closed_window"},
                callback=acked,
            )

    def publish_late(record: LateEvent) -> None:
        aggregates.send_soon(
            key=record.dedup_key().encode(),
            value=control_encoder.encode(record),
            headers={KIND_HEADER: b"late_event"},
        )

    def publish_duplicate(record: DuplicateEvent) -> None:
        aggregates.send_soon(
            key=record.dedup_key().encode(),
            value=control_encoder.encode(record),
            headers={KIND_HEADER: b"duplicate_event"},
        )

    def outbox_for(name: str, topic: str) -> DeadLetterOutbox:
        outbox = tower.outboxes[name] = DeadLetterOutbox(
            topic, settings.topic("dead-letter"), lambda: faust_producer(app)
        )
        return outbox

    seen_budget = SeenBudget(settings.dedup_max_entries)
    for stream in ROLE_STREAMS[role]:
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
            publish_closed=publish_closed,
            publish_late=publish_late,
        )
        if stream == "coupon":  # the coupon ledger counts what was issued and redeemed
            assert coupons is not None
            observer, after_flush = coupons.observe_coupons, coupons.flush
        else:
            assert decisions is not None
            observer, after_flush = decisions.observer(stream), decisions.after_flush(stream)
        processor = StreamProcessor(
            stream=stream,
            topic=topic_name,
            decoder=EventDecoder.for_stream(
                stream, settings.ts_max_past_days * 86400, settings.ts_max_future_seconds,
                settings.max_event_kb * 1024,
            ),
            state=state,
            publish_dead_letter=outbox_for(f"{stream}-agent", topic_name).add,
            dead_letter_raw_bytes=settings.dead_letter_raw_kb * 1024,
            seen=(
                SeenEvents(
                    changelog, int(settings.dedup_horizon_seconds * 1000), seen_budget,
                    _committed(app, topic_name),
                )
                if settings.dedup_horizon_seconds > 0 else None
            ),
            publish_duplicate=publish_duplicate,
            observer=observer,
            after_flush=after_flush,
        )
        tower.processors[stream] = processor
        source = app.topic(
            topic_name, key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw",
        )
        pending = PendingAcks(
            processor, settings.batch_max_messages, settings.batch_within_seconds,
            writer.write, tower.outboxes[f"{stream}-agent"],
        )
        tower.pending[stream] = pending
        order = tower.orders[stream] = _offset_order(
            app, intake, settings, topic_name, processor.position
        )
        app.agent(source, name=f"{stream}-agent")(
            _agent_body(app, pending, order, intake.queue(topic_name))
        )

    for name, rule_processor in (decisions.processors if decisions else {}).items():
        internal = app.topic(
            rule_processor.topic, key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw",
        )
        rule_processor.publish_dead_letter = outbox_for(f"{name}-agent", rule_processor.topic).add
        rule_pending = PendingAcks(
            rule_processor, settings.batch_max_messages, settings.batch_within_seconds,
            writer.write, tower.outboxes[f"{name}-agent"],
        )
        tower.pending[name] = rule_pending
        order = tower.orders[name] = _offset_order(
            app, intake, settings, rule_processor.topic, rule_processor.position
        )
        app.agent(internal, name=f"{name}-agent")(
            _agent_body(app, rule_pending, order, intake.queue(rule_processor.topic))
        )

    async def close_idle_windows() -> None:
        recovery = app.tables.recovery
        recovered = (
            not app.rebalancing and not recovery.in_recovery and recovery.completed.is_set()
        )
        for name, pending in tower.pending.items():
            if pending.events:
                await pending.settle()  # a quiet stream's last messages
            await pending.retry_dead_letters()
            for partition in pending.outbox.take_resumed():
                await tower.orders[name].rewind(partition)
            await tower.orders[name].retry()
        for stream, processor in tower.processors.items():
            if recovered:
                owned = recovery.actives_for_table.get(tower.window_tables[stream], ())
                processor.state.adopt(tp.partition for tp in owned)
            processor.state.tick(caught_up=_caught_up(app, processor.topic))
        if recovered and decisions is not None:
            owned = recovery.actives_for_table.get(decisions.table, ())
            decisions.adopt(tp.partition for tp in owned)
            decisions.tick()
        # the rules' batches wait for this write to be acked (also while a
        # rebalance waits for every message to be acked: Consumer.wait_empty)
        await _persist_and_release(tower)

    async def release_for_shutdown() -> None:
        for pending in tower.pending.values():
            if pending.events:
                await pending.settle()
            # waiting for a dead letter: not acked, not in the way of the stop
            pending.let_go_waiting(app.consumer)
        await _persist_and_release(tower)

    @app.task
    async def every_second() -> None:
        # Not an @app.timer: a timer ends as soon as the app is told to stop,
        # but Faust's shutdown then waits for every message to be acked
        # (Consumer.wait_empty), and the messages only this loop releases
        # (settled or held for the rules' write) would never be: the stop
        # hung until the worker was killed. A task runs until the app
        # cancels it, after the consumer has stopped.
        while True:
            await asyncio.sleep(1.0)
            await (release_for_shutdown() if app.should_stop else close_idle_windows())

    @app.task
    async def drop_monitor() -> None:
        # Faust's Monitor sensor sits on every message's path (about 20% of a
        # bare agent's time: 11.3k -> 13.8k messages/s without it); /stats/ reports what we need.
        if app.monitor in app.sensors:
            app.sensors.remove(app.monitor)

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # still ours until the revocation completes: persist and ack, then let go
        for pending in tower.pending.values():
            await pending.settle()
        await _persist_and_release(tower)
        for tp in revoked:
            for order in tower.orders.values():
                if tp.topic == order.topic:
                    order.forget(tp.partition)
            for pending in tower.pending.values():
                if tp.topic == pending.outbox.source_topic:
                    pending.let_go_waiting(app.consumer, tp.partition)
            for processor in tower.processors.values():
                if tp.topic == processor.topic:
                    processor.drop(tp.partition)
            if decisions is not None and tp.topic == decisions.processors["stock-moves"].topic:
                decisions.drop(tp.partition)

    @app.page("/stats/")
    async def stats(web: Any, request: Any) -> Any:
        return web.json(tower.stats())

    install_worker_metrics(tower)  # /metrics, read at scrape time
    if decisions is not None:  # its alerts go out as the rules' do
        install_worker_watch(tower)  # system alerts, once a second
    return tower


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
            and app.tables.recovery.completed.is_set()
            and tp in app.consumer.assignment()
        )

    async def seek(tp: TP, offset: int) -> None:
        # Made by the fetch loop between two fetches (streams/intake.py): made
        # from here, the loop undid it while still handing over a fetch taken
        # before it.
        intake.request_seek(tp, offset)

    return OffsetOrder(topic, position, settled, seek, kafka_first_offset(settings.bootstrap))


def _committed(app: faust.App, topic: str) -> Callable[[int], int | None]:
    """Where a replay of a partition would start: the offset Faust committed last.

    Faust keeps it in ``Consumer._committed_offset`` (next offset to read) and
    has no public accessor; the identities a replay may still need are kept
    until this passes them (``tables/dedup.py``)."""

    def committed(partition: int) -> int | None:
        offsets = app.consumer._committed_offset
        offset: int | None = offsets.get(TP(topic, partition))
        return offset

    return committed


def _caught_up(app: faust.App, topic: str) -> Callable[[int, int], bool]:
    """Whether this worker has read everything Kafka holds for a partition."""

    def check(partition: int, last_offset: int) -> bool:
        highwater = app.consumer.highwater(TP(topic, partition))
        return highwater is not None and last_offset + 1 >= highwater

    return check


class PendingAcks:
    """Messages folded into state but neither persisted nor acknowledged yet.

    Acks follow durability: :meth:`settle` flushes the state, then acks, so
    Faust can never commit an offset whose effect is only in memory. This
    replaces ``stream.take_events``, whose buffer stalled an agent for good
    when a rebalance came while it was full (seen here with two workers;
    robinhood/faust#262 and #678 report the same family of hangs).

    A processor may say a flush left part of the batch unwritten (the rules
    write about once a second): those messages are held, and acked by the
    next flush that is complete or after the timer's write (``_persist_and_release``).
    """

    def __init__(
        self,
        processor: StreamProcessor | RuleProcessor,
        max_messages: int,
        max_seconds: float,
        write: Callable[[], Awaitable[None]],
        outbox: DeadLetterOutbox,
    ) -> None:
        self.processor = processor
        self.write = write
        """Hands what a flush wrote (changelogs, levels: the tower's BatchWriter) to Kafka."""
        self.outbox = outbox
        """The batch's dead letters: a partition's messages wait until Kafka has its letters."""
        self.waiting: list[Message] = []
        """Settled, but a dead letter of their partition is not acknowledged yet."""
        self.max_messages = max_messages
        self.max_seconds = max_seconds
        self.events: list[Message] = []
        self.held: list[Message] = []
        """Settled, but their effects are not all in the changelog yet."""
        self.consumer: Any = None
        """Acknowledges the messages (the app's consumer, set by the agent)."""
        self.since = time.monotonic()

    def due(self) -> bool:
        return len(self.events) >= self.max_messages or (
            bool(self.events) and time.monotonic() - self.since >= self.max_seconds
        )

    def until_due(self) -> float | None:
        """Seconds until the batch is due by its age (None: no batch)."""
        if not self.events:
            return None
        return self.max_seconds - (time.monotonic() - self.since)

    async def settle(self) -> None:
        events, self.events = self.events, []
        self.since = time.monotonic()
        durable = self.processor.flush()
        await self.write()
        if self.outbox.outstanding or self.waiting:
            await self.outbox.deliver(wait=DEAD_LETTER_WAIT_SECONDS)
            events = self._hold_waiting(events)
        if not durable:
            self.held.extend(events)
            return
        held, self.held = self.held, []
        await self.ack(held + events)

    def _hold_waiting(self, events: list[Message]) -> list[Message]:
        """``events`` and the earlier waiting ones, minus those whose partition
        still waits for a dead letter (they join ``waiting``)."""
        outbox = self.outbox
        waiting, go = [], []
        for message in self.waiting + events:
            (waiting if outbox.waits(message.partition) else go).append(message)
        self.waiting = waiting
        return go

    async def retry_dead_letters(self) -> None:
        """Once a second: try the outstanding letters again; messages whose
        letters are now in Kafka are acked with the timer's write."""
        if self.outbox.outstanding or self.waiting:
            await self.outbox.deliver(wait=0)
            self.held.extend(self._hold_waiting([]))

    def let_go_waiting(self, consumer: Any, partition: int | None = None) -> None:
        """Give up the messages waiting for a dead letter (of one partition, or
        all): not acked, so they come again, to the next owner or after a restart."""
        keep = []
        for message in self.waiting:
            if partition is None or message.partition == partition:
                let_go(consumer, message)
            else:
                keep.append(message)
        self.waiting = keep
        if partition is not None:
            self.outbox.forget(partition)

    def take_held(self) -> list[Message]:
        """The held messages, handed over to be acked (after everything was written)."""
        held, self.held = self.held, []
        return held

    async def ack(self, messages: list[Message]) -> None:
        # what Faust's Stream.ack did for a message delivered to one stream
        if self.consumer is not None:
            ack = self.consumer.ack
            for message in messages:
                ack(message)


async def _persist_and_release(tower: ControlTower) -> None:
    """Write all the rule state, then ack every message held for it.

    The held lists are taken before the first await: a batch settled while
    the write or the acks are under way is not covered by this write and
    must stay held.
    """
    if tower.decisions is not None:
        tower.decisions.persist(force=True)
    released = [(pending, pending.take_held()) for pending in tower.pending.values()]
    await tower.writer.write()
    for pending, events in released:
        await pending.ack(events)


def _agent_body(
    app: faust.App, pending: PendingAcks, order: OffsetOrder, queue: Any
) -> Any:
    processor = pending.processor

    async def agent(stream: StreamT) -> None:
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
                    await pending.settle()

    agent.__name__ = f"{processor.stream}_agent"
    return agent
