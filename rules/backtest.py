"""Trying candidate rules on recorded events before they go live.

A threshold changed in the rules file takes effect within a second on every
worker; nothing says beforehand what it would have done. A backtest runs the
rules in force and the candidate side by side over a recorded file (what
``ctower record`` or ``simulate --out`` writes), in event time and in this
process only: the families are built as the worker builds them
(:class:`RuleEngine`), fed through the worker's own hooks (the decision
layer's observers), on in-memory tables. Nothing is sent to Kafka or written
to the store; the outcome is a diff of what the two would have raised.

Time is the events' time. A virtual wall clock follows the newest event time
read so far, so the rules' event clocks see a source fall idle after five
seconds of event time without news, as in a live run, and time-driven
judgements (a lane gone silent, waits leaving their window) run every
``tick_ms`` of event time instead of every second of wall time. Re-sent
events count once within the worker's de-duplication horizon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctower.rules.config import Rules
from ctower.rules.engine import MemoryTable, RuleEngine
from ctower.schemas.control import Alert, CouponSignal
from ctower.schemas.events import Event
from ctower.schemas.master_data import MasterData
from ctower.schemas.tasks import ShipmentTask
from ctower.simulator.jsonl import read_jsonl

TICK_MS = 30_000
"""Event time between two time-driven passes over every key. The worker's
timer runs each wall second; a pass over every key each second of event time
would make a backtest of a day take longer than the day, and what time alone
changes (a shipment going stale, waits leaving a 15-minute window) is judged
in minutes. Alerts that only time raises may so open up to this much later
than live."""
EVALUATE_MS = 1_000
"""Event time between two evaluations of the keys that events touched."""


class _VirtualClock:
    """Wall time as the rules see it in a backtest: the newest event time read."""

    def __init__(self) -> None:
        self.ms = 0

    def advance(self, ts: int) -> None:
        if ts > self.ms:
            self.ms = ts

    def __call__(self) -> float:
        return self.ms / 1000


def _each(
    engines: list[RuleEngine], apply: Callable[[RuleEngine, int, list[Any]], None]
) -> Callable[[int, list[Any]], None]:
    def each(partition: int, items: list[Any]) -> None:
        for engine in engines:
            apply(engine, partition, items)
    return each


class _Forward:
    """Stands in for the worker's re-keying forwarder: one array for partition 0
    per second of event time, as the worker applies a batch's moves together."""

    def __init__(self, apply: Callable[[int, list[Any]], None]) -> None:
        self._apply = apply
        self._pending: list[Any] = []

    def add(self, key: str, message: tuple[int, int], items: list[Any]) -> None:
        self._pending.extend(items)

    def add_each(
        self, message: tuple[int, int], items: list[Any], key_of: Callable[[Any], str]
    ) -> None:
        self._pending.extend(items)

    def flush(self) -> None:
        if self._pending:
            items, self._pending = self._pending, []
            self._apply(0, items)


class _Direct:
    """Stands in for a family fed straight from its stream (pickup, service)."""

    def __init__(self, engines: list[RuleEngine], family: str) -> None:
        self.engines = engines
        self.family = family

    def apply(self, partition: int, source: str, offset: int, events: Iterable[Any]) -> None:
        events = list(events)
        for engine in self.engines:
            getattr(engine, self.family).apply(partition, source, offset, events)


def _feed_class() -> type:
    """The decision layer's event hooks on an object with the stand-ins they use,
    so a backtest turns events into moves and lane events exactly as the worker."""
    from ctower.streams.decisions import DecisionLayer

    return type(
        "_Feed",
        (),
        {
            name: getattr(DecisionLayer, name)
            for name in ("observer", "_scans", "_orders", "_inventory", "_logistics", "_pickups",
                         "_service")
        },
    )


class _Seen:
    """Event identities within the de-duplication horizon (a re-send counts once)."""

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self.seen: dict[tuple[str, str], int] = {}
        self.minutes: dict[int, list[tuple[str, str]]] = {}
        self.duplicates = 0

    def first(self, stream: str, event: Event, newest: int) -> bool:
        if self.horizon_ms <= 0:
            return True
        key = (stream, event.identity())
        if key in self.seen:
            self.duplicates += 1
            return False
        ts: int = event.ts  # type: ignore[assignment]
        minute = ts - ts % 60_000
        self.seen[key] = minute
        self.minutes.setdefault(minute, []).append(key)
        cut = newest - self.horizon_ms - 60_000
        if min(self.minutes) < cut:
            for old in [m for m in self.minutes if m < cut]:
                for gone in self.minutes.pop(old):
                    if self.seen.get(gone) == old:
                        del self.seen[gone]
        return True


@dataclass(slots=True)
class Outcome:
    """What one set of rules raised over the file."""

    alerts: list[Alert] = field(default_factory=list)
    signals: list[CouponSignal] = field(default_factory=list)
    tasks: list[ShipmentTask] = field(default_factory=list)

    def opened(self) -> list[Alert]:
        return [a for a in self.alerts if a.status == "open"]


