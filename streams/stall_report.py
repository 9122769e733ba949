"""A worker stuck in a rebalance says where it waits.

Faust logs which changelog partitions a recovery still waits for, not why.
A recovery that never completes leaves the worker up (its web server
answers) but folding nothing and owning no coupon partition, and the cause
is in what its tasks await: the fetch loop, an agent, a revocation handler.
Once a rebalance (the first recovery at start-up included) has lasted
``STALL_SECONDS``, the worker logs (once per rebalance, WARNING) the await
chain of every task, innermost call last.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import faust
from mode import Service

from ctower.streams.faust_parts import rebalance_state

log = logging.getLogger(__name__)

STALL_SECONDS = 60.0
"""A rebalance on a loaded two-core machine completes in seconds; a minute is stuck."""
CHECK_EVERY = 5.0


def install_stall_report(app: faust.App, stall_seconds: float = STALL_SECONDS) -> None:
    """A service of the app's own: it starts with the app, before the first
    recovery. Not an ``@app.task``: Faust starts those only once the first
    recovery has completed, and a first recovery that never completes is one
    of the stalls to report."""
    app.add_dependency(StallReporter(StallWatch(lambda: rebalance_state(app), stall_seconds)))


class StallReporter(Service):
    """Checks the watch every ``CHECK_EVERY`` seconds while the app runs."""

    def __init__(self, watch: StallWatch, **kwargs: Any) -> None:
        self.watch = watch
        super().__init__(**kwargs)

    @Service.task
    async def _check(self) -> None:
        while not self.should_stop:
            await self.sleep(CHECK_EVERY)
            self.watch.check()


class StallWatch:
    """Times the rebalance under way; its report is made once it is overdue."""

    def __init__(
        self, state: Callable[[], dict[str, bool]], stall_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.stall_seconds = stall_seconds
        self.clock = clock
        self._since: float | None = None
        self._reported = False
        self.reports = 0

    def check(self) -> str | None:
        """The report made now, if one is due."""
        state = self.state()
        if state["recovered"]:
            self._since, self._reported = None, False
            return None
        now = self.clock()
        if self._since is None:
            self._since = now
            return None
        if self._reported or now - self._since < self.stall_seconds:
            return None
        self._reported = True
        self.reports += 1
        flags = ", ".join(f"{k}={v}" for k, v in state.items())
        report = (
            f"rebalance not done after {now - self._since:.0f} s ({flags}); "
            f"where the tasks wait:\n{task_stacks()}"
        )
        log.warning("%s", report)
        return report


def task_stacks(limit: int = 200) -> str:
    """One line per task of the running loop: its await chain, outermost first."""
    try:
        tasks = list(asyncio.all_tasks())[:limit]
    except RuntimeError:
        return "  (no event loop running)"
    lines = []
    for task in tasks:
        chain = " > ".join(
            f"{frame.f_code.co_name}({_short(frame.f_code.co_filename)}:{frame.f_lineno})"
            for frame in _await_chain(task.get_coro())
        )
        name = task.get_name()  # mode names its tasks by their repr: the chain says it
        label = "" if name.startswith(("<", "Task-")) else f"{name}: "
        lines.append(f"  {label}{chain or '(not started)'}")
    return "\n".join(sorted(lines))


def _await_chain(coro: Any) -> Iterator[FrameType]:
    """The frames of a coroutine and of what it awaits, down to the innermost."""
    seen = 0
    while coro is not None and seen < 40:
        seen += 1
        frame = (getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                 or getattr(coro, "ag_frame", None))
        if frame is not None:
            yield frame
        coro = (getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                or getattr(coro, "ag_await", None))


def _short(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    for anchor in ("site-packages", "ctower"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1:])
    return "/".join(parts[-2:])
