"""The Faust application: topics, tables, agents, timer and views, declared once.

Each event stream has one agent and one changelog-backed table holding its
windows (see ``tables/window_state.py`` for why the windows are ours). The
agents read raw bytes and take batches (``take_events``): decoding with
msgspec and folding a whole batch is what makes one worker fast; Faust's
per-message machinery is the floor (about 85 µs a message).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import EventT, StreamT

from ctower.schemas.control import ClosedWindow, DeadLetter, LateEvent
from ctower.schemas.control import encoder as control_encoder
from ctower.schemas.wire import EventDecoder
from ctower.settings import STREAMS, Settings
from ctower.streams.processing import RawMessage, StreamProcessor
from ctower.tables.folds import SPECS_BY_STREAM
from ctower.tables.window_state import WindowState

log = logging.getLogger(__name__)

KIND_HEADER = "kind"
"""Header telling the sink what a message on ct.aggregates holds."""

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
    processors: dict[str, StreamProcessor] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        return {stream: proc.stats() for stream, proc in self.processors.items()}


def build_app(settings: Settings) -> ControlTower:
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap.split(",")],
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_host=settings.worker_web_host,
        web_bind=settings.worker_web_host,
        web_port=settings.worker_web_port,
        web_in_thread=False,
        stream_buffer_maxsize=max(4096, settings.batch_max_messages * 2),
        broker_session_timeout=10.0,  # a killed worker's partitions move on sooner
        producer_linger=0.005,
    )
    tower = ControlTower(settings=settings, app=app)

    aggregates = app.topic(
        settings.topic("aggregates"), key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    )
    dead_letters = app.topic(
        settings.topic("dead-letter"), key_type=bytes, value_type=bytes,
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

    def publish_dead_letter(record: DeadLetter) -> None:
        dead_letters.send_soon(
            key=record.dedup_key().encode(), value=control_encoder.encode(record)
        )

    for stream in STREAMS:
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
        state = WindowState(
            table=table,
            source_topic=topic_name,
            specs=SPECS_BY_STREAM[stream],
            grace_ms=int(settings.grace_seconds * 1000),
            idle_close_ms=int(settings.idle_close_seconds * 1000),
            publish_closed=publish_closed,
            publish_late=publish_late,
        )
        processor = StreamProcessor(
            stream=stream,
            topic=topic_name,
            decoder=EventDecoder.for_stream(
                stream, settings.ts_max_past_days * 86400, settings.ts_max_future_seconds
            ),
            state=state,
            publish_dead_letter=publish_dead_letter,
        )
        tower.processors[stream] = processor
        source = app.topic(
            topic_name, key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw",
        )
        app.agent(source, name=f"{stream}-agent")(_agent_body(processor, settings))

    @app.timer(interval=1.0)
    async def close_idle_windows() -> None:
        recovery = app.tables.recovery
        recovered = (
            not app.rebalancing and not recovery.in_recovery and recovery.completed.is_set()
        )
        for processor in tower.processors.values():
            if recovered:
                owned = recovery.actives_for_table.get(processor.state.table, ())
                processor.state.adopt(tp.partition for tp in owned)
            processor.state.tick()

    @app.task
    async def drop_monitor() -> None:
        # Faust's Monitor sensor sits on every message's path (about 20% of a
        # bare agent's time, facts.md); /stats/ below reports what we need.
        if app.monitor in app.sensors:
            app.sensors.remove(app.monitor)

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        for tp in revoked:
            for processor in tower.processors.values():
                if tp.topic == processor.topic:
                    processor.state.drop(tp.partition)

    @app.page("/stats/")
    async def stats(web: Any, request: Any) -> Any:
        return web.json(tower.stats())

    return tower


def _agent_body(processor: StreamProcessor, settings: Settings) -> Any:
    async def agent(stream: StreamT) -> None:
        events: list[EventT]
        async for events in stream.take_events(
            settings.batch_max_messages, within=settings.batch_within_seconds
        ):
            processor.process(
                RawMessage(ev.message.partition, ev.message.offset, ev.message.value)
                for ev in events
            )

    agent.__name__ = f"{processor.stream}_agent"
    return agent
