"""The ClickHouse sink: every topic of the control tower, written to the store.

One process consumes the seven raw event topics and the output topics
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
- **Bad input never stops the sink.** Whatever the bytes of a message, it
  ends in its table, in ``quarantine`` (migration 0011), or both, and its
  offset is committed only after that. Decoding catches every exception per
  message (RecursionError on JSON nested thousands deep included); a batch
  envelope that fails whole is split into its elements without recursion, so
  one bad element costs only itself. Rows that decode but cannot go into
  their columns (an Int64 overflow, a date outside DateTime64's range, an
  infinite amount) are found column by column before the insert; rows the
  store itself refuses are found by bisecting the insert. Those rows are
  quarantined and the rest of the batch is inserted. A store that cannot be
  reached is not the data's fault: nothing is quarantined, the insert is
  retried with back-off as before (:func:`failure_kind` tells the two
  apart). Malformed raw events are also dead-lettered by the worker.
- **Columns from the table.** The sink reads each table's columns at start
  and fills each from the record field of the same name, or from a few named
  extras (``event_key``, Kafka position, dims and counters of a closed
  window...). A column it cannot fill stops start-up, so DDL and sink cannot
  drift apart silently.

Messages on ``aggregates`` carry the header ``kind``: ``closed_window`` (a
:class:`ClosedWindow`), ``late_event`` (a :class:`LateEvent`) or, where
``schemas/control.py`` defines it, ``duplicate_event`` (to
``duplicate_events``). The value may also be a JSON array of records of that
kind. Without the header the sink tries a closed window, then a late event;
another kind is quarantined as ``unknown_value``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import signal
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, DataError

from ctower.broker.topics import ensure_topics
from ctower.errors import CtowerError
from ctower.health import Heartbeat
from ctower.schemas import control
from ctower.schemas.actions import ACTION_RANK, ActionOrder
from ctower.schemas.control import (
    KIND_HEADER,
    Alert,
    AlertAck,
    AlertDelivery,
    ClosedWindow,
    CouponDecision,
    CouponPolicy,
    CouponSignal,
    DeadLetter,
    LateEvent,
    PickupLevel,
    StockLevel,
)
from ctower.schemas.events import EVENT_TYPES, Event
from ctower.schemas.migrations import apply_migrations
from ctower.schemas.tasks import ShipmentTask
from ctower.schemas.wire import REASONS, EventDecoder, reject, split_array
from ctower.settings import STREAMS, Settings
from ctower.store import open_store
from ctower.tables.aggregates import AGGREGATES, AggregateSpec

log = logging.getLogger(__name__)

InsertFormat = Literal["arrow", "native"]
INSERT_FORMATS: tuple[InsertFormat, ...] = ("arrow", "native")
"""How a batch reaches ClickHouse. ``arrow`` (the default): a pyarrow Table
through ``client.insert_arrow``; the engine parses Arrow itself. ``native``:
Python column lists through ``client.insert(column_oriented=True)``, which
clickhouse-connect serialises to ClickHouse's Native format. Measured on chdb
here (2 shared cores, scan events, ``tests/streams/sinks/bench_sink.py``,
columns built and inserted): at 10k-row batches the two are level within the
noise (arrow 160k-180k rows/s, native 170k-200k); from 25k rows arrow leads
(210k against 185k; 280k against 205k at 50k), so arrow it is. Either way the
sink checks the rows by building the Arrow table first (:meth:`TableWriter.prepare`),
so ``native`` now pays that conversion too."""

FETCH_PARTITION_BYTES = 4 << 20
"""Bytes fetched per partition per request. aiokafka's default (1 MiB) made
fetching the bottleneck for batch envelopes here: 300k scan events in
envelopes of 100 went from about 90k to 150k-280k rows/s with 4 MiB (8 MiB
gained nothing more)."""

PROGRESS_SECONDS = 10.0
"""How often the sink logs its rates."""

INSERT_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Back-off before each retry of an insert the store could not take (it
cannot be reached, or is out of memory, parts, disk...); after the last one
the sink stops without committing, so nothing is skipped. An insert refused
because of its data is not retried: its bad rows are quarantined."""

QUARANTINE_TABLE = "quarantine"
QUARANTINE_RAW_BYTES = 8192
"""How much of a quarantined message is kept (its length and SHA-256 are
kept whole; Kafka still holds the rest until retention)."""
QUARANTINE_DETAIL_CHARS = 2000
QUARANTINE_LOG_LINES = 20
"""Quarantined rows logged one by one per progress period; the rest only
counted (a flood of bad input must not flood the log)."""

QUARANTINE_REASONS: tuple[str, ...] = tuple(dict.fromkeys((
    *REASONS,            # decoding: the dead-letter reasons of schemas/wire.py
    "too_deep",          # nested deeper than the decoder recurses (RecursionError)
    "wrong_shape",       # a closed window whose dims/values do not match its aggregate
    "refused_by_store",  # decoded and converted, but the store refused the row
)))
"""Every reason a quarantined row can carry. ``out_of_range`` and
``wrong_type`` also name rows whose values do not fit their columns (an
Int64 overflow, a date outside DateTime64's range, a non-finite number)."""

DATETIME64_RANGE_S = (-2_208_988_800, 10_413_792_000)
"""[1900-01-01, 2300-01-01) in epoch seconds: what DateTime64 holds. The
store takes a value outside without complaint and stores garbage that
clickhouse-connect cannot read back (the dashboard fails), so the sink
quarantines such rows itself."""

_OUTAGE_CODES = frozenset({
    16, 60, 81, 218,            # no such column, table, database; table dropped
    62,                         # SYNTAX_ERROR: our statement, never the data
    159, 209, 210, 279, 285,    # timeouts, network, no replicas
    164, 242, 243,              # READONLY, TABLE_IS_READ_ONLY, NOT_ENOUGH_SPACE
    173, 241,                   # CANNOT_ALLOCATE_MEMORY, MEMORY_LIMIT_EXCEEDED
    202, 203, 236, 252, 319, 394, 425, 439, 473,  # too many queries/parts, aborted, cancelled...
    192, 194, 497, 516,         # users, passwords, access
    999, 1000,                  # Keeper, Poco (network) exceptions
})
"""ClickHouse error codes that say the store cannot take an insert now,
whatever its rows: waited for and retried, never blamed on the data. Any
other code is a refusal of this insert; the rows are blamed (and bisected)
only if the store then still answers a query."""


