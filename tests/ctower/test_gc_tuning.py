"""The collector settings the stream processes run with (ctower/gc_tuning.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ctower.gc_tuning import THRESHOLDS, gc_stats, pauses, tune_for_streaming


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """Put the test process's collector back as it was."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    if pauses in gc.callbacks:
        gc.callbacks.remove(pauses)


@pytest.mark.usefixtures("restored_gc")
def test_tuning_freezes_the_start_up_heap_and_raises_the_thresholds() -> None:
    assert gc.get_freeze_count() == 0
    tune_for_streaming()
    assert gc.get_threshold() == THRESHOLDS
    assert gc.isenabled()  # cycles are still reclaimed, only less often
    assert THRESHOLDS[0] > 700  # CPython's default young threshold
    stats = gc_stats()
    assert stats["thresholds"] == list(THRESHOLDS)
    assert stats["frozen_objects"] == gc.get_freeze_count() > 1000
    gc.unfreeze()
    assert gc_stats()["frozen_objects"] == stats["frozen_objects"]  # counted once
    full = pauses.seconds[2]
    gc.collect()
    assert pauses.seconds[2] > full  # full collections are timed
    assert gc_stats()["longest_pause_ms"][2] > 0  # type: ignore[index]
