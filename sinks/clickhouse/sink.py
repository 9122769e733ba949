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
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from clickhouse_connect.driver.client import Client

from ctower.health import Heartbeat
from ctower.schemas import control
from ctower.schemas.control import (
    LateEvent,
)
from ctower.schemas.migrations import apply_migrations
from ctower.schemas.wire import EventDecoder
from ctower.settings import Settings
from ctower.sinks.clickhouse import SinkError
from ctower.sinks.clickhouse.columns import (
    Buffer,
    Chunk,
    InsertFormat,
    TableWriter,
    aggregate_writer,
    control_writers,
    quarantine_writer,
    raw_writers,
)
from ctower.sinks.clickhouse.quarantine import (
    QUARANTINE_LOG_LINES,
    QUARANTINE_RAW_BYTES,
    QUARANTINE_TABLE,
    QuarantineRow,
    clip,
    conversion_reason,
    decode_reason,
    describe,
    failure_kind,
    record_bytes,
)
from ctower.sinks.clickhouse.routes import AggregatesRoute, RawRoute, RecordRoute, Reject, Route
from ctower.store import open_store
from ctower.tables.aggregates import AGGREGATES
from ctower.topics import ensure_topics

log = logging.getLogger(__name__)

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
        self._buffers: dict[str, Buffer] = {}
        """Table -> its buffer; then one quarantine buffer per topic
        (``quarantine@<topic>``), flushed after the tables."""
        self._quarantine_buffers: dict[str, Buffer] = {}
        self._routes: dict[str, Route] = {}
        self._buffers_by_topic: dict[str, list[Buffer]] = {}

        def buffer(writer: TableWriter, topic: str) -> Buffer:
            self._writers[writer.table] = writer
            buf = Buffer(writer.table, topic)
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
            self._routes[topic] = RawRoute(decoder, buffer(writer, topic))
        agg_topic = s.topic("aggregates")
        agg_buffers = {
            name: buffer(aggregate_writer(spec), agg_topic) for name, spec in AGGREGATES.items()
        }
        late = buffer(TableWriter("late_events", LateEvent, {}), agg_topic)
        others: dict[bytes, tuple[type, Buffer]] = {}
        duplicate = getattr(control, "DuplicateEvent", None)  # re-sent events the worker dropped
        if duplicate is not None:
            writer = TableWriter("duplicate_events", duplicate, {})
            others[b"duplicate_event"] = (duplicate, buffer(writer, agg_topic))
        self._routes[agg_topic] = AggregatesRoute(agg_buffers, late, others)
        for name, writer in control_writers().items():
            topic = s.topic(name)
            self._routes[topic] = RecordRoute(writer.record_type, buffer(writer, topic))
        self._writers[QUARANTINE_TABLE] = quarantine_writer()
        for topic, route in self._routes.items():
            quarantine = Buffer(QUARANTINE_TABLE, topic)
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
                                         decode_reason(exc, raw), describe(exc))
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

    async def _write(self, writer: TableWriter, chunk: Chunk) -> None:
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
            self._quarantine_row(writer, good, row, reason, describe(exc))
        self.stats.rows[writer.table] += len(good.records) - len(refused)

    def _prepare_and_send(
        self, writer: TableWriter, chunk: Chunk
    ) -> tuple[Chunk, pa.Table, list[tuple[int, str, str]], Exception | None]:
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
        self, writer: TableWriter, chunk: Chunk, table: pa.Table, lo: int, hi: int,
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
                        writer.table, clip(str(failure), 300))
        mid = (lo + hi) // 2
        first = await self._insert_range(writer, chunk, table, lo, mid)
        return first + await self._insert_range(writer, chunk, table, mid, hi)

    async def _send(
        self, writer: TableWriter, chunk: Chunk, table: pa.Table, lo: int, hi: int,
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
                self._failing = (time.monotonic(), writer.table, clip(describe(failure), 200))
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
        """Once a second: the sink's system alerts (``sinks/clickhouse/watch.py``), sent
        by its own producer; the inserts may be blocked, this loop is not."""
        from ctower.logs import MaskingFilter
        from ctower.sinks.clickhouse.watch import SinkWatch
        from ctower.system_alerts import KafkaAlertPublisher, SystemAlerts

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

    def _quarantine_row(self, writer: TableWriter, chunk: Chunk, row: int, reason: str,
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
            target_table=table, reason=reason, detail=clip(detail),
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
                        index, f" for {table}" if table else "", reason, clip(detail, 200))

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
        from ctower.devstack.store_front.server import StoreHttpServer
    except ImportError:
        log.info("no store HTTP front available (ctower.devstack.store_front.server missing)")
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
