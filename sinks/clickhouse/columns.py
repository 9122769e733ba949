"""Which column of a table comes from where, and the rows waiting for it.

The sink reads each table's columns at start and fills each from the record
field of the same name or from a named extra (``event_key``, the Kafka
position, a closed window's dims and counters...): a column nothing fills
stops start-up, so the DDL and the sink cannot drift apart silently. Rows
wait per table in a :class:`Buffer`, which remembers the Kafka messages they
came from as runs so that offsets are committed only once the rows are in.
"""


from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from ctower.schemas.actions import ACTION_RANK, ActionOrder
from ctower.schemas.control import (
    Alert,
    AlertAck,
    AlertDelivery,
    ClosedWindow,
    CouponDecision,
    CouponPolicy,
    CouponSignal,
    DeadLetter,
    PickupLevel,
    StockLevel,
)
from ctower.schemas.events import EVENT_TYPES
from ctower.schemas.tasks import ShipmentTask
from ctower.settings import STREAMS
from ctower.sinks.clickhouse import SinkError
from ctower.sinks.clickhouse.quarantine import (
    QUARANTINE_TABLE,
    QuarantineRow,
    clip,
    conversion_reason,
)
from ctower.tables.aggregates import AggregateSpec

InsertFormat = Literal["arrow", "native"]
INSERT_FORMATS: tuple[InsertFormat, ...] = ("arrow", "native")
"""How a batch reaches ClickHouse. ``arrow`` (the default): a pyarrow Table
through ``client.insert_arrow``; the engine parses Arrow itself. ``native``:
Python column lists through ``client.insert(column_oriented=True)``, which
clickhouse-connect serialises to ClickHouse's Native format. Measured on chdb
here (2 shared cores, scan events, ``bench/sink.py``,
columns built and inserted): at 10k-row batches the two are level within the
noise (arrow 160k-180k rows/s, native 170k-200k); from 25k rows arrow leads
(210k against 185k; 280k against 205k at 50k), so arrow it is. Either way the
sink checks the rows by building the Arrow table first (:meth:`TableWriter.prepare`),
so ``native`` now pays that conversion too."""

DATETIME64_RANGE_S = (-2_208_988_800, 10_413_792_000)
"""[1900-01-01, 2300-01-01) in epoch seconds: what DateTime64 holds. The
store takes a value outside without complaint and stores garbage that
clickhouse-connect cannot read back (the dashboard fails), so the sink
quarantines such rows itself."""

# --------------------------------------------------------------------------
# Buffers
# --------------------------------------------------------------------------


@dataclass(slots=True)
class Chunk:
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

    def select(self, rows: Sequence[int]) -> Chunk:
        """The chunk of these rows only."""
        picked = np.asarray(rows, dtype=np.int64)
        return Chunk(
            [self.records[i] for i in rows], self.partitions[picked], self.offsets[picked],
            self.topic, None if self.indexes is None else self.indexes[picked],
        )

    def slice(self, lo: int, hi: int) -> Chunk:
        if lo == 0 and hi == len(self.records):
            return self
        return Chunk(
            self.records[lo:hi], self.partitions[lo:hi], self.offsets[lo:hi], self.topic,
            None if self.indexes is None else self.indexes[lo:hi],
        )


Getter = Callable[[Chunk], Sequence[Any] | np.ndarray]


@dataclass(slots=True)
class Buffer:
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

    def take(self, chunk_rows: int) -> list[Chunk]:
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
            Chunk(
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


def _event_key(ch: Chunk) -> list[str]:
    return [ev.dedup_key() for ev in ch.records]


def _source_topic(ch: Chunk) -> list[str]:
    return [ch.topic] * len(ch.records)


def _kafka_partition(ch: Chunk) -> np.ndarray:
    return ch.partitions


def _kafka_offset(ch: Chunk) -> np.ndarray:
    return ch.offsets


def _line_field(name: str) -> Getter:
    get = attrgetter(name)
    return lambda ch: [list(map(get, ev.lines)) for ev in ch.records]


def _evidence(ch: Chunk) -> list[bytes]:
    return [_json.encode(rec.evidence) for rec in ch.records]


def _alert_version(ch: Chunk) -> list[int]:
    """Orders the updates of one alert: the later time wins, and a resolution
    wins over an opening of the same millisecond."""
    return [
        max(a.opened_at, a.resolved_at or 0) * 2 + (a.status == "resolved") for a in ch.records
    ]


def _order_version(ch: Chunk) -> list[int]:
    """The state's rank, then its time: a later state of an order wins."""
    return [ACTION_RANK[o.status] * 10**13 + o.ts for o in ch.records]


def _task_version(ch: Chunk) -> list[int]:
    """A closed task wins over its opening, whatever the clocks say."""
    return [(t.status == "closed") * 10**13 + t.ts for t in ch.records]


def _policy_store(ch: Chunk) -> list[str]:
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

    def column_data(self, chunk: Chunk) -> list[Sequence[Any] | np.ndarray]:
        return [get(chunk) for get in self.getters]

    def arrow_table(self, chunk: Chunk) -> pa.Table:
        assert self.arrow_schema is not None
        arrays = [
            pa.array(data, type=f.type)
            for data, f in zip(self.column_data(chunk), self.arrow_schema, strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema)

    def insert(self, client: Client, chunk: Chunk, fmt: InsertFormat) -> None:
        """Convert and insert, unchecked (the benches' path; the sink uses
        :meth:`prepare` and :meth:`send`)."""
        self.send(client, chunk, self.arrow_table(chunk) if fmt == "arrow" else None, fmt)

    def send(self, client: Client, chunk: Chunk, table: pa.Table | None,
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

    def prepare(self, chunk: Chunk) -> tuple[Chunk, pa.Table, list[tuple[int, str, str]]]:
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
        self, chunk: Chunk
    ) -> tuple[Chunk, pa.Table, list[tuple[int, str, str]]]:
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
        self, chunk: Chunk
    ) -> tuple[Chunk, pa.Table, list[tuple[int, str, str]]]:
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
    return conversion_reason(exc), clip(f"{column}: {type(exc).__name__}: {exc}")


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


def _raw_length(ch: Chunk) -> list[int]:
    """Dead letters written before ``raw`` was cut carry no length: the raw is whole."""
    return [
        n if (n := getattr(d, "raw_length", -1)) >= 0 else len(d.raw) for d in ch.records
    ]


def _raw_sha256(ch: Chunk) -> list[str]:
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


def quarantine_writer() -> TableWriter:
    return TableWriter(QUARANTINE_TABLE, QuarantineRow, {})
