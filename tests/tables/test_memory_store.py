"""The memory store that remembers how far each partition is written
(tables/memory_store.py): a partition kept through a rebalance is recovered
from there, one lost and gained back is read from its start."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
from faust.types import TP

from ctower.tables.memory_store import STORE_URL, MemoryStore

TOPIC = "app-scan-windows-changelog"


def _store() -> MemoryStore:
    app = faust.App("memory-store-test", store=STORE_URL)
    table = app.Table("scan-windows", key_type=bytes, value_type=bytes, partitions=4)
    store = table.data
    assert isinstance(store, MemoryStore)  # the setting selects it
    return store


def _record(partition: int, offset: int, key: bytes, value: bytes | None) -> Any:
    message = SimpleNamespace(
        tp=TP(TOPIC, partition), partition=partition, offset=offset, value=value
    )
    return SimpleNamespace(key=key, value=value, message=message)


def _same(raw: Any) -> Any:
    return raw


def test_a_partition_is_as_far_as_its_newest_acknowledged_write() -> None:
    store = _store()
    assert store.persisted_offset(TP(TOPIC, 0)) is None  # never written: read it all
    store.set_persisted_offset(TP(TOPIC, 0), 41)
    store.set_persisted_offset(TP(TOPIC, 0), 17)  # a late acknowledgement of an older batch
    assert store.persisted_offset(TP(TOPIC, 0)) == 41
    assert store.persisted_offset(TP(TOPIC, 1)) is None


def test_a_recovery_moves_the_offsets_to_what_it_applied() -> None:
    store = _store()
    store.apply_changelog_batch(
        [_record(0, 5, b"a", b"1"), _record(0, 6, b"b", b"2"), _record(2, 3, b"c", b"3"),
         _record(0, 7, b"a", None)],
        _same, _same,
    )
    assert store.data == {b"b": b"2", b"c": b"3"}  # the tombstone deleted a
    assert store.persisted_offset(TP(TOPIC, 0)) == 7
    assert store.persisted_offset(TP(TOPIC, 2)) == 3
    assert store.recovered == 4  # what /stats/ reports the rebalances read


def test_a_partition_no_longer_active_is_forgotten_with_its_keys() -> None:
    """Faust's memory store drops a partition's recovered keys once it is not
    active here (a standby's too); its offset must go with them, or the
    partition gained back later would be read only from that offset on, onto
    an empty table."""
    store = _store()
    store.apply_changelog_batch(
        [_record(0, 1, b"kept", b"1"), _record(1, 1, b"standby", b"2"),
         _record(3, 9, b"lost", b"3")],
        _same, _same,
    )
    asyncio.run(store.on_recovery_completed({TP(TOPIC, 0)}, {TP(TOPIC, 1)}))
    assert store.data == {b"kept": b"1"}
    assert store.persisted_offset(TP(TOPIC, 0)) == 1
    assert store.persisted_offset(TP(TOPIC, 1)) is None
    assert store.persisted_offset(TP(TOPIC, 3)) is None
    # a write acknowledged after its partition left, then the partition gained back
    store.set_persisted_offset(TP(TOPIC, 3), 12)
    store.set_persisted_offset(TP(TOPIC, 0), 4)
    assert store.persisted_offset(TP(TOPIC, 3)) is None  # read from its start again
    assert store.persisted_offset(TP(TOPIC, 0)) == 4
    store.apply_changelog_batch([_record(3, 15, b"lost", b"4")], _same, _same)
    assert store.persisted_offset(TP(TOPIC, 3)) == 15  # what the recovery applied counts
