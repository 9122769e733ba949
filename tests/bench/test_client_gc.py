"""The latency benches' client keeps its own collector out of what it times."""

from __future__ import annotations

import gc
from typing import Any

from ctower.bench.client_gc import collector_paused


class _Node:
    me: Any = None


def test_no_collection_runs_inside_the_block_and_the_collector_comes_back() -> None:
    collections: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    assert gc.isenabled()
    thresholds = gc.get_threshold()
    gc.set_threshold(100)  # whatever an earlier test set: a young collection every 100
    gc.callbacks.append(count)
    try:
        with collector_paused():
            started = len(collections)  # the one collection it makes first
            for _ in range(10_000):  # cycles: far past the young generation's threshold
                node = _Node()
                node.me = node
            inside = len(collections) - started
            enabled_inside = gc.isenabled()
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*thresholds)
    assert started >= 1
    assert inside == 0 and not enabled_inside
    assert gc.isenabled()


def test_a_collector_turned_off_before_stays_off_after() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
