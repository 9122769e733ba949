"""Re-sending events as at-least-once producers do (``ctower simulate --duplicates``).

A till or a mini-program back end that did not hear Kafka's answer sends the
event again: sometimes at once (the copy often lands in the same envelope),
sometimes minutes later (after a reconnect), and a copy can cross a restart
of the worker. The copy is the same event with the same bytes; the truth does
not count it (:attr:`Item.resent`), so a pipeline that counts it twice is
caught.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Iterator

from ctower.simulator.items import Item

LATER_MS = (60_000, 480_000)
"""How far behind its original (event time) a late copy is sent: one to eight
minutes, inside the worker's default de-duplication horizon (16 minutes)."""


def resend(items: Iterable[Item], share: float, seed: int) -> Iterator[Item]:
    """``items`` with about ``share`` of the valid events sent twice: half of the
    copies right after the original, half once the stream is 1-8 minutes later."""
    rng = random.Random(seed * 7919 + 17)
    later: list[tuple[int, int, Item]] = []
    count = 0
    for item in items:
        while later and later[0][0] <= item.ts:
            yield heapq.heappop(later)[2]
        yield item
        if item.event is None or item.raw is not None or item.late_ms or item.resent:
            continue  # malformed, replayed bytes or a late incident: sent as they are
        if rng.random() >= share:
            continue
        copy = item._replace(resent=True)
        if rng.random() < 0.5:
            yield copy
        else:
            count += 1
            heapq.heappush(later, (item.ts + rng.randint(*LATER_MS), count, copy))
    while later:
        yield heapq.heappop(later)[2]
