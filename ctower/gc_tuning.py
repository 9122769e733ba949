"""Garbage-collector settings for the long-running stream processes.

A busy worker allocates a short-lived object for nearly everything it does
(a future per produced record, a tuple per fold, a dict per decoded batch)
while it holds a large, slowly changing heap of state (windows, rule
entities, the producer's pending records). With CPython's default thresholds
(700, 10, 10) that mix triggers a full collection every time the heap grows
by a quarter: measured on ``ctower bench --no-sink`` (300k events), about 80
full collections of 70-160 ms each, and 10 s of the run's ~25 s spent in the
collector. py-spy showed it as a mysterious 9% "inside" ``FutureMessage()``.

Freezing what start-up built (modules, classes, the app) and raising the
thresholds cuts that to a few collections. The same bench went from
12.0-14.8k to 15.9-18.8k events/s, at the same peak RSS (about 205 MB).
Full collections still run (every ~100M allocations, or when the heap has
grown by a quarter), so reference cycles are still reclaimed.
"""

from __future__ import annotations

import gc
import time
from typing import Any

THRESHOLDS = (50_000, 20, 100)
"""Allocations before a young collection; young collections per middle one;
middle collections per full one (CPython's defaults: 700, 10, 10)."""

_frozen = 0


class PauseClock:
    """Time spent in each generation's collections, and the longest pause: a
    full collection stops the worker (its HTTP answers too) for its length."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.longest_ms = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info["generation"]
        self.seconds[generation] += took
        self.longest_ms[generation] = max(self.longest_ms[generation], took * 1000)


pauses = PauseClock()


def tune_for_streaming() -> None:
    """Freeze the start-up heap and raise the collection thresholds.

    Call once, after the app is built and before it starts processing.
    """
    global _frozen
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    _frozen = gc.get_freeze_count()
    if pauses not in gc.callbacks:
        gc.callbacks.append(pauses)


def watch_pauses() -> None:
    """Time the collections without changing the thresholds: the sink and the
    alert service keep CPython's, but their /metrics show the pauses too."""
    if pauses not in gc.callbacks:
        gc.callbacks.append(pauses)


def gc_stats() -> dict[str, object]:
    """The collector's counters, for ``/stats/``: collections per generation
    and how many objects start-up froze.

    The frozen count is the one taken at start-up: ``gc.get_freeze_count()``
    walks the whole frozen list (9% of a worker whose /stats/ was polled
    ten times a second)."""
    per_generation = gc.get_stats()
    return {
        "thresholds": list(gc.get_threshold()),
        "collections": [generation["collections"] for generation in per_generation],
        "frozen_objects": _frozen,
        "seconds": [round(seconds, 3) for seconds in pauses.seconds],
        "longest_pause_ms": [round(ms, 1) for ms in pauses.longest_ms],
    }
