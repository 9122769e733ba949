"""Each partition's messages are folded in offset order, also across rebalances.

The state recognises a replayed message by offset: a window key's
``through``, a rule family's progress per source, both mean "everything up
to here is in". That is only true if a partition's messages are folded in
offset order, and Faust does not promise it around a rebalance. A worker
that keeps a partition can get messages from where its fetcher had got to
before the recovery's seek back to the committed offset
(faust-streaming/faust#221, #236). Seen here with a second worker joining:
offsets 155..171 were folded, then the seek brought back 136.., whose
keys already held 171, so they were skipped as replays and 136..154 were
never counted.

So a message beyond the next expected offset is not folded and not
acknowledged; it is let go (Faust forgets it without committing its
offset), and comes again in order after the seek. If no seek is coming
(the worker is settled: no rebalance, recovery done), one is asked for. If
the expected offset is not in Kafka at all (a transaction marker,
compaction, retention), the consumer comes back round to an offset already
let go; then the hole is real and is stepped over.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from faust.types import TP, Message
from faust.types.transports import ConsumerT

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Waiting:
    """A partition waiting for its expected offset."""

    expected: int
    peak: int
    """The highest offset let go since the seek (or since waiting began)."""
    sought: bool = False


class OffsetOrder:
    """Admits one topic's messages in offset order per partition.

    ``position(partition)`` is the last offset folded into the state (-1 for
    none); the state persists it with what it folded, so after a restart or
    a rebalance the order carries on where the state is.
    """

    def __init__(
        self,
        topic: str,
        position: Callable[[int], int],
        settled: Callable[[TP], bool],
        seek: Callable[[TP, int], Awaitable[None]],
    ) -> None:
        self.topic = topic
        self.position = position
        self.settled = settled
        """Whether a seek may be asked for now (assigned, not rebalancing)."""
        self.seek = seek
        self._waiting: dict[int, _Waiting] = {}
        self.let_go = 0
        """Messages that came ahead of their turn (they come again)."""
        self.holes = 0
        """Offsets found missing in Kafka and stepped over."""

    async def admit(self, partition: int, offset: int) -> bool:
        """True: fold the message now. False: let it go (see :func:`let_go`)."""
        expected = self.position(partition) + 1
        if offset <= expected:
            self._waiting.pop(partition, None)
            return True  # the next one, or a replay the state recognises
        waiting = self._waiting.get(partition)
        if waiting is None or waiting.expected != expected:
            waiting = self._waiting[partition] = _Waiting(expected, offset)
            log.info(
                "%s:%d offset %d came while %d is next; letting it go until the seek",
                self.topic, partition, offset, expected,
            )
        elif waiting.sought and offset <= waiting.peak:
            # back round after our seek without meeting ``expected``: not in Kafka
            del self._waiting[partition]
            self.holes += 1
            log.warning(
                "%s:%d offsets %d..%d are not in Kafka (compacted, deleted or "
                "transaction markers); going on from %d",
                self.topic, partition, expected, offset - 1, offset,
            )
            return True
        waiting.peak = max(waiting.peak, offset)
        self.let_go += 1
        tp = TP(self.topic, partition)
        if not waiting.sought and self.settled(tp):
            try:
                await self.seek(tp, expected)
            except Exception:  # a rebalance took the partition meanwhile: its seek comes
                log.warning("could not seek %s to %d", tp, expected, exc_info=True)
                return False
            waiting.sought = True
            waiting.peak = offset
        return False

    def forget(self, partition: int) -> None:
        """A rebalance came: what was let go and sought before it says nothing now."""
        self._waiting.pop(partition, None)

    def stats(self) -> dict[str, int]:
        return {"let_go": self.let_go, "holes": self.holes}


def let_go(consumer: ConsumerT, message: Message) -> None:
    """Make Faust forget a message without acknowledging its offset.

    Acknowledging it would let Faust commit past the earlier offsets still
    to come (it commits the first run of consecutive acknowledged offsets);
    leaving it unacknowledged would make a rebalance wait for it forever
    (``Consumer.wait_empty``), since it is never processed.
    """
    message.acked = True
    consumer.unacked.discard(message)
