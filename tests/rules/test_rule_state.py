"""RuleState's bookkeeping for paced flushes: what is unwritten, written once."""

from __future__ import annotations

from typing import Any

from ctower.rules.pickup import PickupQueue
from ctower.rules.rule_state import RuleState


def test_unflushed_counts_entities_and_progress_and_flush_all_writes_each_once(
    harness: Any,
) -> None:
    state: RuleState[PickupQueue] = harness.state("pickup", PickupQueue)
    for offset in range(5):  # five batches touch the same store between flushes
        state.applied(0, "pickup:0", offset, 1_000 + offset)
        state.put(0, "S1", PickupQueue(waiting={f"o{offset}": offset}))
    state.applied(1, "pickup:1", 0, 1_000)
    state.put(1, "S2", PickupQueue())
    assert state.unflushed() == 4  # two entities, two progress records
    assert state.flush_all() == 2
    assert state.unflushed() == 0
    written = [(partition, key) for partition, key, _ in harness.table.changelog]
    assert len(written) == 4
    assert [p for p, _ in written] == [0, 0, 1, 1]  # each entity before its progress
    assert b"__progress__" in written[1][1] and b"__progress__" in written[3][1]
    assert state.flush_all() == 0
    assert len(harness.table.changelog) == 4


def test_a_restart_after_a_paced_flush_skips_what_the_state_holds(harness: Any) -> None:
    state: RuleState[PickupQueue] = harness.state("pickup", PickupQueue)
    state.applied(0, "pickup:0", 7, 1_000)
    state.put(0, "S1", PickupQueue(waiting={"o7": 7}))
    state.flush_all()
    state.applied(0, "pickup:0", 8, 1_001)  # applied, not written: lost in a crash
    state.put(0, "S1", PickupQueue(waiting={"o7": 7, "o8": 8}))
    restarted: RuleState[PickupQueue] = harness.state("pickup", PickupQueue)
    assert not restarted.fresh(0, "pickup:0", 7)
    assert restarted.fresh(0, "pickup:0", 8)  # replayed from the uncommitted offset
    entity = restarted.get(0, "S1")
    assert entity is not None and entity.waiting == {"o7": 7}


def test_the_position_in_the_own_topic_is_written_with_the_state(harness: Any) -> None:
    state: RuleState[PickupQueue] = harness.state("stock", PickupQueue)
    assert state.position(0) == -1
    state.read(0, 41)
    state.read(0, 40)  # a replay does not move it back
    assert state.position(0) == 41
    assert state.unflushed() == 1  # an unwritten position holds the batch's acks back
    state.flush_all()
    restarted: RuleState[PickupQueue] = harness.state("stock", PickupQueue)
    assert restarted.position(0) == 41
    assert restarted.fresh(0, "ct.scan:0", 0)  # not taken for a source's progress
