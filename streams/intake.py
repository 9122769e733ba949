"""Our topics' messages, handed to their agents without Faust's per-message machinery.

Faust delivers every message on its own: its fetcher awaits
``wait_first(callback(message), suspend_flow.wait())`` (two tasks and an
``asyncio.wait`` per message), the conductor wraps it in an event and puts it
on the agent's queue, and the stream takes it off again. With one event per
message that machinery was the worker's floor: a no-op agent drained about
6,000 messages/s here, below what a worker must take from single-event
producers.

The fetcher here is Faust's own (same consumer, group, assignment, commits,
rebalances and table recovery); only its hand-over changes. Messages of the
topics registered with an :class:`Intake` go in short lists
(``HAND_OVER_EVERY``) onto a flow-controlled queue that their agent drains,
the loop let run after each so the streams advance together; every other
topic (the coupon service's) takes Faust's usual path. What Faust's stream did per message
(tracking it as unacknowledged, acking it) the agent does itself, and the
agent's offset order (``OffsetOrder``) already makes whatever a rebalance
drops come again in order.

What it costs in Faust conventions: these agents do not iterate their stream
(``stream.events()``, ``stream.take()``, processors and sensors on the stream
do not apply to them), and the consumer's fetch loop is overridden
(``_drain_messages``, a private method, checked against faust-streaming 0.15).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message, StreamT
from mode import Service
from mode.utils.queues import ThrowableQueue

from ctower.streams.sent_soon import SentSoon

log = logging.getLogger(__name__)

FETCHES_QUEUED = 4
"""Lists (``HAND_OVER_EVERY`` messages at most) waiting for an agent: enough to
keep it busy while the loop hands the other topics' over."""

HAND_OVER_EVERY = 16
"""Messages of a topic handed over at a time, the loop let run after each list.

Faust's fetch interleaves the topics (round-robin), so a few messages per
topic keep the streams together in event time. Whole fetches (hundreds of
messages of one topic at once) let one stream run minutes of event time
ahead of another in a fast replay, and the rules' event clock
(``rules/rule_state.py``) judged a refill or a stock-out that late: the
decisions test failed 2 runs in 3 with whole fetches and passed 3 in 3 with
one message and with 16 at a time. One at a time cost a queue round trip and
a turn of the loop per message: 16 drained single-event messages about 30%
faster (11.4k -> 14.8k events/s, 150k events, one run each)."""

YIELD_EVERY = 100
"""Messages of Faust's path between two yields to the loop, as Faust does."""


