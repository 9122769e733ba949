"""The running pieces of one worker, filled in by the app's install steps and
reachable from tests, views and the watch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TableT

from ctower.gc_tuning import gc_stats
from ctower.settings import Settings
from ctower.streams.batch_writer import BatchWriter
from ctower.streams.dead_letters import DeadLetterOutbox
from ctower.streams.decisions import DecisionLayer
from ctower.streams.offset_order import OffsetOrder
from ctower.streams.pending_acks import PendingAcks
from ctower.streams.processing import StreamProcessor
from ctower.tables.memory_store import MemoryStore


@dataclass
class ControlTower:
    """The running pieces of one worker, reachable from tests and views."""

    settings: Settings
    app: faust.App
    writer: BatchWriter
    """The changelogs and live levels, written as whole batches."""
    processors: dict[str, StreamProcessor] = field(default_factory=dict)
    window_tables: dict[str, TableT[bytes, bytes]] = field(default_factory=dict)
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
        stats["settle"] = {name: pending.stats() for name, pending in self.pending.items()}
        stats["recovered_records"] = {
            name: table.data.recovered for name, table in self.app.tables.items()
            if isinstance(table.data, MemoryStore)
        }
        stats["gc"] = gc_stats()
        return stats
