"""SeenEvents: a re-sent event counts once, exactly across crashes, within a
horizon of event time and a bound on memory."""

from __future__ import annotations

import sys
from typing import Any

from ctower.schemas.events import Scan
from ctower.tables.dedup import BUCKET_MS, SEEN, SeenBudget, SeenEvents, is_seen_key
from ctower.tables.window_state import WindowState

T0 = 1_795_000_000_000 - 1_795_000_000_000 % BUCKET_MS


def scan(scan_id: str, ts: int = T0, **extra: Any) -> Scan:
    return Scan(scan_id=scan_id, ts=ts, store_id="S1", sku="K1", action="view", **extra)


def ids(events: Any) -> list[str]:
    return [ev.scan_id for ev in events]


def test_a_resent_event_is_dropped_and_says_where_the_counted_copy_was(memory_table) -> None:
    seen = SeenEvents(memory_table, horizon_ms=600_000, budget=SeenBudget(10_000))
    kept, resent = seen.filter(0, 10, [scan("a"), scan("b")])
    assert ids(kept) == ["a", "b"] and resent == []
    kept, resent = seen.filter(0, 11, [scan("c"), scan("b"), scan("c")])
    assert ids(kept) == ["c"]
    assert [(r.index, r.event.scan_id, r.first_offset, r.first_index) for r in resent] == [
        (1, "b", 10, 1), (2, "c", 11, 0),
    ]
    assert seen.stats()["duplicates"] == 2


def test_identity_is_the_event_id_when_the_producer_gives_one(memory_table) -> None:
    seen = SeenEvents(memory_table, horizon_ms=600_000, budget=SeenBudget(10_000))
    seen.filter(0, 1, [scan("a", event_id="e-1")])
    kept, resent = seen.filter(0, 2, [scan("b", event_id="e-1"), scan("a")])
    assert ids(kept) == ["a"] and len(resent) == 1


def test_a_replay_after_a_crash_takes_the_same_decisions(memory_table) -> None:
    """Whether or not the identities were persisted before the crash: the first
    copy finds its own position and passes, the later copy is dropped again."""
    first = SeenEvents(memory_table, horizon_ms=600_000, budget=SeenBudget(10_000))
    decisions = []
    messages = [(5, [scan("a"), scan("b")]), (6, [scan("a")]), (7, [scan("c"), scan("b")])]
    for offset, events in messages:
        kept, _ = first.filter(0, offset, events)
        decisions.append(ids(kept))
    first.flush(0)
    assert any(is_seen_key(key) for key in memory_table.data)

    persisted = SeenEvents(memory_table, horizon_ms=600_000, budget=SeenBudget(10_000))
    replayed = [ids(persisted.filter(0, offset, events)[0]) for offset, events in messages]
    assert replayed == decisions == [["a", "b"], [], ["c"]]

    class Empty:
        def __init__(self) -> None:
            self.data: dict[bytes, bytes] = {}

        def send_changelog(self, *args: Any) -> None:
            pass

    lost = SeenEvents(Empty(), horizon_ms=600_000, budget=SeenBudget(10_000))
    assert [ids(lost.filter(0, o, e)[0]) for o, e in messages] == decisions


def test_partitions_are_apart_and_move_with_a_rebalance(memory_table) -> None:
    seen = SeenEvents(memory_table, horizon_ms=600_000, budget=SeenBudget(10_000))
    seen.filter(0, 1, [scan("a")])
    assert ids(seen.filter(1, 1, [scan("a")])[0]) == ["a"]  # another partition: its own
    seen.flush(0)
    seen.flush(1)
    seen.drop(1)
    assert seen.size == 1
    taker = SeenEvents(memory_table, horizon_ms=600_000, budget=SeenBudget(10_000))
    assert ids(taker.filter(1, 2, [scan("a")])[0]) == []  # the new owner knows it


def test_identities_past_the_horizon_are_forgotten_with_their_records(memory_table) -> None:
    seen = SeenEvents(memory_table, horizon_ms=5 * BUCKET_MS, budget=SeenBudget(10_000))
    seen.filter(0, 1, [scan("old", ts=T0)])
    seen.flush(0)
    records = [k for k, v in memory_table.data.items() if is_seen_key(k)]
    assert len(records) == 1
    seen.filter(0, 2, [scan("new", ts=T0 + 5 * BUCKET_MS)])
    seen.flush(0)
    assert seen.size == 2  # the old minute ended exactly at the horizon's edge: kept
    seen.filter(0, 3, [scan("newer", ts=T0 + 6 * BUCKET_MS)])
    seen.flush(0)
    assert seen.size == 2
    assert records[0] not in memory_table.data  # tombstoned in the changelog
    assert (0, records[0], None) in memory_table.changelog
    assert ids(seen.filter(0, 4, [scan("old", ts=T0)])[0]) == ["old"]  # beyond: counted again


def test_memory_is_bounded_by_forgetting_the_oldest_minutes_first(memory_table) -> None:
    budget = SeenBudget(1000)
    seen = SeenEvents(memory_table, horizon_ms=3_600_000, budget=budget)
    other = SeenEvents(memory_table, horizon_ms=3_600_000, budget=budget)  # another stream
    other.filter(3, 0, [scan(f"o-{i}", ts=T0 - BUCKET_MS) for i in range(100)])
    for minute in range(5):
        events = [scan(f"{minute}-{i}", ts=T0 + minute * BUCKET_MS) for i in range(400)]
        seen.filter(minute % 2, minute, events)
        seen.flush(minute % 2)
    stats = seen.stats()
    assert budget.size <= 1000
    assert other.size == 0 and other.forgotten_early == 100  # the oldest minute was its
    assert stats["forgotten_early"] == 5 * 400 - stats["identities"]
    assert ids(seen.filter(0, 9, [scan("4-1", ts=T0 + 4 * BUCKET_MS)])[0]) == []  # newest kept
    assert ids(seen.filter(0, 9, [scan("0-1", ts=T0)])[0]) == ["0-1"]  # oldest forgotten


