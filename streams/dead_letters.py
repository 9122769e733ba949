"""Dead letters, each acknowledged by Kafka before its message is.

A malformed event must never be lost: its message's offset may be committed
only once its dead letter is in Kafka. So dead letters are not fire-and-forget
sends (a failed one used to crash the worker, and every restart crashed again
on the same message, its offset already past): each agent's dead letters wait
here, per source partition, until Kafka acknowledges them, and the messages
of a partition with a dead letter outstanding are not acknowledged meanwhile.

When the dead-letter topic cannot be written (unreachable, refusing the
record), only that partition waits: its further messages are let go, to come
again in order once the letter is written (``streams/offset_order.py``); the
other partitions go on. One line is logged when a partition starts waiting
and one when it goes on; ``/stats/`` counts the waiting partitions and the
letters outstanding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from ctower.schemas.control import DeadLetter
from ctower.schemas.control import encoder as control_encoder

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
"""Between two tries of a partition's letters after a failure."""
SEND_TIMEOUT_SECONDS = 10.0
"""Longest wait for Kafka's answer to one try."""


@dataclass(slots=True)
class _Blocked:
    since: float
    error: str
    tried_at: float
    tries: int = 1


class DeadLetterOutbox:
    """The dead letters of one agent's source topic that Kafka has not acknowledged."""

    def __init__(
        self,
        source_topic: str,
        dead_letter_topic: str,
        producer: Callable[[], AIOKafkaProducer],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source_topic = source_topic
        self.dead_letter_topic = dead_letter_topic
        self._producer = producer
        self.clock = clock
        self.outstanding: dict[int, list[DeadLetter]] = {}
        """Partition -> letters not acknowledged yet (its messages wait for them)."""
        self.blocked: dict[int, _Blocked] = {}
        """Partitions whose letters failed: they wait until a retry succeeds."""
        self._sending: dict[int, asyncio.Task[None]] = {}
        self.resumed: set[int] = set()
        """Partitions written again after a failure, whose let-go messages must be re-read."""
        self.written = 0
        self.failed_tries = 0

    def add(self, record: DeadLetter) -> None:
        self.outstanding.setdefault(record.partition, []).append(record)

    def waits(self, partition: int) -> bool:
        """Whether the partition's messages must wait (a letter outstanding)."""
        return partition in self.outstanding

    def is_blocked(self, partition: int) -> bool:
        """Whether the partition's letters failed: new messages are let go until written."""
        return partition in self.blocked

    async def deliver(self, wait: float) -> None:
        """Send what is outstanding (a failed partition at most once per
        ``RETRY_SECONDS``) and wait up to ``wait`` seconds for Kafka's answers;
        what is not answered by then keeps its partition waiting."""
        now = self.clock()
        for partition in list(self.outstanding):
            if partition in self._sending:
                continue
            blocked = self.blocked.get(partition)
            if blocked is not None and now - blocked.tried_at < RETRY_SECONDS:
                continue
            self._sending[partition] = asyncio.ensure_future(self._send(partition))
        if wait > 0 and self._sending:
            await asyncio.wait(list(self._sending.values()), timeout=wait)

    async def _send(self, partition: int) -> None:
        records = list(self.outstanding.get(partition, ()))
        try:
            producer = self._producer()
            futures = [
                await producer.send(
                    self.dead_letter_topic,
                    value=control_encoder.encode(record),
                    key=record.dedup_key().encode(),
                )
                for record in records
            ]
            await asyncio.wait_for(asyncio.gather(*futures), SEND_TIMEOUT_SECONDS)
        except Exception as exc:  # whatever Kafka or the client says: the partition waits
            self._failed(partition, exc)
            return
        finally:
            self._sending.pop(partition, None)
        left = self.outstanding.get(partition, [])[len(records):]
        if left:
            self.outstanding[partition] = left
        else:
            self.outstanding.pop(partition, None)
        self.written += len(records)
        blocked = self.blocked.pop(partition, None)
        if blocked is not None:
            self.resumed.add(partition)
            log.warning(
                "dead letters of %s:%d written after %.0f s (%d tries); the partition goes on",
                self.source_topic, partition, self.clock() - blocked.since, blocked.tries,
            )

    def _failed(self, partition: int, exc: Exception) -> None:
        self.failed_tries += 1
        now = self.clock()
        error = f"{type(exc).__name__}: {exc}"[:300]
        blocked = self.blocked.get(partition)
        if blocked is not None:
            blocked.tried_at = now
            blocked.tries += 1
            blocked.error = error
            return
        self.blocked[partition] = _Blocked(since=now, error=error, tried_at=now)
        log.error(
            "cannot write dead letters of %s:%d to %s (%s); this partition waits and "
            "retries every %.0f s, the others go on",
            self.source_topic, partition, self.dead_letter_topic, error, RETRY_SECONDS,
        )

    def take_resumed(self) -> set[int]:
        resumed, self.resumed = self.resumed, set()
        return resumed

    def forget(self, partition: int) -> None:
        """The partition went to another worker: it will replay the messages and
        write their letters itself."""
        self.outstanding.pop(partition, None)
        self.blocked.pop(partition, None)
        self.resumed.discard(partition)
        task = self._sending.pop(partition, None)
        if task is not None:
            task.cancel()

    def stats(self) -> dict[str, object]:
        now = self.clock()
        return {
            "written": self.written,
            "outstanding": sum(len(r) for r in self.outstanding.values()),
            "failed_tries": self.failed_tries,
            "blocked_partitions": {
                str(p): {"seconds": round(now - b.since, 1), "tries": b.tries, "error": b.error}
                for p, b in self.blocked.items()
            },
        }
