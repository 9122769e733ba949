"""The ClickHouse sink: every topic of the control tower, written to the store.

One process consumes the six raw event topics and the output topics
(closed windows and late events on ``aggregates``, dead letters, alerts,
alert deliveries, coupon decisions and policies) and inserts them into the tables of
``schemas/ddl``.

Why it is shaped this way:

- **Batches, columnar.** ClickHouse wants few large inserts (10k-100k rows,
  about one a second per table). Rows are buffered per table and inserted
  when ``sink_batch_rows`` are waiting or ``sink_batch_seconds`` have passed,
  as columns (see :data:`INSERT_FORMATS` for the measured choice).
- **Flush before commit.** Kafka offsets are committed only up to the first
  offset whose rows are still in a buffer (quix-streams' checkpointing, per
  table instead of all at once). A SIGKILL loses only rows that were not
  committed, and those are consumed again on restart; the tables'
  ReplacingMergeTree keys make the second copy collapse into the first.
- **Cheap decoding.** Raw events go through the worker's own
  :class:`EventDecoder` (same time bounds, so both agree on what is
  malformed); one typed msgspec call per message, then one list per column.
  Malformed events are skipped here: the worker dead-letters them.
- **Columns from the table.** The sink reads each table's columns at start
  and fills each from the record field of the same name, or from a few named
  extras (``event_key``, Kafka position, dims and counters of a closed
  window...). A column it cannot fill stops start-up, so DDL and sink cannot
  drift apart silently.

Messages on ``aggregates`` carry the header ``kind``: ``closed_window`` (a
:class:`ClosedWindow`) or ``late_event`` (a :class:`LateEvent`). The value
may also be a JSON array of records of that kind. Without the header the
sink tries a closed window, then a late event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

import msgspec
import numpy as np
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, KafkaError
from clickhouse_connect.driver.client import Client

from ctower.schemas.control import (
    Alert,
    AlertAck,
    AlertDelivery,
    ClosedWindow,
    CouponDecision,
    CouponPolicy,
    DeadLetter,
    LateEvent,
    PickupLevel,
    StockLevel,
)
from ctower.schemas.events import EVENT_TYPES, Event
from ctower.schemas.migrations import apply_migrations
from ctower.schemas.wire import EventDecoder
from ctower.settings import STREAMS, Settings
from ctower.store import open_store
from ctower.tables.aggregates import AGGREGATES, AggregateSpec

log = logging.getLogger(__name__)

KIND_HEADER = "kind"
"""Header of ``aggregates`` messages: ``closed_window`` or ``late_event``."""

InsertFormat = Literal["arrow", "native"]
INSERT_FORMATS: tuple[InsertFormat, ...] = ("arrow", "native")
"""How a batch reaches ClickHouse. ``arrow`` (the default): a pyarrow Table
through ``client.insert_arrow``; the engine parses Arrow itself. ``native``:
Python column lists through ``client.insert(column_oriented=True)``, which
clickhouse-connect serialises to ClickHouse's Native format. Measured on chdb
here (2 shared cores, scan events, ``tests/streams/sinks/bench_sink.py``,
columns built and inserted): at 10k-row batches the two are level within the
noise (arrow 160k-180k rows/s, native 170k-200k); from 25k rows arrow leads
(210k against 185k; 280k against 205k at 50k), so arrow it is."""

FETCH_PARTITION_BYTES = 4 << 20
"""Bytes fetched per partition per request. aiokafka's default (1 MiB) made
fetching the bottleneck for batch envelopes here: 300k scan events in
envelopes of 100 went from about 90k to 150k-280k rows/s with 4 MiB (8 MiB
gained nothing more)."""

PROGRESS_SECONDS = 10.0
"""How often the sink logs its rates."""

INSERT_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Back-off before each retry of a failed insert; after the last one the
sink stops without committing, so nothing is skipped."""


class SinkError(RuntimeError):
    """The sink cannot go on (store refuses inserts, a table it cannot fill)."""


# --------------------------------------------------------------------------
# Buffers
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Chunk:
    """At most ``sink_batch_rows`` records of one table, with where they came from."""

    records: list[Any]
    partitions: np.ndarray
    offsets: np.ndarray
    topic: str


Getter = Callable[[_Chunk], Sequence[Any]]


