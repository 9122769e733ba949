"""Getting items out: Kafka (one event or one per-partition array per
message), the JSONL file and the truth recorder, in one loop.

Batch envelopes are built *per partition*: the partition of every event is
computed with Kafka's own default partitioner for keyed records (murmur2 of
the key, as the Java client and kafka-python do) over the partition count
the cluster reports, and an array goes to that partition explicitly. So an
event lands on the same partition whether it was sent alone or in an array,
and per-partition order (what the worker's event-time windows rely on) is
the order of generation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ctower.health import Heartbeat
from ctower.producer import EventProducer
from ctower.schemas.events import Event, encoder
from ctower.settings import Settings
from ctower.simulator.clock import Pacer
from ctower.simulator.items import Item, encode_event
from ctower.simulator.jsonl import JsonlWriter
from ctower.simulator.truth import TruthRecorder

log = logging.getLogger(__name__)



@dataclass(slots=True)
class SendStats:
    """What a run sent, and how fast."""

    events: int = 0
    """Events (an envelope counts each element), valid or not."""
    messages: int = 0
    """Kafka messages (0 without Kafka)."""
    bytes: int = 0
    seconds: float = 0.0
    per_stream: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    first_error: str | None = None
    partitions: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = f"{self.events:,} events in {self.seconds:.2f} s ({self.events_per_s:,.0f} events/s)"
        if self.messages:
            text += f", {self.messages:,} Kafka messages, {self.bytes / 1e6:.1f} MB"
        if self.errors:
            text += f", {self.errors} FAILED sends (first: {self.first_error})"
        return text


class KafkaSink(EventProducer):
    """The simulator's output to Kafka: :class:`EventProducer` fed with items,
    beating the simulator's health heartbeat (``ctower health simulator``)."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        options.setdefault("client_id", "ctower-simulator")
        super().__init__(settings, **options)
        self.heartbeat = Heartbeat(settings, "simulator")

    def put(self, item: Item, value: bytes) -> None:
        self.send_bytes(item.stream, item.key, value, standalone=item.standalone)

    def tick(self) -> None:
        if time.monotonic() - self._last_tick >= self.linger_s / 4:
            self.heartbeat.beat(messages=self.messages, errors=self.errors)
        super().tick()

    def close(self, timeout: float = 60.0) -> None:
        self.heartbeat.clear()
        super().close(timeout)


def pump(
    items: Iterable[Item],
    *,
    kafka: KafkaSink | None = None,
    out: JsonlWriter | None = None,
    truth: TruthRecorder | None = None,
    pacer: Pacer | None = None,
    progress: Any = None,
    stop: Callable[[], bool] | None = None,
) -> SendStats:
    """Drive items through every output; returns the stats (also when interrupted).

    ``progress`` is a tqdm-like object (``update(n)``); ``pacer`` holds items
    until their ``ts`` (live mode, replay). A KeyboardInterrupt ends the loop
    cleanly: buffers are flushed and the stats cover what was really sent.
    """
    encode = encoder.encode
    stats = SendStats()
    per_stream = stats.per_stream
    started = time.perf_counter()
    pending_progress = 0
    n = 0
    try:
        for item in items:
            if pacer is not None and item.ts:
                pacer.wait_for(item.ts)
            raw = item[4]  # the NamedTuple's fields by index: this loop runs per event
            if raw is not None:
                value = raw
            elif item[8]:
                event = item[3]
                assert event is not None  # no raw bytes: an event to encode
                value = encode_event(event, True)
            else:
                value = encode(item[3])
            if truth is not None:
                truth.observe(item)
            if out is not None:
                out.write(item, value)
            if kafka is not None:
                kafka.put(item, value)
            units = 1 if raw is None else item.units
            n += units
            per_stream[item.stream] = per_stream.get(item.stream, 0) + units
            pending_progress += units
            if pending_progress >= 2048 or pacer is not None:
                if kafka is not None:
                    kafka.tick()
                if progress is not None:
                    progress.update(pending_progress)
                pending_progress = 0
                if stop is not None and stop():
                    break
    except KeyboardInterrupt:
        log.warning("interrupted: flushing what was generated so far")
    finally:
        if progress is not None and pending_progress:
            progress.update(pending_progress)
        if kafka is not None:
            kafka.close()
        if out is not None:
            out.close()
        stats.events = n
        stats.seconds = time.perf_counter() - started
        if kafka is not None:
            stats.messages, stats.bytes = kafka.messages, kafka.bytes
            stats.errors, stats.first_error = kafka.errors, kafka.first_error
            stats.partitions = dict(kafka.partitions)
    return stats


def as_items(source: Iterable[Item] | Iterable[tuple[str, Event]]) -> Iterator[Item]:
    """Items from :meth:`Simulator.items` as they are, or ``(stream, Event)`` pairs
    (e.g. :meth:`Simulator.events`, or events a test built) wrapped as items."""
    for entry in source:
        if isinstance(entry, Item):
            yield entry
        else:
            stream, event = entry
            ts = event.ts
            assert isinstance(ts, int)
            yield Item(stream, event.partition_key, ts, event)


def send(
    settings: Settings,
    events: Iterable[Item] | Iterable[tuple[str, Event]],
    *,
    batch: int = 1,
    acks: str = "all",
    compression: str = "auto",
    pacer: Pacer | None = None,
    truth: TruthRecorder | None = None,
    progress: Any = None,
) -> SendStats:
    """Send to the stream topics of ``settings``: the programmatic ``simulate``.

    Pass ``Simulator.items()`` to keep everything (ISO times, late and
    malformed messages); ``(stream, Event)`` pairs are sent as plain events.
    """
    sink = KafkaSink(settings, batch=batch, acks=acks, compression=compression)
    return pump(as_items(events), kafka=sink, truth=truth, pacer=pacer, progress=progress)
