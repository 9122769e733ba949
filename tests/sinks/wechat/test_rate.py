"""The per-robot budget on a fake clock: N sends in any window, failed ones
count, 45009 blocks a whole window, remembered sends survive a restart."""

from __future__ import annotations

from ctower.sinks.wechat.rate import RateBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_at_most_n_sends_in_any_window() -> None:
    clock = Clock()
    budget = RateBudget(20, 60.0, clock)
    sent: list[float] = []
    for _ in range(200):
        wait = budget.next_free_in()
        clock.now += wait
        assert budget.free() >= 1
        budget.spent()
        sent.append(clock.now)
        clock.now += 0.7  # each send takes a while
    for i in range(len(sent) - 20):
        assert sent[i + 20] - sent[i] >= 60.0  # the 21st is a full window after the 1st
    assert budget.free() < 20


def test_free_counts_down_and_slots_come_back_one_by_one() -> None:
    clock = Clock()
    budget = RateBudget(3, 10.0, clock)
    assert budget.free() == 3 and budget.next_free_in() == 0
    budget.spent()
    clock.now += 1
    budget.spent()
    budget.spent()
    assert budget.free() == 0
    assert budget.next_free_in() == 9.0
    clock.now += 9.0
    assert budget.free() == 1


def test_45009_blocks_a_whole_window() -> None:
    clock = Clock()
    budget = RateBudget(20, 60.0, clock)
    budget.spent()
    budget.exhausted()
    assert budget.free() == 0 and budget.next_free_in() == 60.0
    clock.now += 59.9
    assert budget.free() == 0
    clock.now += 0.1
    assert budget.free() == 20  # the one send ended a window ago too


def test_sends_before_a_restart_still_count() -> None:
    clock = Clock()
    budget = RateBudget(2, 60.0, clock)
    budget.spent(at=clock.now - 30)
    budget.spent(at=clock.now - 70)  # out of the window already
    assert budget.free() == 1
    assert RateBudget(2, 60.0, clock).free() == 2
