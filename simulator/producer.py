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

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer

from ctower.broker.topics import partition_for
from ctower.health import Heartbeat
from ctower.schemas.events import Event, encoder
from ctower.settings import STREAMS, Settings
from ctower.simulator.clock import Pacer
from ctower.simulator.items import Item, encode_event
from ctower.simulator.jsonl import JsonlWriter
from ctower.simulator.truth import TruthRecorder

log = logging.getLogger(__name__)

_PARTITION_CACHE_MAX = 200_000
MAX_ARRAY_BYTES = 900_000
"""An array is sent early rather than exceed this: brokers refuse messages over
``message.max.bytes`` (about 1 MB by default), whatever ``--batch`` says."""


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


def crc32c_is_native() -> bool:
    """Whether kafka-python found the C ``crc32c`` package for its record batches."""
    from kafka.record import util

    return util._crc32c is not util.crc32c_py


def resolve_compression(choice: str) -> str | None:
    """``auto``: gzip when kafka-python checksums in pure Python, else none.

    Why: every record batch gets a CRC-32C, and without the ``crc32c``
    extension kafka-python computes it in Python at about 10 MB/s, the
    bottleneck of a batched run. Compressing first shrinks what is
    checksummed about ninefold (JSON), and gzip is the codec every consumer
    can read: aiokafka decodes lz4/snappy/zstd only with ``cramjam``, which
    this project does not install.
    """
    if choice == "auto":
        return None if crc32c_is_native() else "gzip"
    if choice == "none":
        return None
    if choice != "gzip":
        raise ValueError(f"compression must be auto, none or gzip, not {choice!r}")
    return choice


class KafkaSink:
    """A kafka-python producer plus the per-partition batch buffers.

    ``batch=1`` sends each event as its own keyed message. ``batch>1`` groups
    up to ``batch`` events of one partition into a JSON array; a partly full
    array waits at most ``linger_s`` of wall time (so a live run at a few
    events a second still delivers promptly). Producer settings: batches of
    up to 1 MiB lingering 20 ms amortise the per-request cost; ``acks=all``
    (and idempotence) by default, because the truth file assumes nothing was
    lost. ``compression``: see :func:`resolve_compression`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        batch: int = 1,
        acks: str = "all",
        linger_s: float = 0.2,
        create_topics: bool = True,
        client_id: str = "ctower-simulator",
        compression: str = "auto",
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        if create_topics:
            from ctower.broker.topics import ensure_topics

            ensure_topics(settings)
        acks_value: str | int = "all" if acks == "all" else int(acks)
        self.compression = resolve_compression(compression)
        self.producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap,
            client_id=client_id,
            acks=acks_value,
            enable_idempotence=acks == "all",
            linger_ms=20,
            batch_size=1 << 20,
            compression_type=self.compression,
            max_request_size=8 << 20,
        )
        self.batch = batch
        self.linger_s = linger_s
        self.topics = {stream: settings.topic(stream) for stream in STREAMS}
        self.partitions = {
            stream: len(self.producer.partitions_for(topic) or ())
            for stream, topic in self.topics.items()
        }
        missing = [t for s, t in self.topics.items() if not self.partitions[s]]
        if missing:
            raise RuntimeError(
                f"no partitions known for {', '.join(missing)} on {settings.bootstrap}"
            )
        self._cache: dict[tuple[str, str], int] = {}
        self._buffers: dict[tuple[str, int], list[bytes]] = {}
        self._since: dict[tuple[str, int], float] = {}
        self._bytes: dict[tuple[str, int], int] = {}
        self._last_tick = time.monotonic()
        self.heartbeat = Heartbeat(settings, "simulator")  # `ctower health simulator`
        self.messages = 0
        self.bytes = 0
        self.errors = 0
        self.first_error: str | None = None

    def partition(self, stream: str, key: str) -> int:
        cache = self._cache
        p = cache.get((stream, key))
        if p is None:
            if len(cache) > _PARTITION_CACHE_MAX:
                cache.clear()
            p = cache[(stream, key)] = partition_for(key.encode(), self.partitions[stream])
        return p

    def put(self, item: Item, value: bytes) -> None:
        stream = item.stream
        p = self.partition(stream, item.key)
        if self.batch == 1 or item.standalone:
            if item.standalone:
                self._flush((stream, p))  # keep the partition's order
            self._send(stream, value, item.key.encode() if item.key else None, p)
            return
        slot = (stream, p)
        buf = self._buffers.get(slot)
        if buf is None:
            buf = self._buffers[slot] = []
            self._since[slot] = time.monotonic()
            self._bytes[slot] = 1  # "["; each element adds its bytes and a "," or "]"
        elif self._bytes[slot] + len(value) + 1 > MAX_ARRAY_BYTES:
            self._flush(slot)
            self.put(item, value)
            return
        buf.append(value)
        self._bytes[slot] += len(value) + 1
        if len(buf) >= self.batch:
            self._flush(slot)

    def tick(self) -> None:
        """Send arrays that have waited longer than ``linger_s``."""
        now = time.monotonic()
        if now - self._last_tick < self.linger_s / 4:
            return
        self._last_tick = now
        self.heartbeat.beat(messages=self.messages, errors=self.errors)
        for slot, since in list(self._since.items()):
            if now - since >= self.linger_s:
                self._flush(slot)

    def _flush(self, slot: tuple[str, int]) -> None:
        buf = self._buffers.pop(slot, None)
        self._since.pop(slot, None)
        if buf:
            self._send(slot[0], b"[" + b",".join(buf) + b"]", None, slot[1])

    def _send(self, stream: str, value: bytes, key: bytes | None, partition: int) -> None:
        future = self.producer.send(self.topics[stream], value=value, key=key, partition=partition)
        future.add_errback(self._failed)
        self.messages += 1
        self.bytes += len(value)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = repr(exc)
            log.error("send failed: %r", exc)

    def close(self, timeout: float = 60.0) -> None:
        self.heartbeat.clear()
        for slot in list(self._buffers):
            self._flush(slot)
        try:
            self.producer.flush(timeout=timeout)
        finally:
            with contextlib.suppress(Exception):
                self.producer.close(timeout=5)


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
                value = encode_event(item[3], True)
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
