"""The fetch hand-over of ``streams/intake.py``, no broker: what a rebalance
does to a fetch waiting for room on its agent's queue, and a seek the agent
asks for while a fetch is being handed over."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace

import faust
from faust.types import TP, Message
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from ctower.streams.intake import HAND_OVER_EVERY, Intake, IntakeConsumer, _hand_over


def queue_of(size: int) -> ThrowableQueue:
    flow = FlowControlEvent()
    flow.resume()
    return ThrowableQueue(maxsize=size, flow_control=flow, clear_on_resume=True)


def test_a_fetch_goes_on_at_once_while_there_is_room() -> None:
    async def run() -> list[object]:
        queue = queue_of(2)
        never = asyncio.Event()
        await _hand_over(queue, ["a"], never.wait)  # type: ignore[list-item]
        await _hand_over(queue, ["b"], never.wait)  # type: ignore[list-item]
        return [queue.get_nowait(), queue.get_nowait()]

    assert asyncio.run(run()) == [["a"], ["b"]]


def test_a_waiting_fetch_is_dropped_when_the_queue_is_cleared_and_nothing_is_raised() -> None:
    """Clearing the queue (Faust's flow control does, when a rebalance starts)
    cancels a waiting put: the hand-over returns, the fetch is not queued."""

    async def run() -> tuple[bool, int]:
        queue = queue_of(1)
        never = asyncio.Event()
        queue.put_nowait(["first"])
        waiting = asyncio.ensure_future(_hand_over(queue, ["second"], never.wait))  # type: ignore[list-item]
        await asyncio.sleep(0.01)
        assert not waiting.done()  # full: it waits for room
        queue.clear()
        await asyncio.wait_for(waiting, 1)
        return waiting.exception() is None, queue.qsize()

    assert asyncio.run(run()) == (True, 0)


def test_a_waiting_fetch_gives_up_when_the_flow_is_suspended_or_takes_the_room_freed() -> None:
    async def run() -> tuple[int, list[object]]:
        queue = queue_of(1)
        suspended = asyncio.Event()
        queue.put_nowait(["first"])
        waiting = asyncio.ensure_future(_hand_over(queue, ["second"], suspended.wait))  # type: ignore[list-item]
        await asyncio.sleep(0.01)
        suspended.set()
        await asyncio.wait_for(waiting, 1)
        dropped = queue.qsize()  # still only the first: the second was dropped
        suspended.clear()
        freed = asyncio.ensure_future(_hand_over(queue, ["third"], suspended.wait))  # type: ignore[list-item]
        await asyncio.sleep(0.01)
        first = queue.get_nowait()
        await asyncio.wait_for(freed, 1)
        return dropped, [first, queue.get_nowait()]

    assert asyncio.run(run()) == (1, [["first"], ["third"]])


# ------------------------------------------------------------------ the fetch loop
TOPIC = "orders"
PARTITION = TP(TOPIC, 0)
LOG_END = 100
"""Offsets 0..99 in the partition's log."""


class FetchLoopRig:
    """What ``IntakeConsumer._drain_messages`` uses of Faust's consumer, over
    one partition's log: each fetch brings up to ``per_fetch`` messages from
    the position, as aiokafka does, and a seek moves the position."""

    def __init__(
        self, intake: Intake, position: int, per_fetch: int = 3 * HAND_OVER_EVERY
    ) -> None:
        self.intake = intake
        self.position = position
        self.per_fetch = per_fetch
        self.empty_fetches = 0
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._stopped = asyncio.Event()
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self._commit_every = None
        self._n_acked = 0
        self.app = SimpleNamespace(
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
            consumer_generation_id=1,
        )
        self.suspend_flow = asyncio.Event()
        self.should_stop = False
        self.flow_active = True
        self.consumer_stopped_errors = ()
        self.log = logging.getLogger("fetch-loop-rig")

    async def callback(self, message: Message) -> None:
        raise AssertionError("every message here is the intake's")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        first, self.position = self.position, min(LOG_END, self.position + self.per_fetch)
        if first == LOG_END:
            self.empty_fetches += 1
            if self.empty_fetches > 3:
                self._stopped.set()
        generation = self.app.consumer_generation_id
        for offset in range(first, self.position):
            if self.app.consumer_generation_id != generation:
                return  # Faust's getmany gives up the rest of a fetch so
            yield PARTITION, Message(
                TOPIC, 0, offset, 0.0, 0, [], b"k", b"v", None, generation_id=generation,
            )

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        for tp, offset in partitions.items():
            self.position = offset
            self._read_offset[tp] = offset

    def assignment(self) -> set[TP]:
        return {PARTITION}

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        raise AssertionError("the log has no gaps")

    _make_seeks = IntakeConsumer._make_seeks


async def fold_in_order(
    rig: FetchLoopRig, queue: ThrowableQueue, seek: Callable[[int], Awaitable[None]],
    asked: set[int] | None = None,
) -> list[int]:
    """Run the fetch loop and an agent that folds offsets in order and asks
    once for a seek back when a message comes ahead of its turn (the offsets
    it asked for go in ``asked``); it drops a message of an earlier generation,
    as the agents' ``fetched`` does."""
    folded: list[int] = []
    asked = set() if asked is None else asked

    async def agent() -> None:
        while True:
            for message in await queue.get():
                if message.generation_id != rig.app.consumer_generation_id:
                    continue
                expected = len(folded)
                if message.offset == expected:
                    folded.append(message.offset)
                elif message.offset > expected and expected not in asked:
                    asked.add(expected)
                    await seek(expected)

    task = asyncio.ensure_future(agent())
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    await asyncio.wait_for(IntakeConsumer._drain_messages(rig, fetcher), 5)  # type: ignore[arg-type]
    task.cancel()
    return folded


def test_a_seek_the_agent_asks_for_brings_every_message_back_in_order() -> None:
    """The fetcher had got to offset 5 (a rebalance's recovery sought back to
    0 under it): the agent lets 5.. go and asks for 0; the rest of that fetch is
    not handed over, the seek is made before the next fetch, and 0..99 come."""

    async def run() -> list[int]:
        intake = Intake(SimpleNamespace(consumer_generation_id=1))  # type: ignore[arg-type]
        queue = intake.queues[TOPIC] = queue_of(4)
        rig = FetchLoopRig(intake, position=5)

        async def ask(offset: int) -> None:
            intake.request_seek(PARTITION, offset)

        return await fold_in_order(rig, queue, ask)

    assert asyncio.run(run()) == list(range(LOG_END))


def test_a_seek_made_while_a_fetch_is_handed_over_is_undone() -> None:
    """Why the loop makes the seeks: made from the agent mid-fetch, the loop
    moved the read offset past the sought one and dropped what the seek
    brought as read already; with nothing newer to ask again, nothing more
    was folded (the killed-worker test lost a sixth of its orders so, in CI)."""

    async def run() -> list[int]:
        intake = Intake(SimpleNamespace(consumer_generation_id=1))  # type: ignore[arg-type]
        queue = intake.queues[TOPIC] = queue_of(4)
        rig = FetchLoopRig(intake, position=5)

        async def seek_now(offset: int) -> None:
            await rig.seek_wait({PARTITION: offset})

        return await fold_in_order(rig, queue, seek_now)

    folded = asyncio.run(run())
    assert folded != list(range(LOG_END))
    assert len(folded) < LOG_END


def test_the_fetch_loop_says_how_far_it_read_and_a_seek_takes_it_back() -> None:
    """What the offset order tells a partition whose messages went missing on
    the way from one not fetched yet by (``OffsetOrder`` seeks the first back):
    the last offset the loop took from Kafka, whatever became of it."""

    async def run() -> tuple[dict[TP, int], dict[TP, int]]:
        intake = Intake(SimpleNamespace(consumer_generation_id=1))  # type: ignore[arg-type]
        queue = intake.queues[TOPIC] = queue_of(4)
        rig = FetchLoopRig(intake, position=0)

        async def losing_agent() -> None:
            while True:
                await queue.get()  # every list lost on the way

        task = asyncio.ensure_future(losing_agent())
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        await asyncio.wait_for(IntakeConsumer._drain_messages(rig, fetcher), 5)  # type: ignore[arg-type]
        task.cancel()
        read = dict(intake.fetched)
        intake.request_seek(PARTITION, 40)
        await rig._make_seeks()  # type: ignore[arg-type]
        return read, dict(intake.fetched)

    assert asyncio.run(run()) == ({PARTITION: LOG_END - 1}, {PARTITION: 39})


class RebalanceInCommitRig(FetchLoopRig):
    """A commit the loop makes mid-fetch lasts a whole rebalance: the group's
    generation moves on and the recovery seeks the partition to its commit."""

    def __init__(self, intake: Intake, commit_at: int, committed: int) -> None:
        super().__init__(intake, position=0)
        self._commit_every = 1
        self._n_acked = 1  # every message asks for a commit
        self.commit_at = commit_at
        self.committed = committed
        self.handed = 0

    async def commit(self) -> None:
        self._n_acked = 1
        self.handed += 1
        if self.handed != self.commit_at:
            return
        self.app.consumer_generation_id += 1
        self.intake.fetched.clear()
        self.position = self.committed
        self._read_offset[PARTITION] = self.committed


def test_a_message_fetched_before_a_rebalance_does_not_move_the_read_offset() -> None:
    """The loop waited in a commit while the group rebalanced. Taking the
    message it held as read put the read offset past the recovery's seek, the
    fetch from the commit dropped what came before it as read already, and
    only a seek the agent asked for brought it back."""

    async def run() -> tuple[list[int], set[int]]:
        intake = Intake(SimpleNamespace(consumer_generation_id=1))  # type: ignore[arg-type]
        queue = intake.queues[TOPIC] = queue_of(4)
        rig = RebalanceInCommitRig(intake, commit_at=30, committed=10)
        intake.app = rig.app  # type: ignore[assignment]
        asked: set[int] = set()

        async def ask(offset: int) -> None:
            intake.request_seek(PARTITION, offset)

        return await fold_in_order(rig, queue, ask, asked), asked

    folded, asked = asyncio.run(run())
    assert folded == list(range(LOG_END))
    assert asked == set()  # the fetch from the commit brought every offset in turn


def test_a_list_handed_over_while_the_recovery_seeks_outlives_the_flows_resume() -> None:
    """A recovery resumes the flow after its seek of every partition to its
    commit, and a resume clears the queues Faust's flow control manages: the
    lists the loop handed over from the sought offsets meanwhile were lost,
    and a partition with nothing after them stood still."""

    async def run() -> int:
        app = faust.App("intake-resume-test", broker="kafka://127.0.0.1:1")
        intake = Intake(app)
        queue = intake.queue(TOPIC)
        app.flow_control.resume()  # the recovery's first resume (changelogs read)
        queue.put_nowait([Message(TOPIC, 0, 7, 0.0, 0, [], b"k", b"v", None)])
        app.flow_control.resume()  # after the seek of the streams' partitions
        return queue.qsize()

    assert asyncio.run(run()) == 1