class Intake:
    """The topics read a fetch at a time, and the queue of each."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.queues: dict[str, ThrowableQueue] = {}
        self.seeks: dict[TP, tuple[int, int]] = {}
        """Partition -> (offset, consumer generation) of a seek asked for and
        not made yet."""
        self.fetched: dict[TP, int] = {}
        """Partition -> the last offset the fetch loop took from Kafka since its
        last seek, whatever became of the message: what tells a partition whose
        messages went missing on the way (``streams/offset_order.py``) from one
        not fetched yet."""
        self.sent: SentSoon | None = None
        """The producer's ``send_soon`` records, delivered before each commit (set by
        :meth:`install`)."""

    def request_seek(self, tp: TP, offset: int) -> None:
        """Have the fetch loop seek ``tp`` to ``offset`` before its next fetch.

        Until then the loop hands none of the partition's messages over: they
        were fetched before the seek and come again after it.
        """
        self.seeks[tp] = (offset, self.app.consumer_generation_id)

    def queue(self, topic: str) -> ThrowableQueue:
        """Its agent's queue of fetched lists.

        Not cleared by Faust's flow control, as its own agents' queues are: it
        clears them on every ``resume()``, and a rebalance's recovery resumes
        the flow twice, the second time only after its seek of every partition
        to its commit (``perform_seek``). Whatever the fetch loop handed over
        from the sought offsets while that seek was awaited was cleared, never
        read again (the loop had read it) and never asked for again (nothing
        came after it): the small topics' last messages of a two-worker bench
        drain went so, and the partitions stood still until the offset order
        sought them back (``streams/offset_order.py``). Lists left from before
        a rebalance need no clearing: the agent drops what it takes while the
        flow is suspended or of an earlier generation (:func:`fetched`).
        """
        queue = self.queues.get(topic)
        if queue is None:
            queue = self.queues[topic] = self.app.FlowControlQueue(
                maxsize=FETCHES_QUEUED, clear_on_resume=False,
            )
        return queue

    def install(self) -> None:
        """Make the app's consumer hand these topics over in lists; before the
        consumer is first used."""
        self.sent = SentSoon(self.app.producer)
        transport: Any = self.app.transport
        transport.Consumer = type(
            "IntakeConsumer", (IntakeConsumer,), {"intake": self},
        )


async def fetched(
    app: faust.App, stream: StreamT, queue: ThrowableQueue,
    until_due: Callable[[], float | None] = lambda: None,
) -> AsyncIterator[list[Message]]:
    """The agent's side: its topic's messages, a list at a time, tracked as
    unacknowledged (so a rebalance and a stop wait for their acks, as for a
    stream's messages). A list taken while the flow is suspended is dropped
    untracked, as a stream drops its events then, and so is a message fetched
    in an earlier generation of the group.

    ``until_due`` says in how many seconds the agent's batch is due (None: no
    batch). When nothing comes by then, an empty list is yielded so that the
    agent settles it: a quiet stream's last events wait for the batch's age,
    not for the next message or the once-a-second timer."""
    # Iterating the channel subscribes the topic through Faust's conductor
    # (what ``async for`` over the stream would have done); its own queue
    # stays empty, since the consumer hands this topic's messages to ``queue``.
    stream.channel.__aiter__()
    track = app.consumer.track_message
    flow_active = app.flow_control.is_active
    while True:
        messages: list[Message]
        wait = until_due() if queue.empty() else None
        if wait is None:
            messages = await queue.get()
        else:
            try:
                messages = await asyncio.wait_for(queue.get(), max(wait, 0.0))
            except TimeoutError:
                yield []
                continue
        if not flow_active():
            continue
        generation = app.consumer_generation_id
        if messages[0].generation_id != generation:
            # fetched before a rebalance (a stream skips these too); usually all
            # of a fetch or none
            messages = [m for m in messages if m.generation_id == generation]
        for message in messages:
            message.tracked = True
            track(message)
        if messages:
            yield messages


async def _hand_over(
    queue: ThrowableQueue, messages: list[Message], suspended: Callable[[], Awaitable[Any]]
) -> None:
    """Put one fetch on its agent's queue, waiting while the queue is full.

    A rebalance starting (the flow suspended) ends the wait, and clearing the
    queue cancels a waiting put: either way the fetch is dropped, untracked,
    and read again. Not ``Service.wait_first``: it raises the CancelledError
    of a put the queue cancelled, which crashed the worker when a second
    worker joined while the first one's queues were full.
    """
    if not queue.full():
        queue.put_nowait(messages)
        # let the agents run before the next topic's fetch is handed over: the
        # streams then advance together, as when Faust delivered message by
        # message, and the rules' event clock does not see one source far ahead
        await asyncio.sleep(0)
        return
    put = asyncio.ensure_future(queue.put(messages))
    stop = asyncio.ensure_future(suspended())
    try:
        await asyncio.wait((put, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (put, stop):
            if not future.done():
                future.cancel()
    if put.done() and not put.cancelled() and put.exception() is not None:
        raise put.exception()  # type: ignore[misc]


class IntakeConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer whose fetch loop hands registered topics over
    ``HAND_OVER_EVERY`` messages at a time (see the module's docstring)."""

    intake: Intake

    async def _commit_offsets(
        self, offsets: Any, start_new_transaction: bool = True
    ) -> bool:
        """Faust's commit, once Kafka has every record sent with ``send_soon``
        (Faust's own flush gives up after 0.1 s: ``streams/sent_soon.py``)."""
        sent = self.intake.sent
        if sent is not None and not await sent.delivered():
            return False
        committed: bool = await super()._commit_offsets(
            offsets, start_new_transaction=start_new_transaction
        )
        return committed

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Faust's revocation; what was read of the partitions goes with them."""
        for tp in revoked:
            self.intake.fetched.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def perform_seek(self) -> None:
        """Faust's seek of every partition to its commit (a rebalance's recovery):
        nothing is read since."""
        self.intake.fetched.clear()
        await super().perform_seek()

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
        # Faust's Consumer._drain_messages, with the registered topics put on
        # their agents' queues instead of awaited one by one through the callback.
        callback = self.callback
        getmany = self.getmany
        queues = self.intake.queues
        seeks = self.intake.seeks
        fetched = self.intake.fetched
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspended = self.suspend_flow.wait
        sleep = asyncio.sleep
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait: AsyncIterator[tuple[TP, Message]] = getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                batches: dict[str, list[Message]] = {}
                async for tp, message in ait:
                    fetched[tp] = message.offset
                    if seeks and tp in seeks and seeks[tp][1] == message.generation_id:
                        continue  # fetched before a seek asked for: comes again after it
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # read already (Faust drops it too)
                    if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if tp.topic in queues:
                        batch = batches.setdefault(tp.topic, [])
                        batch.append(message)
                        if len(batch) >= HAND_OVER_EVERY:
                            await _hand_over(queues[tp.topic], batch, suspended)
                            batches[tp.topic] = []
                    else:
                        since_yield += 1
                        if since_yield > YIELD_EVERY:
                            await sleep(0)
                            since_yield = 0
                        await self.wait_first(callback(message), suspended())
                    if message.generation_id != self.app.consumer_generation_id:
                        # a rebalance came while the loop waited (a commit, a
                        # hand-over): its recovery sought the partition to its
                        # commit, and this message's offset as the read one
                        # would drop what the seek brings as read already
                        break
                    set_read_offset(tp, offset)
                for topic, messages in batches.items():
                    if not messages:
                        continue
                    await _hand_over(queues[topic], messages, suspended)
                if seeks:
                    await self._make_seeks()
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def _make_seeks(self) -> None:
        """The seeks asked for, between two fetches: the next fetch brings the
        sought offsets and no message fetched before can move the read offset
        past them. One asked before a rebalance is dropped (the recovery seeks
        every partition to its committed offset, the offset order forgets)."""
        requests = dict(self.intake.seeks)
        self.intake.seeks.clear()
        generation = self.app.consumer_generation_id
        assigned = self.assignment()
        due = {
            tp: offset for tp, (offset, asked_in) in requests.items()
            if asked_in == generation and tp in assigned
        }
        if not due or not self.flow_active:
            return
        try:
            await self.seek_wait(due)
            for tp, offset in due.items():
                self.intake.fetched[tp] = offset - 1
        except Exception:
            # asked again before the next fetch, unless a rebalance came
            # meanwhile (its recovery seeks the partition then)
            log.warning("could not seek %s; trying again", due, exc_info=True)
            for tp, offset in due.items():
                self.intake.seeks.setdefault(tp, (offset, generation))