def alert_identity(alert: Alert) -> tuple[str, str, int]:
    return (alert.kind, alert.key, alert.opened_at)


def signal_identity(signal: CouponSignal) -> tuple[str, str, str, str, bool, int]:
    return (signal.campaign_id, signal.store_id, signal.cause, signal.sku or "", signal.active,
            signal.ts)


@dataclass(slots=True)
class BacktestResult:
    messages: int = 0
    events: int = 0
    duplicates: int = 0
    first_ts: int = 0
    last_ts: int = 0
    seconds: float = 0.0
    live: Outcome = field(default_factory=Outcome)
    candidate: Outcome = field(default_factory=Outcome)

    @property
    def added(self) -> list[Alert]:
        """Alerts the candidate opens that the rules in force do not (same kind, key, time)."""
        live = {alert_identity(a) for a in self.live.opened()}
        return [a for a in self.candidate.opened() if alert_identity(a) not in live]

    @property
    def removed(self) -> list[Alert]:
        candidate = {alert_identity(a) for a in self.candidate.opened()}
        return [a for a in self.live.opened() if alert_identity(a) not in candidate]

    @property
    def decisions_added(self) -> list[CouponSignal]:
        """Coupon throttles, pauses and re-openings only the candidate decides."""
        live = {signal_identity(s) for s in self.live.signals}
        return [s for s in self.candidate.signals if signal_identity(s) not in live]

    @property
    def decisions_removed(self) -> list[CouponSignal]:
        candidate = {signal_identity(s) for s in self.candidate.signals}
        return [s for s in self.live.signals if signal_identity(s) not in candidate]

    def per_kind(self) -> dict[str, tuple[int, int]]:
        """Kind -> (added, removed), kinds with a change only."""
        counts: dict[str, list[int]] = {}
        for alert in self.added:
            counts.setdefault(alert.kind, [0, 0])[0] += 1
        for alert in self.removed:
            counts.setdefault(alert.kind, [0, 0])[1] += 1
        return {kind: (n[0], n[1]) for kind, n in sorted(counts.items())}

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.decisions_added or self.decisions_removed)


def run_backtest(
    path: str | Path,
    live_rules: Rules,
    candidate_rules: Rules | None,
    master: MasterData | None,
    *,
    language: str = "en",
    dedup_horizon_ms: int = 960_000,
    tick_ms: int = TICK_MS,
    progress: Callable[[int], None] | None = None,
) -> BacktestResult:
    """Both sets of rules over the file at ``path``, in event time, in this process
    (``candidate_rules`` None: the rules in force alone, for what they raise)."""
    import time

    started = time.monotonic()
    result = BacktestResult()
    clock = _VirtualClock()
    engines: list[RuleEngine] = []
    runs = [(live_rules, result.live)]
    if candidate_rules is not None:
        runs.append((candidate_rules, result.candidate))
    for rules, outcome in runs:
        engines.append(RuleEngine(
            MemoryTable(), (lambda r=rules: r), master, language,  # type: ignore[misc]
            alert=outcome.alerts.append, signal=outcome.signals.append, clock=clock,
            task=outcome.tasks.append, member_hints=True,
        ))
    feed: Any = _feed_class()()
    feed.shadow = None
    feed.stock_moves = moves = _Forward(_each(engines, RuleEngine.apply_moves))
    feed.lanes = lanes = _Forward(_each(engines, RuleEngine.apply_lane_events))
    feed.shipping = shipping = _Forward(_each(engines, RuleEngine.apply_shipping))
    feed.pickup = _Direct(engines, "pickup")
    feed.service = _Direct(engines, "service")
    seen = _Seen(dedup_horizon_ms)
    evaluated = ticked = 0
    for number, item in enumerate(read_jsonl(path), 1):
        result.messages += 1
        if progress is not None:
            progress(1)
        events = [item.event] if item.event is not None else list(item.contained)
        fresh: list[Event] = []
        low = 0
        for event in events:
            ts: int = event.ts  # type: ignore[assignment]
            clock.advance(ts)
            if seen.first(item.stream, event, clock.ms):
                low = min(low, ts) if fresh else ts
                fresh.append(event)
        if not fresh:
            continue
        result.events += len(fresh)
        result.first_ts = min(result.first_ts or low, low)
        result.last_ts = clock.ms
        hook = feed.observer(item.stream)
        if hook is not None:
            hook(0, number, fresh)
        if clock.ms - evaluated >= EVALUATE_MS:
            evaluated = clock.ms
            moves.flush()
            lanes.flush()
            shipping.flush()
            for engine in engines:
                engine.evaluate_touched()
        if clock.ms - ticked >= tick_ms:
            ticked = clock.ms
            for engine in engines:
                engine.tick()
    moves.flush()
    lanes.flush()
    shipping.flush()
    for engine in engines:
        engine.evaluate_touched()
    result.duplicates = seen.duplicates
    result.seconds = time.monotonic() - started
    return result
