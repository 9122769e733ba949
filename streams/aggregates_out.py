"""What the window states send to ``ct.aggregates``: closed windows, late events
and re-sent events, each kind named in a header the sink routes on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust

from ctower.schemas.control import KIND_HEADER, ClosedWindow, DuplicateEvent, LateEvent
from ctower.schemas.control import encoder as control_encoder
from ctower.settings import Settings
from ctower.streams.faust_parts import raw_topic

CLOSED_PER_MESSAGE = 500
"""Closed keys per message on ct.aggregates: about 150 kB, under Kafka's 1 MB limit."""


class AggregatesOut:
    """The worker's writer of ``ct.aggregates`` (through Faust's producer buffer:
    a commit waits until Kafka has it, ``streams/sent_soon.py``)."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.topic = raw_topic(app, settings.topic("aggregates"))

    def closed(self, records: list[ClosedWindow], on_acked: Callable[[], None]) -> None:
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
            self.topic.send_soon(
                key=key.encode(),
                value=control_encoder.encode(chunk),
                headers={KIND_HEADER: b"closed_window"},
                callback=acked,
            )

    def late(self, record: LateEvent) -> None:
        self.topic.send_soon(
            key=record.dedup_key().encode(),
            value=control_encoder.encode(record),
            headers={KIND_HEADER: b"late_event"},
        )

    def duplicate(self, record: DuplicateEvent) -> None:
        self.topic.send_soon(
            key=record.dedup_key().encode(),
            value=control_encoder.encode(record),
            headers={KIND_HEADER: b"duplicate_event"},
        )