class SinkError(CtowerError, RuntimeError):
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
    indexes: np.ndarray | None = None
    """Each record's position in its message's batch envelope, -1 when the
    message was the record (None: all -1)."""

    def index(self, row: int) -> int:
        return -1 if self.indexes is None else int(self.indexes[row])

    def select(self, rows: Sequence[int]) -> _Chunk:
        """The chunk of these rows only."""
        picked = np.asarray(rows, dtype=np.int64)
        return _Chunk(
            [self.records[i] for i in rows], self.partitions[picked], self.offsets[picked],
            self.topic, None if self.indexes is None else self.indexes[picked],
        )

    def slice(self, lo: int, hi: int) -> _Chunk:
        if lo == 0 and hi == len(self.records):
            return self
        return _Chunk(
            self.records[lo:hi], self.partitions[lo:hi], self.offsets[lo:hi], self.topic,
            None if self.indexes is None else self.indexes[lo:hi],
        )


Getter = Callable[[_Chunk], Sequence[Any] | np.ndarray]


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
    run_envelope: list[bool] = field(default_factory=list)
    """Per run: the records are elements of a batch envelope (else index -1)."""
    run_indexes: dict[int, Sequence[int]] = field(default_factory=dict)
    """Run number -> the records' positions in the envelope, when not 0..n-1."""
    first: dict[int, int] = field(default_factory=dict)
    """Partition -> lowest offset whose rows are here (or being inserted)."""
    since: float = 0.0

    def add(self, records: list[Any], partition: int, offset: int,
            indexes: Sequence[int] | None = None) -> None:
        """``indexes``: each record's position in the message's batch
        envelope; None when the message was the record itself."""
        if not self.records:
            self.since = time.monotonic()
        if indexes is not None and not (
            isinstance(indexes, range) and indexes.start == 0 and indexes.step == 1
        ):
            self.run_indexes[len(self.run_counts)] = indexes
        self.records += records
        self.run_partitions.append(partition)
        self.run_offsets.append(offset)
        self.run_counts.append(len(records))
        self.run_envelope.append(indexes is not None)
        first = self.first.get(partition)
        if first is None or offset < first:  # quarantined rows may come out of order
            self.first[partition] = offset

    def take(self, chunk_rows: int) -> list[_Chunk]:
        """The buffered rows in chunks; the buffer is empty afterwards, but
        ``first`` stays until :meth:`done` (the rows are not durable yet)."""
        counts = np.asarray(self.run_counts, dtype=np.int64)
        partitions = np.repeat(np.asarray(self.run_partitions, dtype=np.int32), counts)
        offsets = np.repeat(np.asarray(self.run_offsets, dtype=np.int64), counts)
        records = self.records
        starts = np.cumsum(counts) - counts
        indexes = np.arange(len(records), dtype=np.int64) - np.repeat(starts, counts)
        indexes[~np.repeat(np.asarray(self.run_envelope, dtype=bool), counts)] = -1
        for run, positions in self.run_indexes.items():
            indexes[starts[run] : starts[run] + counts[run]] = positions
        chunks = [
            _Chunk(
                records[i : i + chunk_rows],
                partitions[i : i + chunk_rows],
                offsets[i : i + chunk_rows],
                self.topic,
                indexes[i : i + chunk_rows],
            )
            for i in range(0, len(records), chunk_rows)
        ]
        self.records = []
        self.run_partitions = []
        self.run_offsets = []
        self.run_counts = []
        self.run_envelope = []
        self.run_indexes = {}
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


def _order_version(ch: _Chunk) -> list[int]:
    """The state's rank, then its time: a later state of an order wins."""
    return [ACTION_RANK[o.status] * 10**13 + o.ts for o in ch.records]


