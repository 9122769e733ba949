"""The worker's system alerts (streams/watch.py): each condition, injected on a
fake clock, fires once and resolves once it clears. The live worker's side is in
its own tests (test_hostile_input.py)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from ctower.schemas.control import Alert
from ctower.settings import Settings
from ctower.streams.watch import TowerSignals, WorkerWatch
from ctower.system_alerts import SystemAlerts
from ctower.tables.aggregates import STORE_MINUTE
from ctower.tables.window_state import WindowState


class FakeWorker:
    def __init__(self) -> None:
        self.counts = {"scan": 0, "order": 0}
        self.owned = {"scan", "order"}
        self.letters: dict[str, int] = {}
        self.parts: dict[tuple[str, int], tuple[int, int]] = {("ct.scan", 0): (10, 0)}

    def messages(self) -> dict[str, int]:
        return dict(self.counts)

    def owned_streams(self) -> set[str]:
        return set(self.owned)

    def dead_letters(self) -> dict[str, int]:
        return dict(self.letters)

    def partitions(self) -> dict[tuple[str, int], tuple[int, int]]:
        return dict(self.parts)


def _alerts(settings: Settings, sent: list[Alert], clock: Any, name: str = "w") -> SystemAlerts:
    return SystemAlerts(settings, name, "worker-a", sent.append, wall=clock)


def _kinds(sent: list[Alert]) -> list[tuple[str, str]]:
    return [(a.kind, a.status) for a in sent]


def _run(watch: WorkerWatch, clock: Any, seconds: int,
         each: Callable[[], Any] = lambda: None) -> None:
    for _ in range(seconds):
        clock.now += 1
        each()
        watch.check()


def _worker(offline_settings: Callable[..., Settings], clock: Any, **overrides: Any) -> tuple[
        WorkerWatch, FakeWorker, Any, list[Alert]]:
    off = {"system_stream_silent_min_seconds": 0, "system_lag_growing_seconds": 0,
           "system_dead_letters_per_minute": 0, "system_partition_stuck_seconds": 0}
    settings = offline_settings(**{**off, **overrides})
    sent: list[Alert] = []
    fake = FakeWorker()
    watch = WorkerWatch(settings, _alerts(settings, sent, clock), fake, clock=clock)
    return watch, fake, clock, sent


def test_a_stream_silent_past_its_usual_gap_alerts_and_resolves(
    offline_settings, clock
) -> None:
    watch, fake, clock, sent = _worker(offline_settings, clock, system_stream_silent_min_seconds=5,
                                       system_stream_silent_factor=3)

    def every_two_seconds() -> None:
        if int(clock.now) % 2 == 0:
            fake.counts["scan"] += 10
    _run(watch, clock, 20, every_two_seconds)  # a usual gap of 2 s
    assert watch.usual_gap("scan") == 2.0
    assert sent == [], "a steady stream, and one never seen, are not silent"
    _run(watch, clock, 6)
    assert sent == [], "6 s is the threshold: not yet past it"
    _run(watch, clock, 1)
    assert _kinds(sent) == [("system_stream_silent", "open")]
    assert sent[0].evidence["stream"] == "scan" and sent[0].evidence["threshold_s"] == 6
    assert "scan" in sent[0].message and sent[0].key == "system_stream_silent|scan|worker-a"
    _run(watch, clock, 10)
    assert len(sent) == 1, "one alert while it lasts"
    fake.counts["scan"] += 1
    _run(watch, clock, 1)
    assert _kinds(sent)[1] == ("system_stream_silent", "resolved")
    assert sent[1].alert_id == sent[0].alert_id


def test_lag_growing_for_the_window_alerts_and_resolves_when_it_falls(
    offline_settings, clock
) -> None:
    watch, fake, clock, sent = _worker(offline_settings, clock, system_lag_growing_seconds=10,
                                       system_lag_min_growth=100)
    lag = [0]

    def grow() -> None:
        lag[0] += 20
        fake.parts = {("ct.scan", 0): (5, lag[0])}
    _run(watch, clock, 9, grow)
    assert sent == [], "not a whole window yet"
    _run(watch, clock, 3, grow)
    assert _kinds(sent) == [("system_lag_growing", "open")]
    assert sent[0].evidence["growth"] >= 100
    fake.parts = {("ct.scan", 0): (6, 0)}  # caught up
    _run(watch, clock, 1)
    assert _kinds(sent)[1:] == [("system_lag_growing", "resolved")]


def test_a_dead_letter_rate_above_the_threshold_alerts_and_resolves(
    offline_settings, clock
) -> None:
    watch, fake, clock, sent = _worker(offline_settings, clock, system_dead_letters_per_minute=30,
                                       system_dead_letter_window_seconds=10)
    fake.letters = {"not_json": 3}  # 18 a minute: under
    _run(watch, clock, 2)
    assert sent == []
    fake.letters = {"not_json": 3, "missing_field": 4}  # 42 a minute
    _run(watch, clock, 1)
    assert _kinds(sent) == [("system_dead_letter_rate", "open")]
    assert sent[0].evidence["top_reason"] == "missing_field 4"
    _run(watch, clock, 11)  # the window moves past them
    assert _kinds(sent)[1:] == [("system_dead_letter_rate", "resolved")]


def test_a_partition_that_does_not_move_with_messages_waiting_is_stuck(
    offline_settings, clock
) -> None:
    watch, fake, clock, sent = _worker(offline_settings, clock, system_partition_stuck_seconds=5)
    fake.parts = {("ct.scan", 0): (10, 0), ("ct.scan", 1): (7, 3)}
    _run(watch, clock, 5)
    assert sent == []
    _run(watch, clock, 2)
    assert _kinds(sent) == [("system_partition_stuck", "open")]
    assert sent[0].evidence["partition"] == 1 and sent[0].severity == "critical"
    fake.parts[("ct.scan", 1)] = (8, 2)  # it moved
    _run(watch, clock, 1)
    assert _kinds(sent)[1:] == [("system_partition_stuck", "resolved")]


def test_reading_partitions_during_a_recovery_loads_no_state(memory_table: Any) -> None:
    """The watch reads every assigned partition once a second, also while the
    tables recover after a restart. Asking a state for a partition it has not
    loaded loads it, from a table half restored at that point: the agent then
    folded on a position behind the commit and on short windows (the
    killed-worker tests lost orders in CI). A partition the agent does not
    hold yet is skipped; once it holds it (after the recovery), it is read."""
    state = WindowState(
        table=memory_table, source_topic="t.order", specs=[STORE_MINUTE], grace_ms=10_000,
        idle_close_ms=5_000, publish_closed=lambda records, on_acked: None,
        publish_late=lambda record: None,
    )
    processor = SimpleNamespace(topic="t.order", state=state, position=state.position)
    consumer = SimpleNamespace(
        assignment=lambda: {TP("t.order", 0)}, highwater=lambda tp: 120,
        _committed_offset={},  # nothing committed yet: Faust fills it as the recovery ends
    )
    tower = SimpleNamespace(
        processors={"order": processor}, decisions=None, app=SimpleNamespace(consumer=consumer),
    )
    signals = TowerSignals(tower)

    assert signals.partitions() == {}
    assert not state.owns(0), "the watch loaded a partition the agent does not hold"

    state.observe(0, 79, 1_000)  # the agent's first message, after the recovery
    assert signals.partitions() == {("t.order", 0): (0, 120)}