@dataclass(slots=True)
class _Buffer:
    """Rows waiting for one table: the records, and the Kafka messages they
    came from as runs (partition, offset, count) so a batch envelope costs
    one entry, not one per event."""

    table: str
    topic: str
    records: list[Any] = field(default_factory=list)
    run_partitions: list[int] = field(default_factory=list)
    run_offsets: list[int] = field(default_factory=list)
    run_counts: list[int] = field(default_factory=list)
    first: dict[int, int] = field(default_factory=dict)
    """Partition -> lowest offset whose rows are here (or being inserted)."""
    since: float = 0.0

    def add(self, records: list[Any], partition: int, offset: int) -> None:
        if not self.records:
            self.since = time.monotonic()
        self.records += records
        self.run_partitions.append(partition)
        self.run_offsets.append(offset)
        self.run_counts.append(len(records))
        if partition not in self.first:
            self.first[partition] = offset

    def take(self, chunk_rows: int) -> list[_Chunk]:
        """The buffered rows in chunks; the buffer is empty afterwards, but
        ``first`` stays until :meth:`done` (the rows are not durable yet)."""
        counts = np.asarray(self.run_counts, dtype=np.int64)
        partitions = np.repeat(np.asarray(self.run_partitions, dtype=np.int32), counts)
        offsets = np.repeat(np.asarray(self.run_offsets, dtype=np.int64), counts)
        records = self.records
        chunks = [
            _Chunk(
                records[i : i + chunk_rows],
                partitions[i : i + chunk_rows],
                offsets[i : i + chunk_rows],
                self.topic,
            )
            for i in range(0, len(records), chunk_rows)
        ]
        self.records = []
        self.run_partitions = []
        self.run_offsets = []
        self.run_counts = []
        return chunks

    def done(self) -> None:
        """The taken rows are in the store: their offsets may be committed."""
        if not self.records:
            self.first = {}


# --------------------------------------------------------------------------
# Tables: which column comes from where
# --------------------------------------------------------------------------

_json = msgspec.json.Encoder()


def _attr(name: str) -> Getter:
    get = attrgetter(name)
    return lambda ch: list(map(get, ch.records))


def _event_key(ch: _Chunk) -> list[str]:
    return [ev.dedup_key() for ev in ch.records]


def _source_topic(ch: _Chunk) -> list[str]:
    return [ch.topic] * len(ch.records)


def _kafka_partition(ch: _Chunk) -> np.ndarray:
    return ch.partitions


def _kafka_offset(ch: _Chunk) -> np.ndarray:
    return ch.offsets


def _line_field(name: str) -> Getter:
    get = attrgetter(name)
    return lambda ch: [list(map(get, ev.lines)) for ev in ch.records]


def _evidence(ch: _Chunk) -> list[bytes]:
    return [_json.encode(rec.evidence) for rec in ch.records]


def _alert_version(ch: _Chunk) -> list[int]:
    """Orders the updates of one alert: the later time wins, and a resolution
    wins over an opening of the same millisecond."""
    return [
        max(a.opened_at, a.resolved_at or 0) * 2 + (a.status == "resolved") for a in ch.records
    ]


def _policy_store(ch: _Chunk) -> list[str]:
    return [p.store_id or "" for p in ch.records]


def _dim(position: int) -> Getter:
    return lambda ch: [cw.dims[position] for cw in ch.records]


def _value(position: int) -> Getter:
    return lambda ch: [cw.values[position] for cw in ch.records]


_RAW_EXTRAS: dict[str, Getter] = {
    "event_key": _event_key,
    "source_topic": _source_topic,
    "partition": _kafka_partition,
    "offset": _kafka_offset,
}

_ORDER_EXTRAS: dict[str, Getter] = {
    "amount_fen": _attr("amount_fen"),
    "lines.sku": _line_field("sku"),
    "lines.qty": _line_field("qty"),
    "lines.unit_price": _line_field("unit_price"),
}


