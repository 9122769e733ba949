"""What the worker handed to Faust's producer buffer is in Kafka before a commit.

Faust commits an offset after ``producer.flush()``, and the worker relies on
that for every record it sends with ``send_soon`` as a side effect of a
message: duplicate and late-event records, the lanes re-keyed to the rules,
coupon decisions, shadow alerts. But the flush of Faust's buffer
(``ProducerBuffer.flush_atmost``) gives up after 0.1 s without a send and
returns with records still queued (``tests/streams/test_sent_soon.py`` shows
it). On a busy machine the commit could then go ahead, and a worker killed
just after it would lose those records for good: the replay starts past them.

So the futures of ``send_soon`` are tracked here, and the consumer
(``streams/intake.py``) waits until Kafka has acknowledged all of them before
it commits. A future resolves once aiokafka has the broker's answer (or its
error), so this waits no longer than delivery does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

WAIT_SECONDS = 30.0
"""How long a commit waits for the buffer before it is skipped (tried again at
the next one). Not committing is always safe: the messages come again."""


class SentSoon:
    """The records handed to a Faust producer's buffer and not delivered yet."""

    def __init__(self, producer: Any) -> None:
        self.pending: set[asyncio.Future[Any]] = set()
        self.failed = 0
        send_soon = producer.send_soon

        def tracked(fut: asyncio.Future[Any]) -> None:
            self.pending.add(fut)
            fut.add_done_callback(self._done)
            send_soon(fut)

        producer.send_soon = tracked

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self.pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self.failed += 1  # Faust logged it (``_on_published``)

    async def delivered(self, timeout: float | None = None) -> bool:
        """Wait until everything sent so far is acknowledged (or failed, which
        Faust logs); False after ``timeout`` (``WAIT_SECONDS``)."""
        if not self.pending:
            return True
        if timeout is None:
            timeout = WAIT_SECONDS
        waiting = list(self.pending)
        _, not_done = await asyncio.wait(waiting, timeout=timeout)
        if not_done:
            log.warning(
                "%d records handed to the producer are not in Kafka after %.0f s: "
                "not committing yet", len(not_done), timeout,
            )
            return False
        return True
