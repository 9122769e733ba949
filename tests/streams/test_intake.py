"""The fetch hand-over of ``streams/intake.py``, no broker: what a rebalance
does to a fetch waiting for room on its agent's queue."""

from __future__ import annotations

import asyncio

from mode.utils.queues import FlowControlEvent, ThrowableQueue

from ctower.streams.intake import _hand_over


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
