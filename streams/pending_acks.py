"""Acks follow durability: a batch's messages are acknowledged only once what
they changed is in Kafka (its state's changelog records, its dead letters).

Faust commits what was acknowledged; acking a message whose effect is only in
memory would let a crash lose it. So each agent's messages wait here, and
:meth:`PendingAcks.settle` persists, then acks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from faust.types import Message

from ctower.streams.dead_letters import DeadLetterOutbox
from ctower.streams.decisions import RuleProcessor
from ctower.streams.offset_order import let_go
from ctower.streams.processing import StreamProcessor

if TYPE_CHECKING:
    from ctower.streams.tower import ControlTower

WRITES_IN_FLIGHT = 2
"""Batches an agent may have settling (their writes on the way to the producer)
while it folds the next: one writing, one folding. Waiting for each write
before folding on kept a draining worker under three quarters of a core: every
agent spent about half its time in :meth:`PendingAcks.settle` (the writes of
all agents go through one ordered writer)."""

DEAD_LETTER_WAIT_SECONDS = 1.0
"""Longest a batch waits for Kafka to acknowledge its dead letters; what is not
acknowledged by then waits on, alone with its partition."""


class PendingAcks:
    """Messages folded into state but neither persisted nor acknowledged yet.

    Acks follow durability: :meth:`settle` flushes the state, then acks, so
    Faust can never commit an offset whose effect is only in memory. This
    replaces ``stream.take_events``, whose buffer stalled an agent for good
    when a rebalance came while it was full (seen here with two workers;
    robinhood/faust#262 and #678 report the same family of hangs).

    A processor may say a flush left part of the batch unwritten (the window
    state is written every half second at most, the rules about once a
    second): those messages are held, and acked by the next flush that is
    complete or after the timer's write (``persist_and_release``).

    The agent does not wait for a batch's write (``settle(wait=False)``): the
    write and the acks finish in a task, in settle order, while the agent
    folds the next batch, ``WRITES_IN_FLIGHT`` at most. Everyone else
    (the timer, a revocation, the stop) settles with ``wait=True``, which
    also waits for those tasks: after it, everything folded is acked or held.
    """

    def __init__(
        self,
        processor: StreamProcessor | RuleProcessor,
        max_messages: int,
        max_seconds: float,
        write: Callable[[], Awaitable[None]],
        outbox: DeadLetterOutbox,
    ) -> None:
        self.processor = processor
        self.write = write
        """Hands what a flush wrote (changelogs, levels: the tower's BatchWriter) to Kafka."""
        self.outbox = outbox
        """The batch's dead letters: a partition's messages wait until Kafka has its letters."""
        self.waiting: list[Message] = []
        """Settled, but a dead letter of their partition is not acknowledged yet."""
        self.max_messages = max_messages
        self.max_seconds = max_seconds
        self.events: list[Message] = []
        self.held: list[Message] = []
        """Settled, but their effects are not all in the changelog yet."""
        self.consumer: Any = None
        """Acknowledges the messages (the app's consumer, set by the agent)."""
        self.since = time.monotonic()
        self.in_flight: deque[asyncio.Task[None]] = deque()
        """Settles whose write and acks are still under way, oldest first."""
        self.settles = 0
        self.write_wait_s = 0.0
        """Time spent waiting for settles to finish (the agent folds nothing
        meanwhile): what a drain that keeps less than a core busy waits for."""

    def due(self) -> bool:
        return len(self.events) >= self.max_messages or (
            bool(self.events) and time.monotonic() - self.since >= self.max_seconds
        )

    def until_due(self) -> float | None:
        """Seconds until the batch is due by its age (None: no batch)."""
        if not self.events:
            return None
        return self.max_seconds - (time.monotonic() - self.since)

    async def settle(self, wait: bool = True) -> None:
        """Flush the batch's state, then write and ack it; with ``wait``, return
        once this and every earlier settle is done (an error of one is raised
        here), else once no more than ``WRITES_IN_FLIGHT`` are under way."""
        if self.events:
            events, self.events = self.events, []
            self.since = time.monotonic()
            durable = self.processor.flush()
            previous = self.in_flight[-1] if self.in_flight else None
            self.in_flight.append(
                asyncio.ensure_future(self._finish(events, durable, previous))
            )
        limit = 0 if wait else WRITES_IN_FLIGHT - 1
        while len(self.in_flight) > limit:
            started = time.perf_counter()
            try:
                # shielded: an agent cancelled (a stop) does not cut a write short
                await asyncio.shield(self.in_flight[0])
            finally:
                self.write_wait_s += time.perf_counter() - started
                if self.in_flight and self.in_flight[0].done():
                    self.in_flight.popleft()

    async def _finish(
        self, events: list[Message], durable: bool, previous: asyncio.Task[None] | None
    ) -> None:
        """Write what the batch's flush produced, then ack it, after the settle
        before it (acks and dead letters in settle order)."""
        await self.write()
        if previous is not None:
            await previous
        self.settles += 1
        if self.outbox.outstanding or self.waiting:
            await self.outbox.deliver(wait=DEAD_LETTER_WAIT_SECONDS)
            events = self._hold_waiting(events)
        if not durable:
            self.held.extend(events)
            return
        held, self.held = self.held, []
        await self.ack(held + events)

    def _hold_waiting(self, events: list[Message]) -> list[Message]:
        """``events`` and the earlier waiting ones, minus those whose partition
        still waits for a dead letter (they join ``waiting``)."""
        outbox = self.outbox
        waiting: list[Message] = []
        go: list[Message] = []
        for message in self.waiting + events:
            (waiting if outbox.waits(message.partition) else go).append(message)
        self.waiting = waiting
        return go

    def stats(self) -> dict[str, object]:
        return {"settles": self.settles, "write_wait_s": round(self.write_wait_s, 2),
                "in_flight": len(self.in_flight)}

    async def retry_dead_letters(self) -> None:
        """Once a second: try the outstanding letters again; messages whose
        letters are now in Kafka are acked with the timer's write."""
        if self.outbox.outstanding or self.waiting:
            await self.outbox.deliver(wait=0)
            self.held.extend(self._hold_waiting([]))

    def let_go_waiting(self, consumer: Any, partition: int | None = None) -> None:
        """Give up the messages waiting for a dead letter (of one partition, or
        all): not acked, so they come again, to the next owner or after a restart."""
        keep = []
        for message in self.waiting:
            if partition is None or message.partition == partition:
                let_go(consumer, message)
            else:
                keep.append(message)
        self.waiting = keep
        if partition is not None:
            self.outbox.forget(partition)

    def take_held(self) -> list[Message]:
        """The held messages, handed over to be acked (after everything was written)."""
        held, self.held = self.held, []
        return held

    async def ack(self, messages: list[Message]) -> None:
        # what Faust's Stream.ack did for a message delivered to one stream
        if self.consumer is not None:
            ack = self.consumer.ack
            for message in messages:
                ack(message)


async def persist_and_release(tower: ControlTower) -> None:
    """Write all the window and rule state, then ack every message held for it.

    The held lists are taken before the first await: a batch settled while
    the write or the acks are under way is not covered by this write and
    must stay held.
    """
    for processor in tower.processors.values():
        processor.write_state()  # the windows of the batches held since their last write
    if tower.decisions is not None:
        tower.decisions.persist(force=True)
    released = [(pending, pending.take_held()) for pending in tower.pending.values()]
    await tower.writer.write()
    for pending, events in released:
        await pending.ack(events)
