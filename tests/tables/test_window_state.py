"""Exactness of the windowed state under crashes, replays and late events.

Kafka and Faust are replaced here by one ordered log (what a single broker
would hold) so that every crash point can be tried: the log is cut at each
position, the worker restarts from each earlier commit, and the closed
windows must add up to what a run without a crash gives. The real-broker
version of this (SIGKILL of a worker process) is in tests/streams.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ctower.schemas.control import ClosedWindow, LateEvent
from ctower.schemas.wire import EventDecoder
from ctower.streams.processing import RawMessage, StreamProcessor
from ctower.tables.aggregates import STORE_MINUTE
from ctower.tables.window_state import WindowState

NOW = time.time()
BASE_TS = int(NOW * 1000) - 3_600_000
BASE_TS -= BASE_TS % 60_000


@dataclass
class Broker:
    """One ordered log of everything the worker sends."""

    log: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class Table:
    broker: Broker
    data: dict[bytes, bytes] = field(default_factory=dict)

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> None:
        self.broker.log.append(("changelog", (key, value)))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Worker:
    broker: Broker
    table: Table
    clock: Clock
    processor: StreamProcessor
    pending_acks: list[Any] = field(default_factory=list)

    def process(self, messages: list[RawMessage]) -> None:
        self.processor.process(messages)

    def flush_producer(self) -> None:
        """What Faust does before every commit: every send acknowledged."""
        while self.pending_acks:
            self.pending_acks.pop(0)()


def start_worker(broker: Broker, durable: int | None = None, grace_ms: int = 10_000) -> Worker:
    """A worker whose table is recovered from the first ``durable`` log entries."""
    table = Table(broker)
    if durable is not None:
        for kind, payload in broker.log[:durable]:
            if kind != "changelog":
                continue
            key, value = payload
            if value is None:
                table.data.pop(key, None)
            else:
                table.data[key] = value
        del broker.log[durable:]
    clock = Clock()
    worker: Worker

    def publish_closed(records: list[ClosedWindow], on_acked: Any) -> None:
        for record in records:
            broker.log.append(("closed", record))
        worker.pending_acks.append(on_acked)

    def publish_late(record: LateEvent) -> None:
        broker.log.append(("late", record))

    state = WindowState(
        table=table,
        source_topic="ct.scan",
        specs=[STORE_MINUTE],
        grace_ms=grace_ms,
        idle_close_ms=5_000,
        publish_closed=publish_closed,
        publish_late=publish_late,
        clock=clock,
    )
    processor = StreamProcessor(
        stream="scan",
        topic="ct.scan",
        decoder=EventDecoder.for_stream("scan", 400 * 86400, 3600),
        state=state,
        publish_dead_letter=lambda record: broker.log.append(("dead", record)),
    )
    worker = Worker(broker, table, clock, processor)
    return worker


def scan_messages(count: int, step_ms: int = 7_000) -> list[RawMessage]:
    """Messages of 1-3 scan events, event time rising by ``step_ms`` a message."""
    encoder = msgspec.json.Encoder()
    messages = []
    for offset in range(count):
        events = [
            {
                "scan_id": f"s{offset}-{i}",
                "ts": BASE_TS + offset * step_ms + i,
                "store_id": f"S{(offset + i) % 3}",
                "sku": "K1",
                "action": "add_to_cart" if (offset + i) % 4 == 0 else "view",
            }
            for i in range(1 + offset % 3)
        ]
        value = encoder.encode(events if len(events) > 1 else events[0])
        messages.append(RawMessage(0, offset, value))
    return messages


def run(worker: Worker, messages: list[RawMessage], batch: int) -> list[int]:
    """Process in batches; return the log length after each producer flush (commit)."""
    commits = []
    for start in range(0, len(messages), batch):
        worker.process(messages[start : start + batch])
        worker.flush_producer()
        commits.append(len(worker.broker.log))
    return commits


def finish(worker: Worker) -> None:
    worker.processor.state.adopt([0])  # as the timer does once recovery is complete
    worker.clock.now += 3600
    worker.processor.state.tick()
    worker.flush_producer()


def closed_windows(broker: Broker) -> dict[str, list[int]]:
    """What the store keeps: one row per closed-window key, the last one sent."""
    rows: dict[str, list[int]] = {}
    for kind, record in broker.log:
        if kind == "closed":
            rows[record.dedup_key()] = record.values
    return rows


def test_closed_windows_count_every_event_once() -> None:
    broker = Broker()
    worker = start_worker(broker)
    messages = scan_messages(60)
    run(worker, messages, batch=4)
    finish(worker)
    rows = closed_windows(broker)
    totals = [sum(col) for col in zip(*rows.values(), strict=True)]
    events = sum(1 + offset % 3 for offset in range(60))
    assert totals[STORE_MINUTE.index("scans")] == events
    carts = sum(
        1 for offset in range(60) for i in range(1 + offset % 3) if (offset + i) % 4 == 0
    )
    assert totals[STORE_MINUTE.index("add_to_cart")] == carts
    # 60 messages 7 s apart span 7 minutes, 3 stores: every (store, minute) closed once
    closed = [record for kind, record in broker.log if kind == "closed"]
    assert len(closed) == len(rows)
    assert worker.processor.state.late_events == 0


def test_every_crash_point_gives_the_same_windows() -> None:
    messages = scan_messages(24, step_ms=9_000)
    batch = 3
    reference_broker = Broker()
    reference = start_worker(reference_broker)
    run(reference, messages, batch)
    finish(reference)
    expected = closed_windows(reference_broker)
    assert expected

    # Crash after any batch, with the log cut anywhere after the last commit,
    # and restart from any earlier commit: the store ends up the same.
    tried = 0
    for crash_batch in range(1, len(messages) // batch + 1):
        probe = Broker()
        commits = run(start_worker(probe), messages[: crash_batch * batch], batch)
        full_log = list(probe.log)
        for commit_index, cut in itertools.product(range(len(commits)), range(len(full_log) + 1)):
            if cut < commits[commit_index]:
                continue  # a commit implies everything before it was durable
            broker = Broker(log=list(full_log))
            restarted = start_worker(broker, durable=cut)
            resume_from = (commit_index + 1) * batch
            run(restarted, messages[resume_from:], batch)
            finish(restarted)
            assert closed_windows(broker) == expected, (crash_batch, commit_index, cut)
            tried += 1
    assert tried > 100


def test_restart_from_scratch_replays_without_double_counting() -> None:
    """All of the log durable but no commit at all: every message is replayed."""
    messages = scan_messages(30)
    broker = Broker()
    worker = start_worker(broker)
    run(worker, messages, batch=5)
    restarted = start_worker(broker, durable=len(broker.log))
    run(restarted, messages, batch=5)
    finish(restarted)
    reference = Broker()
    ref_worker = start_worker(reference)
    run(ref_worker, messages, batch=5)
    finish(ref_worker)
    assert closed_windows(broker) == closed_windows(reference)
    assert restarted.processor.state.replayed_skips > 0


def test_late_event_is_reported_once_and_not_counted() -> None:
    broker = Broker()
    worker = start_worker(broker, grace_ms=5_000)
    messages = scan_messages(20, step_ms=10_000)  # 200 s of event time
    run(worker, messages, batch=2)
    late_event = msgspec.json.encode(
        {"scan_id": "late", "ts": BASE_TS + 1_000, "store_id": "S0", "sku": "K1", "action": "view"}
    )
    late_message = RawMessage(0, 20, late_event)
    worker.process([late_message])
    worker.flush_producer()
    # replaying the same message (a crash before commit) reports nothing new to the store
    restarted = start_worker(broker, durable=len(broker.log))
    restarted.process([late_message])
    finish(restarted)
    late = [record for kind, record in broker.log if kind == "late"]
    assert {record.dedup_key() for record in late} == {"ct.scan:0:20:0:store_minute:S0"}
    assert late[0].window_start == BASE_TS and late[0].dims == ["S0"]
    reference = Broker()
    ref_worker = start_worker(reference, grace_ms=5_000)
    run(ref_worker, messages, batch=2)
    finish(ref_worker)
    assert closed_windows(broker) == closed_windows(reference)
    # the replay may report it again, under the same key, which the store keeps once
    assert worker.processor.state.late_events == 1
    assert len(late) == 1 + restarted.processor.state.late_events


def test_idle_partition_closes_by_wall_clock() -> None:
    broker = Broker()
    worker = start_worker(broker)
    run(worker, scan_messages(3), batch=3)
    assert closed_windows(broker) == {}
    worker.clock.now += 1  # not idle long enough
    worker.processor.state.tick()
    assert closed_windows(broker) == {}
    worker.clock.now += 10
    worker.processor.state.tick()
    worker.flush_producer()
    assert len(closed_windows(broker)) == 3


def markers_in(entries: list[tuple[str, Any]]) -> list[bytes]:
    """Changelog keys written as closed-window markers: [partition, aggregate, start, -1]."""
    keys = []
    for kind, payload in entries:
        if kind != "changelog" or payload[1] is None:
            continue
        key = msgspec.msgpack.decode(payload[0])
        if len(key) == 4 and key[3] == -1:
            keys.append(payload[0])
    return keys


def test_marker_waits_for_the_closed_record_ack() -> None:
    broker = Broker()
    worker = start_worker(broker)
    run(worker, scan_messages(3), batch=3)
    worker.clock.now += 3600
    worker.processor.state.tick()
    assert len(closed_windows(broker)) == 3  # three stores
    assert markers_in(broker.log) == []  # records sent, not yet acknowledged
    worker.flush_producer()
    windows = {record.window_start for kind, record in broker.log if kind == "closed"}
    assert len(markers_in(broker.log)) == len(windows)  # one marker per window, not per key
    # and the window's shards are deleted from the changelog once its marker is down
    assert worker.table.data.keys() == {
        key for key in worker.table.data
        if len(msgspec.msgpack.decode(key)) == 2 or msgspec.msgpack.decode(key)[3] == -1
    }


def test_shards_are_stable_across_processes() -> None:
    """A key must land in the same changelog record after a restart."""
    import subprocess
    import sys

    code = "from ctower.tables.window_state import shard_of; print(shard_of(('S001', 'K42')))"
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert len(runs) == 1 and runs != {""}


def test_a_partition_that_saw_nothing_does_not_close_by_wall_clock() -> None:
    """A worker started before a replay of past events must not call them late."""
    broker = Broker()
    worker = start_worker(broker)
    worker.processor.state.adopt([0])
    worker.clock.now += 3600
    worker.processor.state.tick()
    run(worker, scan_messages(12), batch=3)
    finish(worker)
    assert worker.processor.state.late_events == 0
    scans = sum(row[STORE_MINUTE.index("scans")] for row in closed_windows(broker).values())
    assert scans == sum(1 + offset % 3 for offset in range(12))


def test_a_partition_with_a_backlog_is_not_idle() -> None:
    """A paused consumer (a rebalance) with messages waiting must not close by wall clock."""
    broker = Broker()
    worker = start_worker(broker)
    run(worker, scan_messages(3), batch=3)
    worker.clock.now += 3600
    worker.processor.state.tick(caught_up=lambda partition, last: last >= 10)
    assert closed_windows(broker) == {}  # offsets 3..10 still waiting in Kafka
    worker.processor.state.tick(caught_up=lambda partition, last: last >= 2)
    worker.flush_producer()
    assert len(closed_windows(broker)) == 3