def test_a_partition_that_forgot_most_of_its_identities_gives_back_its_table(
    memory_table,
) -> None:
    seen = SeenEvents(memory_table, horizon_ms=5 * BUCKET_MS, budget=SeenBudget(1_000_000))
    seen.filter(0, 1, [scan(f"old-{i}", ts=T0) for i in range(50_000)])
    seen.flush(0)
    seen.filter(0, 2, [scan(f"new-{i}", ts=T0 + 6 * BUCKET_MS) for i in range(1_000)])
    full = sys.getsizeof(seen._parts[0].first)
    seen.flush(0)  # the old minute is past the horizon now
    assert seen.size == 1_000
    assert sys.getsizeof(seen._parts[0].first) * 10 < full
    kept, resent = seen.filter(0, 3, [scan("new-7", ts=T0 + 6 * BUCKET_MS), scan("old-7", ts=T0)])
    assert ids(kept) == ["old-7"]  # forgotten: counts again
    assert [(r.event.scan_id, r.first_offset, r.first_index) for r in resent] == [("new-7", 2, 7)]


def test_many_identities_are_written_in_records_under_a_megabyte(memory_table) -> None:
    seen = SeenEvents(memory_table, horizon_ms=600_000, budget=SeenBudget(1_000_000))
    seen.filter(0, 1, [scan(f"s{i}", ts=T0 + i) for i in range(100_000)])
    seen.flush(0)
    records = [v for k, v in memory_table.data.items() if is_seen_key(k)]
    assert len(records) >= 3
    assert max(len(v) for v in records) < 1_000_000
    loaded = SeenEvents(memory_table, horizon_ms=600_000, budget=SeenBudget(1_000_000))
    kept, resent = loaded.filter(0, 2, [scan("s99999", ts=T0 + 99_999), scan("x")])
    assert ids(kept) == ["x"] and len(resent) == 1


def test_the_window_state_ignores_the_identity_records(memory_table) -> None:
    seen = SeenEvents(memory_table, horizon_ms=600_000, budget=SeenBudget(10_000))
    seen.filter(0, 1, [scan("a")])
    seen.flush(0)
    assert any(SEEN.encode() in key for key in memory_table.data)
    state = WindowState(
        table=memory_table, source_topic="ct.scan", specs=(), grace_ms=0,
        idle_close_ms=1000, publish_closed=lambda records, acked: acked(),
        publish_late=lambda record: None,
    )
    assert state.position(0) == -1  # loaded without tripping over them


def test_nothing_a_replay_may_need_is_forgotten_before_it_is_committed(memory_table) -> None:
    """At replay speed the committed offset can lag the newest event time by far
    more than the horizon: a minute is forgotten only once the newest event time
    *as of the committed offset* is past it, so a replay from that offset finds
    every first copy it found the first time (the CI failure this fixes)."""
    committed: dict[int, int | None] = {0: None}
    seen = SeenEvents(memory_table, horizon_ms=5 * BUCKET_MS, budget=SeenBudget(10_000),
                      committed=committed.get)
    seen.filter(0, 0, [scan("a", ts=T0)])
    seen.flush(0)
    seen.filter(0, 1, [scan("far", ts=T0 + 60 * BUCKET_MS)])  # an hour later, not committed
    seen.flush(0)
    assert seen.size == 2  # nothing committed: nothing forgotten
    committed[0] = 1  # offset 0 committed: the newest as of it is T0
    seen.flush(0)
    assert seen.size == 2
    replay = SeenEvents(memory_table, horizon_ms=5 * BUCKET_MS, budget=SeenBudget(10_000),
                        committed=committed.get)  # a restart replays from offset 1
    kept, resent = replay.filter(0, 2, [scan("a", ts=T0)])  # a copy read after "far"
    assert ids(kept) == [] and len(resent) == 1  # as the first run decided
    committed[0] = 2  # "far" committed: a replay starts after it; "a" may go
    seen.flush(0)
    assert seen.size == 1


def test_a_quiet_partition_forgets_past_the_horizon_once_its_offsets_are_committed(
    memory_table,
) -> None:
    """A small stream read to its end before the first commit got no batch to
    flush after it: its identities stayed until its next message. The
    worker's once-a-second call forgets them, in the partitions it owns."""
    committed: dict[int, int | None] = {0: None, 1: None}
    seen = SeenEvents(memory_table, horizon_ms=5 * BUCKET_MS, budget=SeenBudget(10_000),
                      committed=committed.get)
    for partition in (0, 1):
        seen.filter(partition, 0, [scan(f"a{partition}", ts=T0)])
        seen.filter(partition, 1, [scan(f"far{partition}", ts=T0 + 60 * BUCKET_MS)])
        seen.flush(partition)
    assert seen.size == 4  # nothing committed when the batches were flushed
    committed.update({0: 2, 1: 2})  # the commit comes after the partitions went quiet
    assert seen.forget_past_horizon(lambda partition: partition == 0) == 1
    assert seen.size == 3  # "a0" went; partition 1 is not this worker's to tidy
    kept, resent = seen.filter(0, 2, [scan("far0", ts=T0 + 60 * BUCKET_MS)])
    assert ids(kept) == [] and len(resent) == 1  # within the horizon: still a re-send