@dataclass(frozen=True, slots=True)
class TableWriter:
    """How one table is filled: its insert columns and their getters."""

    table: str
    record_type: type
    extras: dict[str, Getter]
    columns: tuple[str, ...] = ()
    ch_types: tuple[str, ...] = ()
    getters: tuple[Getter, ...] = ()
    arrow_schema: pa.Schema | None = None

    def bind(self, client: Client) -> TableWriter:
        """Resolve the table's columns against the store (once, at start)."""
        rows = client.query(
            "SELECT name, type, default_kind FROM system.columns "
            "WHERE database = currentDatabase() AND table = {table:String} ORDER BY position",
            parameters={"table": self.table},
        ).result_rows
        if not rows:
            raise SinkError(f"table {self.table} does not exist: were migrations applied?")
        fields = set(getattr(self.record_type, "__struct_fields__", ()))
        columns: list[str] = []
        types: list[str] = []
        getters: list[Getter] = []
        for name, ch_type, default_kind in rows:
            if name in self.extras:
                getter = self.extras[name]
            elif name in fields:
                getter = _attr(name)
            elif default_kind:
                continue  # DEFAULT/MATERIALIZED columns fill themselves (ingested_at)
            else:
                raise SinkError(
                    f"the sink cannot fill column {self.table}.{name} ({ch_type}): it is not a "
                    f"field of {self.record_type.__name__} and has no DEFAULT"
                )
            columns.append(name)
            types.append(ch_type)
            getters.append(getter)
        schema = pa.schema(
            [pa.field(n, arrow_type(t)) for n, t in zip(columns, types, strict=True)]
        )
        return TableWriter(
            self.table, self.record_type, self.extras,
            tuple(columns), tuple(types), tuple(getters), schema,
        )

    def column_data(self, chunk: _Chunk) -> list[Sequence[Any]]:
        return [get(chunk) for get in self.getters]

    def arrow_table(self, chunk: _Chunk) -> pa.Table:
        assert self.arrow_schema is not None
        arrays = [
            pa.array(data, type=f.type)
            for data, f in zip(self.column_data(chunk), self.arrow_schema, strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema)

    def insert(self, client: Client, chunk: _Chunk, fmt: InsertFormat) -> None:
        if fmt == "arrow":
            client.insert_arrow(self.table, self.arrow_table(chunk))
            return
        data = [d.tolist() if isinstance(d, np.ndarray) else d for d in self.column_data(chunk)]
        client.insert(
            self.table, data, column_names=list(self.columns),
            column_type_names=list(self.ch_types), column_oriented=True,
        )


_SIMPLE_ARROW: dict[str, pa.DataType] = {
    "String": pa.string(),
    "Bool": pa.bool_(),
    "Int8": pa.int8(), "Int16": pa.int16(), "Int32": pa.int32(), "Int64": pa.int64(),
    "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(), "UInt64": pa.uint64(),
    "Float32": pa.float32(), "Float64": pa.float64(),
}
_WRAPPER = re.compile(r"(LowCardinality|Nullable|Array)\((.*)\)")
_DATETIME64 = re.compile(r"DateTime64\((\d)(?:,\s*'([^']+)')?\)")


def arrow_type(ch_type: str) -> pa.DataType:
    """The Arrow type to send for a ClickHouse column type.

    Strings go as Arrow binary: ClickHouse stores either in a String, and
    binary also takes the exact bytes of a dead letter.
    """
    wrapper = _WRAPPER.fullmatch(ch_type)
    if wrapper:
        inner = arrow_type(wrapper.group(2))
        return pa.list_(inner) if wrapper.group(1) == "Array" else inner
    if ch_type == "String":
        return pa.binary()
    if ch_type in _SIMPLE_ARROW:
        return _SIMPLE_ARROW[ch_type]
    dt = _DATETIME64.fullmatch(ch_type)
    if dt:
        unit = {"0": "s", "3": "ms", "6": "us", "9": "ns"}[dt.group(1)]
        return pa.timestamp(unit, tz=dt.group(2) or "UTC")
    raise SinkError(f"no Arrow type known for ClickHouse type {ch_type}")


def raw_writers() -> dict[str, TableWriter]:
    """Stream name -> writer of its raw table (``scan`` -> ``scan_events``)."""
    writers = {}
    for stream in STREAMS:
        extras = dict(_RAW_EXTRAS)
        if stream == "order":
            extras.update(_ORDER_EXTRAS)
        writers[stream] = TableWriter(f"{stream}_events", EVENT_TYPES[stream], extras)
    return writers


def aggregate_writer(spec: AggregateSpec) -> TableWriter:
    """Writer of one aggregate's table: dims and counters come by position."""
    extras: dict[str, Getter] = {dim: _dim(i) for i, dim in enumerate(spec.dims)}
    extras.update({name: _value(i) for i, name in enumerate(spec.fields)})
    return TableWriter(spec.name, ClosedWindow, extras)


def control_writers() -> dict[str, TableWriter]:
    """Control topic name -> writer of its table (``aggregates`` excepted)."""
    return {
        "dead-letter": TableWriter("dead_letters", DeadLetter, {}),
        "alerts": TableWriter(
            "alerts", Alert, {"evidence": _evidence, "version": _alert_version}
        ),
        "coupon-decisions": TableWriter(
            "coupon_decisions", CouponDecision, {"evidence": _evidence}
        ),
        "coupon-policy": TableWriter("coupon_policies", CouponPolicy, {"store_id": _policy_store}),
        "stock-levels": TableWriter("stock_levels", StockLevel, {}),
        "pickup-levels": TableWriter("pickup_levels", PickupLevel, {}),
        "alert-acks": TableWriter("alert_acks", AlertAck, {}),
        "alert-deliveries": TableWriter("alert_deliveries", AlertDelivery, {}),
    }


# --------------------------------------------------------------------------
# Routes: what a message on each topic becomes
# --------------------------------------------------------------------------


class _Route:
    """Turns a message of one topic into records appended to buffers.

    ``handle`` returns how many records (events) of the message were skipped
    as malformed.
    """

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> int:
        raise NotImplementedError


class _RawRoute(_Route):
    def __init__(self, decoder: EventDecoder[Event], buffer: _Buffer) -> None:
        self.decoder = decoder
        self.buffer = buffer

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> int:
        decoded = self.decoder.decode(value, now_ms)
        if decoded.events:
            self.buffer.add(decoded.events, partition, offset)
        return len(decoded.rejected)


class _RecordRoute(_Route):
    """One record, or a JSON array of them, per message."""

    def __init__(self, record_type: type, buffer: _Buffer) -> None:
        self.decoder = msgspec.json.Decoder(record_type | list[record_type])  # type: ignore[valid-type]
        self.buffer = buffer

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> int:
        try:
            decoded = self.decoder.decode(value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            return 1
        records = decoded if isinstance(decoded, list) else [decoded]
        if records:
            self.buffer.add(records, partition, offset)
        return 0


class _AggregatesRoute(_Route):
    """Closed windows to their aggregate's table, late events to ``late_events``."""

    def __init__(self, buffers: dict[str, _Buffer], late: _Buffer) -> None:
        self.buffers = buffers
        self.late = late
        self.shapes = {name: (len(s.dims), len(s.fields)) for name, s in AGGREGATES.items()}
        self.closed = msgspec.json.Decoder(ClosedWindow | list[ClosedWindow])
        self.late_decoder = msgspec.json.Decoder(LateEvent | list[LateEvent])

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> int:
        kind = next((v for k, v in headers if k == KIND_HEADER), None)
        raw = value or b""
        try:
            if kind == b"late_event":
                return self._late(self.late_decoder.decode(raw), partition, offset)
            if kind == b"closed_window":
                return self._closed(self.closed.decode(raw), partition, offset)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return 1
        if kind is not None:
            return 1  # a kind this sink does not know
        for decoder, handler in ((self.closed, self._closed), (self.late_decoder, self._late)):
            try:
                decoded = decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            return handler(decoded, partition, offset)
        return 1

    def _late(self, decoded: LateEvent | list[LateEvent], partition: int, offset: int) -> int:
        records = decoded if isinstance(decoded, list) else [decoded]
        if records:
            self.late.add(records, partition, offset)
        return 0

    def _closed(
        self, decoded: ClosedWindow | list[ClosedWindow], partition: int, offset: int
    ) -> int:
        records = decoded if isinstance(decoded, list) else [decoded]
        skipped = 0
        by_table: dict[str, list[ClosedWindow]] = {}
        for cw in records:
            shape = self.shapes.get(cw.aggregate)
            if shape is None or shape != (len(cw.dims), len(cw.values)):
                skipped += 1
                continue
            by_table.setdefault(cw.aggregate, []).append(cw)
        for table, rows in by_table.items():
            self.buffers[table].add(rows, partition, offset)
        return skipped


# --------------------------------------------------------------------------
# The sink
# --------------------------------------------------------------------------


@dataclass(slots=True)
class SinkStats:
    """Counters an operator (or a test) reads to see what the sink did."""

    rows: dict[str, int] = field(default_factory=dict)
    """Rows inserted per table."""
    batches: int = 0
    """Inserts done (one per chunk of at most sink_batch_rows rows)."""
    commits: int = 0
    messages: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """Malformed records skipped, per topic."""
    lag: int | None = None
    """Messages behind the end of the assigned partitions, at the last poll."""
    insert_seconds: float = 0.0


class ClickHouseSink:
    """Consumes every topic of the control tower and writes the store.

    ``client`` is a clickhouse-connect client whose schema is migrated; when
    omitted the sink opens the store itself (``owner=True``) and closes it at
    the end of :meth:`run`.
    """

    def __init__(
        self,
        settings: Settings,
        client: Client | None = None,
        *,
        insert_format: InsertFormat = "arrow",
        group_id: str | None = None,
    ) -> None:
        self.settings = settings
        self._own_client = client is None
        self.client = client if client is not None else open_store(settings, owner=True)
        self.insert_format = insert_format
        self.group_id = group_id or f"{settings.app_id}-sink"
        self.stats = SinkStats()
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._broken = False
        self._last_commit = 0.0
        self._build_routes()

    # ---------------------------------------------------------------- setup
    def _build_routes(self) -> None:
        s = self.settings
        self._writers: dict[str, TableWriter] = {}
        self._buffers: dict[str, _Buffer] = {}
        self._routes: dict[str, _Route] = {}
        self._buffers_by_topic: dict[str, list[_Buffer]] = {}

        def buffer(writer: TableWriter, topic: str) -> _Buffer:
            self._writers[writer.table] = writer
            buf = _Buffer(writer.table, topic)
            self._buffers[writer.table] = buf
            self._buffers_by_topic.setdefault(topic, []).append(buf)
            return buf

        max_past = s.ts_max_past_days * 86_400
        for stream, writer in raw_writers().items():
            topic = s.topic(stream)
            decoder = EventDecoder.for_stream(stream, max_past, s.ts_max_future_seconds)
            self._routes[topic] = _RawRoute(decoder, buffer(writer, topic))
        agg_topic = s.topic("aggregates")
        agg_buffers = {
            name: buffer(aggregate_writer(spec), agg_topic) for name, spec in AGGREGATES.items()
        }
        late = buffer(TableWriter("late_events", LateEvent, {}), agg_topic)
        self._routes[agg_topic] = _AggregatesRoute(agg_buffers, late)
        for name, writer in control_writers().items():
            topic = s.topic(name)
            self._routes[topic] = _RecordRoute(writer.record_type, buffer(writer, topic))
        for table in self._buffers:
            self.stats.rows[table] = 0

    @property
    def topics(self) -> list[str]:
        return list(self._routes)

    @property
    def tables(self) -> list[str]:
        return list(self._buffers)

    @property
    def pending_rows(self) -> int:
        """Rows consumed and not yet inserted."""
        return sum(len(b.records) for b in self._buffers.values())

    def bind(self) -> None:
        """Read every table's columns (fails fast if the store lacks a table)."""
        for table, writer in self._writers.items():
            self._writers[table] = writer.bind(self.client)

    # ------------------------------------------------------------------ run
    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then insert what is buffered and
        commit it. Raises :class:`SinkError` when the store keeps refusing an
        insert; nothing after the last durable row is committed then."""
        s = self.settings
        consumer: AIOKafkaConsumer | None = None
        try:
            self.bind()
            await ensure_topics(s, self.topics)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=s.bootstrap,
                group_id=self.group_id,
                client_id=f"{s.app_id}-sink",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                metadata_max_age_ms=10_000,
                max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
            )
            await consumer.start()
            self._consumer = consumer
            consumer.subscribe(self.topics, listener=_Listener(self))
            await self._loop(consumer, stop)
        finally:
            try:
                if self._consumer is not None and not self._broken:
                    async with self._lock:
                        await self._flush(force=True)
                        await self._commit(force=True)
            finally:
                self._consumer = None
                if consumer is not None:
                    await consumer.stop()
                if self._own_client:
                    self.client.close()

    async def _loop(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        s = self.settings
        routes = self._routes
        skipped = self.stats.skipped
        next_offsets = self._next
        progress_at = time.monotonic() + PROGRESS_SECONDS
        progress_rows = dict(self.stats.rows)
        progress_t = time.monotonic()
        while not stop.is_set():
            batches = await consumer.getmany(
                timeout_ms=self._poll_timeout_ms(), max_records=s.sink_batch_rows
            )
            if batches:
                now_ms = int(time.time() * 1000)
                for tp, messages in batches.items():
                    route = routes[tp.topic]
                    bad = 0
                    partition = tp.partition
                    for msg in messages:
                        bad += route.handle(msg.value, msg.headers, partition, msg.offset, now_ms)
                    if bad:
                        skipped[tp.topic] = skipped.get(tp.topic, 0) + bad
                    if tp not in next_offsets:
                        # Where reading started is the group's commit (or the
                        # reset position): nothing to commit until past it.
                        self._committed.setdefault(tp, messages[0].offset)
                    next_offsets[tp] = messages[-1].offset + 1
                    self.stats.messages += len(messages)
                self.stats.lag = self._lag(consumer)
            async with self._lock:
                flushed = await self._flush(force=False)
                await self._commit(force=flushed)
            now = time.monotonic()
            if now >= progress_at:
                self._log_progress(progress_rows, now - progress_t)
                progress_rows = dict(self.stats.rows)
                progress_t = now
                progress_at = now + PROGRESS_SECONDS

    def _poll_timeout_ms(self) -> int:
        """Wait for messages no longer than the oldest buffer may still wait."""
        limit = self.settings.sink_batch_seconds
        oldest = min((b.since for b in self._buffers.values() if b.records), default=None)
        wait = 0.2 if oldest is None else limit - (time.monotonic() - oldest)
        return int(min(max(wait, 0.005), 0.2) * 1000)

    def _lag(self, consumer: AIOKafkaConsumer) -> int | None:
        """Messages between what was read and the end of each partition, as of
        the last fetch (None until every assigned partition was fetched)."""
        total = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                return None
            if tp in self._next:
                total += max(0, high - self._next[tp])
        return total

    # ------------------------------------------------------- flush, commit
    async def flush(self) -> None:
        """Insert everything buffered and commit the offsets it covered."""
        async with self._lock:
            await self._flush(force=True)
            await self._commit(force=True)

    async def _flush(self, force: bool) -> bool:
        """Insert the buffers that are full or old enough (all if ``force``)."""
        s = self.settings
        now = time.monotonic()
        flushed = False
        for table, buf in self._buffers.items():
            if not buf.records:
                continue
            if not force and len(buf.records) < s.sink_batch_rows and (
                now - buf.since < s.sink_batch_seconds
            ):
                continue
            chunks = buf.take(s.sink_batch_rows)
            writer = self._writers[table]
            for chunk in chunks:
                await self._insert(writer, chunk)
                self.stats.rows[table] += len(chunk.records)
                self.stats.batches += 1
            buf.done()
            flushed = True
        return flushed

    async def _insert(self, writer: TableWriter, chunk: _Chunk) -> None:
        """One insert, retried with back-off; gives up by raising
        :class:`SinkError`, after which the sink commits nothing more."""
        for attempt, pause in enumerate((*INSERT_RETRIES, None)):
            started = time.perf_counter()
            try:
                await asyncio.to_thread(writer.insert, self.client, chunk, self.insert_format)
            except Exception as exc:
                if pause is None:
                    self._broken = True
                    raise SinkError(
                        f"insert into {writer.table} failed {attempt + 1} times: {exc}"
                    ) from exc
                log.warning(
                    "insert into %s failed (%s); retrying in %.1fs", writer.table, exc, pause
                )
                await asyncio.sleep(pause)
            else:
                self.stats.insert_seconds += time.perf_counter() - started
                return

    def _committable(self) -> dict[TopicPartition, int]:
        """Per assigned partition: the next offset whose rows are all durable."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        out: dict[TopicPartition, int] = {}
        for tp, nxt in self._next.items():
            if tp not in assigned:
                continue
            low = nxt
            for buf in self._buffers_by_topic[tp.topic]:
                first = buf.first.get(tp.partition)
                if first is not None and first < low:
                    low = first
            if low != self._committed.get(tp):
                out[tp] = low
        return out

    async def _commit(self, force: bool) -> None:
        """Commit what is durable: at once after a flush, otherwise (offsets
        of messages that gave no rows) at most every sink_batch_seconds."""
        if self._broken or self._consumer is None:
            return
        now = time.monotonic()
        if not force and now - self._last_commit < self.settings.sink_batch_seconds:
            return
        offsets = self._committable()
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: whoever gets them replays from
            # the last commit, and the store absorbs the duplicates.
            log.warning("offset commit failed (%s); rows will be replayed", exc)
            return
        self._committed.update(offsets)
        self._last_commit = now
        self.stats.commits += 1

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before partitions move to another sink: make their rows durable and
        commit, so the new owner starts where this one stopped."""
        if self._broken:
            return
        async with self._lock:
            await self._flush(force=True)
            await self._commit(force=True)
        for tp in revoked:
            self._next.pop(tp, None)
            self._committed.pop(tp, None)

    def _log_progress(self, before: dict[str, int], seconds: float) -> None:
        rates = {
            table: (rows - before.get(table, 0)) / seconds
            for table, rows in self.stats.rows.items()
            if rows != before.get(table, 0)
        }
        total = sum(rates.values())
        detail = ", ".join(f"{t} {r:,.0f}/s" for t, r in sorted(rates.items()))
        log.info(
            "sink: %s rows/s%s; lag %s; pending %d; skipped %d",
            f"{total:,.0f}", f" ({detail})" if detail else "", self.stats.lag,
            self.pending_rows, sum(self.stats.skipped.values()),
        )


class _Listener(ConsumerRebalanceListener):
    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.sink._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("sink assigned %d partitions", len(assigned))


# --------------------------------------------------------------------------
# The process
# --------------------------------------------------------------------------


async def ensure_topics(settings: Settings, topics: Sequence[str]) -> list[str]:
    """Create the topics that do not exist yet; return their names.

    A consumer does not create topics, and a subscription to a missing one
    only starts once metadata is refreshed after someone else creates it.
    Creating them here, as a producer's first send would (the configured
    partition count; three replicas, or fewer on a smaller cluster), lets the
    sink start before anyone has produced.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap, client_id=f"{settings.app_id}-sink-admin"
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if not missing:
            return []
        brokers = len((await admin.describe_cluster())["brokers"])
        replicas = max(1, min(3, brokers))
        response = await admin.create_topics(
            [NewTopic(t, settings.topic_partitions, replicas) for t in missing]
        )
        for topic, code, *_ in response.topic_errors:
            if code not in (0, 36):  # 36: created meanwhile by someone else
                log.warning("could not create topic %s (Kafka error code %s)", topic, code)
        log.info("created topics %s", ", ".join(missing))
        return missing
    finally:
        await admin.close()


def _start_http_front(settings: Settings, client: Client) -> Any:
    """Serve the embedded store over ClickHouse's HTTP interface, so the
    dashboard and ``ctower sql`` can read while this process holds the path.

    Guarded: the sink works without the front (module missing, port taken);
    writing the store matters more than serving it, so a failure is logged.
    """
    try:
        from ctower.store_server import StoreHttpServer
    except ImportError:
        log.info("no store HTTP front available (ctower.store_server missing)")
        return None
    try:
        return StoreHttpServer(settings, engine_client=client).start()
    except Exception as exc:
        log.error("store HTTP front did not start: %s", exc)
        return None


async def _run(settings: Settings, stop: asyncio.Event | None = None) -> SinkStats:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    client = open_store(settings, owner=True)
    front = None
    try:
        applied = apply_migrations(client)
        if applied:
            log.info("schema migrations applied: %s", ", ".join(applied))
        if settings.store_is_embedded:
            front = _start_http_front(settings, client)
        sink = ClickHouseSink(settings, client)
        log.info(
            "sink consuming %d topics into %s (group %s)",
            len(sink.topics), settings.dsn if settings.store_is_embedded else "server",
            sink.group_id,
        )
        await sink.run(stop)
        log.info(
            "sink stopped: %d rows in %d inserts, %d commits",
            sum(sink.stats.rows.values()), sink.stats.batches, sink.stats.commits,
        )
        return sink.stats
    finally:
        if front is not None:
            front.stop()
        client.close()


def run_sink(settings: Settings) -> SinkStats:
    """Run the sink process until SIGTERM or SIGINT: migrate the schema, serve
    the embedded store over HTTP if possible, consume, and on the signal
    insert what is buffered and commit it before exiting."""
    return asyncio.run(_run(settings))
