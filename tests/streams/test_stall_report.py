"""A rebalance that does not end is reported once, with where the tasks wait."""

from __future__ import annotations

import asyncio

from ctower.streams.stall_report import StallWatch, task_stacks


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_stuck_rebalance_is_reported_once_and_a_new_one_again() -> None:
    state = {"recovered": False, "rebalancing": True, "in_recovery": True,
             "recovery_completed": False}
    clock = Clock()
    watch = StallWatch(lambda: dict(state), stall_seconds=60, clock=clock)
    assert watch.check() is None  # the rebalance starts being timed
    clock.now = 59
    assert watch.check() is None
    clock.now = 61
    report = watch.check()
    assert report is not None and "after 61 s" in report and "in_recovery=True" in report
    clock.now = 200
    assert watch.check() is None and watch.reports == 1  # once per rebalance
    state["recovered"] = True
    assert watch.check() is None
    state["recovered"] = False
    clock.now = 300
    assert watch.check() is None
    clock.now = 361
    assert watch.check() is not None and watch.reports == 2


def test_the_report_names_what_each_task_awaits() -> None:
    async def fetch_loop_waits_for_room(room: asyncio.Event) -> None:
        await hand_over(room)

    async def hand_over(room: asyncio.Event) -> None:
        await room.wait()

    async def main() -> str:
        room = asyncio.Event()
        task = asyncio.create_task(fetch_loop_waits_for_room(room), name="fetcher")
        await asyncio.sleep(0)
        stacks = task_stacks()
        room.set()
        await task
        return stacks

    stacks = asyncio.run(main())
    line = next(line for line in stacks.splitlines() if line.startswith("  fetcher: "))
    assert "fetch_loop_waits_for_room(" in line and "> hand_over(" in line
    assert line.index("fetch_loop_waits_for_room") < line.index("hand_over")
    assert "> wait(" in line  # down into asyncio's Event.wait
