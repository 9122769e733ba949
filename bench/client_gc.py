"""The measuring client's own garbage collector, kept out of the figures.

The latency benches time requests and alerts from the bench's own process,
so whatever stalls that process is counted as the server's latency. By the
time the reservation runs start, that process has built the simulator's
backlog, the request plan and a task per request, and CPython's full
collections of that heap stalled its event loop for 36 to 310 ms each
(``gc.callbacks`` in the bench process during ``ctower bench decisions``):
requests due meanwhile left late, answers were read late, and a quiet
pass's first run had a p99 of 200-470 ms while the server's handler
answered 99% within 50 ms. Benchmark harnesses keep the collector out of
what they time (``timeit`` disables it); so do we, for the timed parts only.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Collect once, then no collection until the block ends.

    Reference counting still frees what the block drops; only reference
    cycles wait, and the blocks are short (a reservation run is ten seconds,
    the alert probes about a minute and a half).
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