def _task_version(ch: _Chunk) -> list[int]:
    """A closed task wins over its opening, whatever the clocks say."""
    return [(t.status == "closed") * 10**13 + t.ts for t in ch.records]


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

    def column_data(self, chunk: _Chunk) -> list[Sequence[Any] | np.ndarray]:
        return [get(chunk) for get in self.getters]

    def arrow_table(self, chunk: _Chunk) -> pa.Table:
        assert self.arrow_schema is not None
        arrays = [
            pa.array(data, type=f.type)
            for data, f in zip(self.column_data(chunk), self.arrow_schema, strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema)

    def insert(self, client: Client, chunk: _Chunk, fmt: InsertFormat) -> None:
        """Convert and insert, unchecked (the benches' path; the sink uses
        :meth:`prepare` and :meth:`send`)."""
        self.send(client, chunk, self.arrow_table(chunk) if fmt == "arrow" else None, fmt)

    def send(self, client: Client, chunk: _Chunk, table: pa.Table | None,
             fmt: InsertFormat) -> None:
        """Insert a prepared chunk: ``table`` as Arrow, or the chunk's columns as Native."""
        if fmt == "arrow":
            assert table is not None
            client.insert_arrow(self.table, table)
            return
        data = [d.tolist() if isinstance(d, np.ndarray) else d for d in self.column_data(chunk)]
        client.insert(
            self.table, data, column_names=list(self.columns),
            column_type_names=list(self.ch_types), column_oriented=True,
        )

    def prepare(self, chunk: _Chunk) -> tuple[_Chunk, pa.Table, list[tuple[int, str, str]]]:
        """The rows that fit their columns, as a chunk and an Arrow table, and
        (row, reason, detail) for each row of ``chunk`` that does not.

        One conversion of the whole chunk and a range check of its dates when
        all is well; when a column fails, only that column is converted value
        by value to find the rows at fault.
        """
        try:
            table = self.arrow_table(chunk)
        except Exception:
            return self._prepare_slowly(chunk)
        bad = _dates_out_of_range(table)
        if not bad:
            return chunk, table, []
        keep = [i for i in range(len(chunk.records)) if i not in bad]
        return chunk.select(keep), _take(table, keep), [(i, *why) for i, why in bad.items()]

    def prepare_row_by_row(
        self, chunk: _Chunk
    ) -> tuple[_Chunk, pa.Table, list[tuple[int, str, str]]]:
        """:meth:`prepare` one row at a time (the last resort)."""
        assert self.arrow_schema is not None
        keep: list[int] = []
        tables: list[pa.Table] = []
        bad: list[tuple[int, str, str]] = []
        for row in range(len(chunk.records)):
            try:
                good, table, row_bad = self.prepare(chunk.select([row]))
            except Exception as exc:
                bad.append((row, *_conversion_failure("row", exc)))
                continue
            if row_bad:
                bad.append((row, *row_bad[0][1:]))
            elif good.records:
                keep.append(row)
                tables.append(table)
        table = pa.concat_tables(tables) if tables else self.arrow_schema.empty_table()
        return chunk.select(keep), table, bad

    def _prepare_slowly(
        self, chunk: _Chunk
    ) -> tuple[_Chunk, pa.Table, list[tuple[int, str, str]]]:
        assert self.arrow_schema is not None
        n = len(chunk.records)
        bad: dict[int, tuple[str, str]] = {}
        for name, get, arrow_field in zip(self.columns, self.getters, self.arrow_schema,
                                          strict=True):
            try:
                values: Sequence[Any] | np.ndarray = get(chunk)
            except Exception:
                values = []
                for row in range(n):
                    try:
                        values.append(get(chunk.select([row]))[0])
                    except Exception as exc:
                        bad.setdefault(row, _conversion_failure(name, exc))
                        values.append(None)
            try:
                pa.array(values, type=arrow_field.type)
                continue
            except Exception:
                pass
            for row in range(n):
                if row in bad:
                    continue
                try:
                    pa.array([values[row]], type=arrow_field.type)
                except Exception as exc:
                    bad[row] = _conversion_failure(name, exc)
        keep = [i for i in range(n) if i not in bad]
        try:
            table = self.arrow_table(chunk.select(keep))
        except Exception:  # values that fail only together: one row at a time
            parts = []
            for row in list(keep):
                try:
                    parts.append(self.arrow_table(chunk.select([row])))
                except Exception as exc:
                    bad[row] = _conversion_failure("row", exc)
            keep = [i for i in range(n) if i not in bad]
            table = pa.concat_tables(parts) if parts else self.arrow_schema.empty_table()
        dated = _dates_out_of_range(table)
        if dated:
            for row, why in dated.items():
                bad[keep[row]] = why
            in_range = [j for j in range(len(keep)) if j not in dated]
            keep = [keep[j] for j in in_range]
            table = _take(table, in_range)
        return chunk.select(keep), table, [(i, *bad[i]) for i in sorted(bad)]


def _take(table: pa.Table, rows: list[int]) -> pa.Table:
    return table.take(pa.array(rows, type=pa.int64()))


def _conversion_failure(column: str, exc: BaseException) -> tuple[str, str]:
    """(reason, detail) of a value that cannot go into its column."""
    return conversion_reason(exc), _clip(f"{column}: {type(exc).__name__}: {exc}")


_OUT_OF_RANGE_WORDS = re.compile(
    r"overflow|too large|out of (range|bounds)|infinity|\bnan\b|requires .*<=", re.I
)


def conversion_reason(exc: BaseException) -> str:
    """``out_of_range``, ``not_utf8`` or ``wrong_type`` for an exception raised
    while putting a value into a column (Arrow, clickhouse-connect's Native
    writer, or a getter such as ``round(inf)``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UnicodeError):
            return "not_utf8"
        if isinstance(seen, (OverflowError, struct.error)) or _OUT_OF_RANGE_WORDS.search(
            str(seen)
        ):
            return "out_of_range"
        seen = seen.__cause__ or seen.__context__
    return "wrong_type"


def _dates_out_of_range(table: pa.Table) -> dict[int, tuple[str, str]]:
    """Rows with a timestamp outside what DateTime64 holds: row -> (reason, detail)."""
    bad: dict[int, tuple[str, str]] = {}
    for column, arrow_field in zip(table.columns, table.schema, strict=True):
        if not pa.types.is_timestamp(arrow_field.type) or column.null_count == len(column):
            continue
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[
            arrow_field.type.unit
        ]
        low = max(DATETIME64_RANGE_S[0] * per_second, -(2**63))
        high = min(DATETIME64_RANGE_S[1] * per_second - 1, 2**63 - 1)
        ticks = column.cast(pa.int64())
        bounds = pc.min_max(ticks)
        if bounds["min"].as_py() >= low and bounds["max"].as_py() <= high:
            continue
        outside = pc.or_(pc.less(ticks, low), pc.greater(ticks, high)).fill_null(False)
        for row in np.flatnonzero(outside.to_numpy(zero_copy_only=False)):
            value = ticks[int(row)].as_py()
            bad.setdefault(int(row), (
                "out_of_range",
                f"{arrow_field.name}: {value} {arrow_field.type.unit} is outside DateTime64's "
                "range [1900-01-01, 2299-12-31]",
            ))
    return bad


def _clip(text: str, limit: int = QUARANTINE_DETAIL_CHARS) -> str:
    """At most ``limit`` characters, encodable as UTF-8 whatever they were."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def failure_kind(exc: BaseException) -> Literal["data", "refused", "outage"]:
    """What a failed insert says.

    ``data``: a value could not be serialised (nothing reached the store);
    ``refused``: the store answered with an error about this insert (confirm
    the store still answers before blaming the rows); ``outage``: the store
    cannot be reached or cannot take any insert now (transport errors, no
    error code, or a code of :data:`_OUTAGE_CODES`).
    """
    if isinstance(exc, DataError):
        return "data"
    if type(exc) is DatabaseError:  # the store's own error (subclasses: the driver's)
        code = exc.code
        return "refused" if code is not None and code not in _OUTAGE_CODES else "outage"
    if isinstance(exc, (ClickHouseError, OSError)):
        return "outage"  # OperationalError, ProgrammingError (closed client)... timeouts
    return "data"  # Arrow, struct, Unicode, overflow... raised while serialising


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


def _raw_length(ch: _Chunk) -> list[int]:
    """Dead letters written before ``raw`` was cut carry no length: the raw is whole."""
    return [
        n if (n := getattr(d, "raw_length", -1)) >= 0 else len(d.raw) for d in ch.records
    ]


def _raw_sha256(ch: _Chunk) -> list[str]:
    digests = []
    for d in ch.records:
        digest = getattr(d, "raw_sha256", "")
        if not digest and getattr(d, "raw_length", -1) < 0:
            digest = hashlib.sha256(d.raw).hexdigest()
        digests.append(digest)
    return digests


def control_writers() -> dict[str, TableWriter]:
    """Control topic name -> writer of its table (``aggregates`` excepted)."""
    return {
        "dead-letter": TableWriter(
            "dead_letters", DeadLetter, {"raw_length": _raw_length, "raw_sha256": _raw_sha256}
        ),
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
        "actions": TableWriter("action_orders", ActionOrder, {
            "evidence": _evidence, "version": _order_version,
            "region": lambda ch: [o.region or "" for o in ch.records],
        }),
        "tasks": TableWriter("shipment_tasks", ShipmentTask, {
            "detail": lambda ch: [_json.encode(t.detail) for t in ch.records],
            "version": _task_version,
        }),
        "shadow-alerts": TableWriter(
            "shadow_alerts", Alert, {"evidence": _evidence, "version": _alert_version}
        ),
        "shadow-signals": TableWriter(
            "shadow_coupon_signals", CouponSignal,
            {"evidence": _evidence, "sku": lambda ch: [s.sku or "" for s in ch.records]},
        ),
    }


# --------------------------------------------------------------------------
# Routes: what a message on each topic becomes
# --------------------------------------------------------------------------


class QuarantineRow(msgspec.Struct, kw_only=True):
    """A row of ``quarantine``: a message, an element of its batch envelope,
    or a decoded record that could not be stored, and why."""

    source_topic: str
    partition: int
    offset: int
    index: int
    """Position in the batch envelope, -1 when the message itself."""
    target_table: str
    """The table the row was for ('' when it was not decoded that far)."""
    reason: str
    detail: str
    raw: bytes
    """The first QUARANTINE_RAW_BYTES of the bytes quarantined: the message,
    the envelope element, or (for a decoded record that did not fit its
    columns) the record re-encoded as JSON."""
    raw_length: int
    raw_sha256: str
    received_at: int


def quarantine_writer() -> TableWriter:
    return TableWriter(QUARANTINE_TABLE, QuarantineRow, {})


Reject = Callable[[int, int, int, bytes, str, str], None]
"""(partition, offset, index, raw, reason, detail): quarantine a message
(index -1) or one element of its batch envelope."""


def split_json_array(raw: bytes) -> list[bytes] | None:
    """The top-level elements of a JSON array, found without recursion (the
    worker's :func:`ctower.schemas.wire.split_array`): an element nested
    thousands deep does not stop the others. None when ``raw`` is not one
    array. The elements are not checked: each is decoded on its own afterwards."""
    try:
        return split_array(raw)
    except ValueError:
        return None


def decode_reason(exc: BaseException, raw: bytes = b"") -> str:
    """The reason code of an exception raised while decoding ``raw``: the
    worker's (:func:`ctower.schemas.wire.reject`), so a dead letter and a
    quarantine row of the same bytes say the same."""
    return reject(-1, raw, exc).reason


def _refine(reason: str, detail: str) -> str:
    """msgspec's 'Number out of range' (1e400, integers past 64 bits) is
    out_of_range, not the catch-all the wire classifier gives it."""
    if reason == "invalid" and "out of range" in detail.lower():
        return "out_of_range"
    return reason


def _describe(exc: BaseException) -> str:
    return _clip(f"{type(exc).__name__}: {exc}")


def record_bytes(record: Any) -> bytes:
    """A decoded record as JSON, for the quarantine (repr if even that fails)."""
    try:
        return _json.encode(record)
    except Exception:
        return repr(record).encode("utf-8", "backslashreplace")


class _FirstOf:
    """Decodes with the first decoder that takes the bytes; raises the first one's error."""

    def __init__(self, *decoders: msgspec.json.Decoder[Any]) -> None:
        self.decoders = decoders

    def decode(self, raw: bytes) -> Any:
        first: Exception | None = None
        for decoder in self.decoders:
            try:
                return decoder.decode(raw)
            except Exception as exc:
                first = first or exc
        assert first is not None
        raise first


class _Route:
    """Turns a message of one topic into records appended to buffers, and
    hands what it cannot decode to ``reject`` (the quarantine).

    ``handle`` must not raise for any bytes; the sink still catches anything
    it does raise and quarantines the whole message.
    """

    reject: Reject

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> None:
        raise NotImplementedError

    def _decode(
        self, value: bytes | None, whole: Any, one: Any, partition: int, offset: int
    ) -> tuple[list[Any], Sequence[int] | None]:
        """The records of a message and their envelope positions (None: the
        message was one record). ``whole`` decodes a record or a JSON array of
        them; when it fails on an array, each element is decoded with ``one``,
        so a bad element costs only itself."""
        if not value:
            self.reject(partition, offset, -1, b"", "not_json", "empty message value")
            return [], None
        try:
            decoded = whole.decode(value)
        except Exception as exc:
            elements = split_json_array(value)
            if not elements:
                reason = "empty_batch" if elements == [] else decode_reason(exc, value)
                self.reject(partition, offset, -1, value, reason, _describe(exc))
                return [], None
            records: list[Any] = []
            indexes: list[int] = []
            for index, element in enumerate(elements):
                try:
                    records.append(one.decode(element))
                except Exception as element_exc:
                    self.reject(partition, offset, index, element,
                                decode_reason(element_exc, element), _describe(element_exc))
                    continue
                indexes.append(index)
            return records, indexes
        if isinstance(decoded, list):
            if not decoded:
                self.reject(partition, offset, -1, value, "empty_batch",
                            "batch envelope with no records")
            return decoded, range(len(decoded))
        return [decoded], None


class _RawRoute(_Route):
    def __init__(self, decoder: EventDecoder[Event], buffer: _Buffer) -> None:
        self.decoder = decoder
        self.buffer = buffer

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> None:
        raw = value or b""
        try:
            decoded = self.decoder.decode(raw, now_ms)
        except Exception as exc:  # RecursionError and whatever else the decoder lets out
            self._decode_elements(raw, exc, partition, offset, now_ms)
            return
        events = decoded.events
        is_batch = raw.lstrip()[:1] == b"["
        if decoded.rejected:
            bad = set()
            for rejected in decoded.rejected:
                bad.add(rejected.index)
                self.reject(partition, offset, rejected.index, rejected.raw,
                            _refine(rejected.reason, rejected.detail), _clip(rejected.detail))
            if events:
                # The decoder keeps the good elements in order and drops the bad ones.
                total = len(events) + len(bad)
                self.buffer.add(events, partition, offset,
                                [i for i in range(total) if i not in bad] if is_batch else None)
        elif events:
            self.buffer.add(events, partition, offset, range(len(events)) if is_batch else None)

    def _decode_elements(self, raw: bytes, exc: Exception, partition: int, offset: int,
                         now_ms: int) -> None:
        elements = split_json_array(raw) if raw.lstrip()[:1] == b"[" else None
        if not elements:
            self.reject(partition, offset, -1, raw, decode_reason(exc, raw), _describe(exc))
            return
        events: list[Event] = []
        indexes: list[int] = []
        for index, element in enumerate(elements):
            if element[:1] == b"[":
                # An array is no event; the decoder would take it for an envelope.
                try:
                    msgspec.json.decode(element)
                    reason, detail = "not_an_object", "Expected `object`, got `array`"
                except Exception as element_exc:
                    reason, detail = decode_reason(element_exc, element), _describe(element_exc)
                self.reject(partition, offset, index, element, reason, detail)
                continue
            try:
                decoded = self.decoder.decode(element, now_ms)
            except Exception as element_exc:
                self.reject(partition, offset, index, element,
                            decode_reason(element_exc, element), _describe(element_exc))
                continue
            for rejected in decoded.rejected:
                self.reject(partition, offset, index, element,
                            _refine(rejected.reason, rejected.detail), _clip(rejected.detail))
            for event in decoded.events:
                events.append(event)
                indexes.append(index)
        if events:
            self.buffer.add(events, partition, offset, indexes)


class _RecordRoute(_Route):
    """One record, or a JSON array of them, per message."""

    def __init__(self, record_type: type, buffer: _Buffer) -> None:
        self.whole = msgspec.json.Decoder(record_type | list[record_type])  # type: ignore[valid-type]
        self.one: msgspec.json.Decoder[Any] = msgspec.json.Decoder(record_type)
        self.buffer = buffer

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> None:
        records, indexes = self._decode(value, self.whole, self.one, partition, offset)
        if records:
            self.buffer.add(records, partition, offset, indexes)


class _AggregatesRoute(_Route):
    """Closed windows to their aggregate's table, late events to ``late_events``."""

    def __init__(self, buffers: dict[str, _Buffer], late: _Buffer,
                 others: dict[bytes, tuple[type, _Buffer]] | None = None) -> None:
        """``others``: further kinds (header value -> record type and buffer)."""
        self.buffers = buffers
        self.late = late
        self.others = {kind: buf for kind, (_, buf) in (others or {}).items()}
        self.shapes = {name: (len(s.dims), len(s.fields)) for name, s in AGGREGATES.items()}
        closed_one = msgspec.json.Decoder(ClosedWindow)
        late_one = msgspec.json.Decoder(LateEvent)
        closed_whole = msgspec.json.Decoder(ClosedWindow | list[ClosedWindow])
        late_whole = msgspec.json.Decoder(LateEvent | list[LateEvent])
        self.decoders: dict[bytes | None, tuple[Any, Any]] = {
            b"closed_window": (closed_whole, closed_one),
            b"late_event": (late_whole, late_one),
            # Without the header: a closed window, else a late event.
            None: (_FirstOf(closed_whole, late_whole), _FirstOf(closed_one, late_one)),
        }
        for kind, (record_type, _) in (others or {}).items():
            self.decoders[kind] = (
                msgspec.json.Decoder(record_type | list[record_type]),  # type: ignore[valid-type]
                msgspec.json.Decoder(record_type),
            )

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> None:
        kind = next((v for k, v in headers if k == KIND_HEADER), None)
        decoders = self.decoders.get(kind)
        if decoders is None:
            self.reject(partition, offset, -1, value or b"", "unknown_value",
                        _clip(f"unknown {KIND_HEADER} header {kind!r}"))
            return
        records, indexes = self._decode(value, *decoders, partition, offset)
        if not records:
            return
        other = self.others.get(kind) if kind is not None else None
        if other is not None:
            other.add(records, partition, offset, indexes)
            return
        positions = indexes if indexes is not None else [-1] * len(records)
        late: tuple[list[Any], list[int]] = ([], [])
        by_table: dict[str, tuple[list[Any], list[int]]] = {}
        for record, index in zip(records, positions, strict=True):
            if isinstance(record, LateEvent):
                late[0].append(record)
                late[1].append(index)
                continue
            shape = self.shapes.get(record.aggregate)
            if shape is None or shape != (len(record.dims), len(record.values)):
                raw = (value or b"") if index < 0 else record_bytes(record)
                if shape is None:
                    reason, detail = "unknown_value", f"unknown aggregate {record.aggregate!r}"
                else:
                    reason = "wrong_shape"
                    detail = (f"{record.aggregate} has {shape[0]} dims and {shape[1]} values, "
                              f"the record {len(record.dims)} and {len(record.values)}")
                self.reject(partition, offset, index, raw, reason, _clip(detail))
                continue
            rows = by_table.setdefault(record.aggregate, ([], []))
            rows[0].append(record)
            rows[1].append(index)
        for table, (chosen, where) in by_table.items():
            self.buffers[table].add(chosen, partition, offset, None if indexes is None else where)
        if late[0]:
            self.late.add(late[0], partition, offset, None if indexes is None else late[1])


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
    """Records (or whole messages) quarantined instead of inserted, per topic."""
    quarantined: dict[str, int] = field(default_factory=dict)
    """Rows sent to the quarantine table, per reason."""
    quarantine_lost: int = 0
    """Quarantine rows the store refused in turn (logged; should stay 0)."""
    refused_inserts: int = 0
    """Inserts the store refused for their data (then bisected)."""
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
        self._logged_quarantines = 0
        self.heartbeat: Heartbeat | None = None
        """Set by the process (``ctower sink``): ``ctower health sink`` reads it."""
        self.on_insert: Callable[[float], None] | None = None
        """Sees each insert's seconds (the insert latency histogram of /metrics)."""
        self._caught_up_at = time.monotonic()
        """When the sink last had read everything Kafka held (system_sink_behind)."""
        self._failing: tuple[float, str, str] | None = None
        """Since when, into which table and why inserts fail on an unreachable store."""
        self._store_ok = False
        self._build_routes()

    # ---------------------------------------------------------------- setup
    def _build_routes(self) -> None:
        s = self.settings
        self._writers: dict[str, TableWriter] = {}
        self._buffers: dict[str, _Buffer] = {}
        """Table -> its buffer; then one quarantine buffer per topic
        (``quarantine@<topic>``), flushed after the tables."""
        self._quarantine_buffers: dict[str, _Buffer] = {}
        self._routes: dict[str, _Route] = {}
        self._buffers_by_topic: dict[str, list[_Buffer]] = {}

        def buffer(writer: TableWriter, topic: str) -> _Buffer:
            self._writers[writer.table] = writer
            buf = _Buffer(writer.table, topic)
            self._buffers[writer.table] = buf
            self._buffers_by_topic.setdefault(topic, []).append(buf)
            return buf

        max_past = s.ts_max_past_days * 86_400
        limits: dict[str, Any] = {}
        max_event_kb = getattr(s, "max_event_kb", None)  # the worker's size limit, if it has one
        if max_event_kb is not None:
            limits["max_event_bytes"] = max_event_kb * 1024
        for stream, writer in raw_writers().items():
            topic = s.topic(stream)
            decoder = EventDecoder.for_stream(stream, max_past, s.ts_max_future_seconds, **limits)
            self._routes[topic] = _RawRoute(decoder, buffer(writer, topic))
        agg_topic = s.topic("aggregates")
        agg_buffers = {
            name: buffer(aggregate_writer(spec), agg_topic) for name, spec in AGGREGATES.items()
        }
        late = buffer(TableWriter("late_events", LateEvent, {}), agg_topic)
        others: dict[bytes, tuple[type, _Buffer]] = {}
        duplicate = getattr(control, "DuplicateEvent", None)  # re-sent events the worker dropped
        if duplicate is not None:
            writer = TableWriter("duplicate_events", duplicate, {})
            others[b"duplicate_event"] = (duplicate, buffer(writer, agg_topic))
        self._routes[agg_topic] = _AggregatesRoute(agg_buffers, late, others)
        for name, writer in control_writers().items():
            topic = s.topic(name)
            self._routes[topic] = _RecordRoute(writer.record_type, buffer(writer, topic))
        self._writers[QUARANTINE_TABLE] = quarantine_writer()
        for topic, route in self._routes.items():
            quarantine = _Buffer(QUARANTINE_TABLE, topic)
            self._quarantine_buffers[topic] = quarantine
            self._buffers[f"{QUARANTINE_TABLE}@{topic}"] = quarantine
            self._buffers_by_topic[topic].append(quarantine)
            route.reject = self._rejecter(topic)
        for table in self._writers:
            self.stats.rows[table] = 0

    @property
    def topics(self) -> list[str]:
        return list(self._routes)

    @property
    def tables(self) -> list[str]:
        return list(self._writers)

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
            # A consumer does not create topics, and a subscription to a missing one
            # starts only after someone else creates it: create them first (the
            # admin client blocks, so off the event loop).
            await asyncio.to_thread(ensure_topics, s)
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
            self._store_ok = True  # bind() read every table's columns
            self._caught_up_at = time.monotonic()
            watch_stop = asyncio.Event()
            watching = asyncio.create_task(self._watch(watch_stop))
            try:
                await self._loop(consumer, stop)
            finally:  # one last look, and what it holds sent (a store lost for good too)
                watch_stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watching, 15)
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
        next_offsets = self._next
        progress_at = time.monotonic() + PROGRESS_SECONDS
        progress_rows = dict(self.stats.rows)
        progress_t = time.monotonic()
        while not stop.is_set():
            if self.heartbeat is not None:  # at most once a second
                self.heartbeat.beat(messages=self.stats.messages, lag=self.stats.lag,
                                    inserts=self.stats.batches)
            batches = await consumer.getmany(
                timeout_ms=self._poll_timeout_ms(), max_records=s.sink_batch_rows
            )
            if batches:
                now_ms = int(time.time() * 1000)
                for tp, messages in batches.items():
                    route = routes[tp.topic]
                    partition = tp.partition
                    for msg in messages:
                        try:
                            route.handle(msg.value, msg.headers, partition, msg.offset, now_ms)
                        except Exception as exc:  # whatever the bytes: quarantined, never fatal
                            raw = msg.value or b""
                            route.reject(partition, msg.offset, -1, raw,
                                         decode_reason(exc, raw), _describe(exc))
                    if tp not in next_offsets:
                        # Where reading started is the group's commit (or the
                        # reset position): nothing to commit until past it.
                        self._committed.setdefault(tp, messages[0].offset)
                    next_offsets[tp] = messages[-1].offset + 1
                    self.stats.messages += len(messages)
                self.stats.lag = self._lag(consumer)
            if not batches or self.stats.lag == 0:
                self._caught_up_at = time.monotonic()
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
        """Insert the buffers that are full or old enough (all if ``force``).
        The quarantine buffers go last, and whenever a table was flushed: the
        rows a table refused join them, and hold back the commit until then."""
        s = self.settings
        now = time.monotonic()
        flushed = False
        quarantines = set(map(id, self._quarantine_buffers.values()))
        for buf in self._buffers.values():
            if not buf.records:
                continue
            due = force or (flushed and id(buf) in quarantines)
            if not due and len(buf.records) < s.sink_batch_rows and (
                now - buf.since < s.sink_batch_seconds
            ):
                continue
            writer = self._writers[buf.table]
            for chunk in buf.take(s.sink_batch_rows):
                await self._write(writer, chunk)
                self.stats.batches += 1
            buf.done()
            flushed = True
        return flushed

    async def _write(self, writer: TableWriter, chunk: _Chunk) -> None:
        """Insert a chunk. Rows that do not fit their columns, and rows the
        store refuses, go to the quarantine; the rest is inserted. Raises
        :class:`SinkError` when the store stays unreachable."""
        started = time.perf_counter()
        good, table, bad, failure = await asyncio.to_thread(self._prepare_and_send, writer, chunk)
        if failure is None:
            self._inserted(time.perf_counter() - started)
            refused: list[tuple[int, Exception]] = []
        else:
            refused = await self._insert_range(writer, good, table, 0, len(good.records), failure)
        for row, reason, detail in bad:
            self._quarantine_row(writer, chunk, row, reason, detail)
        for row, exc in refused:
            kind = failure_kind(exc)
            reason = "refused_by_store" if kind == "refused" else conversion_reason(exc)
            self._quarantine_row(writer, good, row, reason, _describe(exc))
        self.stats.rows[writer.table] += len(good.records) - len(refused)

    def _prepare_and_send(
        self, writer: TableWriter, chunk: _Chunk
    ) -> tuple[_Chunk, pa.Table, list[tuple[int, str, str]], Exception | None]:
        """In a worker thread: convert (finding the rows that do not fit) and
        insert the rest once; the failure, if any, for :meth:`_insert_range`."""
        try:
            good, table, bad = writer.prepare(chunk)
        except Exception:  # a bug of ours must not stop the sink either: row by row
            log.exception("preparing %d rows for %s failed; going row by row",
                          len(chunk.records), writer.table)
            good, table, bad = writer.prepare_row_by_row(chunk)
        if not good.records:
            return good, table, bad, None
        try:
            writer.send(self.client, good, table, self.insert_format)
        except Exception as exc:
            return good, table, bad, exc
        return good, table, bad, None

    async def _insert_range(
        self, writer: TableWriter, chunk: _Chunk, table: pa.Table, lo: int, hi: int,
        failure: Exception | None = None,
    ) -> list[tuple[int, Exception]]:
        """Insert rows ``lo:hi`` of a prepared chunk, halving a range the store
        refuses until the refused rows stand alone; returns them with the error."""
        failure = await self._send(writer, chunk, table, lo, hi, failure)
        if failure is None:
            return []
        if hi - lo == 1:
            return [(lo, failure)]
        if lo == 0 and hi == len(chunk.records):
            self.stats.refused_inserts += 1
            log.warning("insert into %s refused (%s); looking for the rows at fault",
                        writer.table, _clip(str(failure), 300))
        mid = (lo + hi) // 2
        first = await self._insert_range(writer, chunk, table, lo, mid)
        return first + await self._insert_range(writer, chunk, table, mid, hi)

    async def _send(
        self, writer: TableWriter, chunk: _Chunk, table: pa.Table, lo: int, hi: int,
        failure: Exception | None = None,
    ) -> Exception | None:
        """One insert of rows ``lo:hi`` (``failure``: the first try's error,
        already made). Returns None once they are in, or the error when their
        data is at fault. An unreachable store is waited for with back-off;
        after the last retry this raises :class:`SinkError` and the sink
        commits nothing more."""
        pauses = iter((*INSERT_RETRIES, None))
        attempts = 1 if failure is not None else 0
        while True:
            if failure is None:
                attempts += 1
                started = time.perf_counter()
                try:
                    await asyncio.to_thread(
                        writer.send, self.client, chunk.slice(lo, hi),
                        table.slice(lo, hi - lo), self.insert_format,
                    )
                except Exception as exc:
                    failure = exc
                else:
                    self._inserted(time.perf_counter() - started)
                    return None
            kind = failure_kind(failure)
            if kind == "data" or (kind == "refused" and await self._store_answers()):
                return failure
            if self._failing is None:
                self._failing = (time.monotonic(), writer.table, _clip(_describe(failure), 200))
            pause = next(pauses)
            if pause is None:
                self._broken = True
                raise SinkError(
                    f"insert into {writer.table} failed {attempts} times: {failure}"
                ) from failure
            log.warning(
                "insert into %s failed (%s); retrying in %.1fs", writer.table, failure, pause
            )
            await asyncio.sleep(pause)
            failure = None

    def _inserted(self, seconds: float) -> None:
        self.stats.insert_seconds += seconds
        self._failing = None
        self._store_ok = True
        if self.on_insert is not None:
            self.on_insert(seconds)

    # ------------------------------------------------- what the watch reads
    def behind(self) -> tuple[float | None, int | None]:
        """(seconds since the sink last read everything Kafka held, messages behind)."""
        if self._consumer is None:
            return None, None
        return time.monotonic() - self._caught_up_at, self.stats.lag

    def store_failing(self) -> tuple[float | None, str, str]:
        if self._failing is None:
            return None, "", ""
        since, table, error = self._failing
        return time.monotonic() - since, table, error

    def store_ok(self) -> bool:
        return self._store_ok

    async def _watch(self, stop: asyncio.Event) -> None:
        """Once a second: the sink's system alerts (``streams/watch.py``), sent
        by its own producer; the inserts may be blocked, this loop is not."""
        from ctower.logs import MaskingFilter
        from ctower.streams.watch import KafkaAlertPublisher, SinkWatch, SystemAlerts

        publisher = KafkaAlertPublisher(self.settings)
        mask = MaskingFilter(self.settings.secret_values()).mask

        class _Masked:  # an error text may quote the store's URL: masked in the alert
            def __init__(self, sink: ClickHouseSink) -> None:
                self.sink = sink

            def behind(self) -> tuple[float | None, int | None]:
                return self.sink.behind()

            def store_failing(self) -> tuple[float | None, str, str]:
                failing, table, error = self.sink.store_failing()
                return failing, table, mask(error)

            def store_ok(self) -> bool:
                return self.sink.store_ok()

        self.system_alerts = SystemAlerts(self.settings, "sink", self.group_id, publisher)
        watch = SinkWatch(self.settings, self.system_alerts, _Masked(self))
        try:
            while not stop.is_set():
                try:
                    watch.check()
                    await publisher.drain()
                except Exception:  # the watch must never stop the sink
                    log.exception("sink watch failed this second")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
            watch.check()
            await publisher.drain()
        finally:
            await publisher.close()

    async def _store_answers(self) -> bool:
        """Whether the store runs queries now (so a refused insert is the data's fault)."""
        try:
            await asyncio.to_thread(self.client.command, "SELECT 1")
        except Exception:
            return False
        return True

    # ------------------------------------------------------------ quarantine
    def _rejecter(self, topic: str) -> Reject:
        def reject(partition: int, offset: int, index: int, raw: bytes, reason: str,
                   detail: str) -> None:
            self._quarantine(topic, partition, offset, index, raw, reason, detail, "")

        return reject

    def _quarantine_row(self, writer: TableWriter, chunk: _Chunk, row: int, reason: str,
                        detail: str) -> None:
        """Quarantine row ``row`` of a chunk that was bound for ``writer``'s table."""
        partition, offset = int(chunk.partitions[row]), int(chunk.offsets[row])
        record = chunk.records[row]
        if writer.table == QUARANTINE_TABLE:
            # Cannot happen with the rows we build; never loop on it.
            self.stats.quarantine_lost += 1
            log.error("the store refused a quarantine row (%s: %s) of %s[%d]@%d",
                      reason, detail, getattr(record, "source_topic", "?"), partition, offset)
            return
        self._quarantine(chunk.topic, partition, offset, chunk.index(row), record_bytes(record),
                         reason, detail, writer.table)

    def _quarantine(self, topic: str, partition: int, offset: int, index: int, raw: bytes,
                    reason: str, detail: str, table: str) -> None:
        raw = bytes(raw)
        row = QuarantineRow(
            source_topic=topic, partition=partition, offset=offset, index=index,
            target_table=table, reason=reason, detail=_clip(detail),
            raw=raw[:QUARANTINE_RAW_BYTES],
            raw_length=len(raw), raw_sha256=hashlib.sha256(raw).hexdigest(),
            received_at=int(time.time() * 1000),
        )
        self._quarantine_buffers[topic].add([row], partition, offset)
        stats = self.stats
        stats.quarantined[reason] = stats.quarantined.get(reason, 0) + 1
        stats.skipped[topic] = stats.skipped.get(topic, 0) + 1
        self._logged_quarantines += 1
        if self._logged_quarantines <= QUARANTINE_LOG_LINES:
            log.warning("quarantined %s[%d]@%d index %d%s: %s (%s)", topic, partition, offset,
                        index, f" for {table}" if table else "", reason, _clip(detail, 200))

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
            "sink: %s rows/s%s; lag %s; pending %d; quarantined %s",
            f"{total:,.0f}", f" ({detail})" if detail else "", self.stats.lag,
            self.pending_rows, self.quarantine_summary(),
        )
        self._logged_quarantines = 0

    def quarantine_summary(self) -> str:
        """``3 (not_json 2, too_deep 1)``: quarantined rows so far, by reason."""
        counts = self.stats.quarantined
        by_reason = ", ".join(f"{r} {n}" for r, n in sorted(counts.items()))
        return f"{sum(counts.values())}" + (f" ({by_reason})" if by_reason else "")


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
    front = metrics = None
    try:
        applied = apply_migrations(client)
        if applied:
            log.info("schema migrations applied: %s", ", ".join(applied))
        if settings.store_is_embedded:
            front = _start_http_front(settings, client)
        sink = ClickHouseSink(settings, client)
        sink.heartbeat = Heartbeat(settings, "sink")
        if settings.sink_metrics_port:
            from ctower.metrics import serve, sink_registry

            metrics = serve(sink_registry(sink), settings.sink_metrics_port,
                            settings.metrics_bind)
        log.info(
            "sink consuming %d topics into %s (group %s)",
            len(sink.topics), settings.dsn if settings.store_is_embedded else "server",
            sink.group_id,
        )
        try:
            await sink.run(stop)
        finally:
            sink.heartbeat.clear()
            if metrics is not None:
                metrics.shutdown()
        log.info(
            "sink stopped: %d rows in %d inserts, %d commits; quarantined %s",
            sum(sink.stats.rows.values()), sink.stats.batches, sink.stats.commits,
            sink.quarantine_summary(),
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
