"""The worker watching itself: its streams falling silent for longer than their
usual gap, its consumer lag growing, its dead-letter rate, a partition of its
that does not move while messages wait.

Judged once a second from counters the worker already keeps (never on a
message's path); what it finds goes out as a system alert
(:mod:`ctower.system_alerts`) through the decision layer, as the rules' do.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ctower.settings import Settings
from ctower.system_alerts import SystemAlerts

log = logging.getLogger(__name__)


class WorkerSignals(Protocol):
    """What the worker's watch reads; the live worker's is :class:`TowerSignals`."""

    def messages(self) -> dict[str, int]:
        """Messages read so far per stream (this worker's partitions)."""
        ...

    def owned_streams(self) -> set[str]:
        """Streams of which this worker holds at least one partition."""
        ...

    def dead_letters(self) -> dict[str, int]:
        """Dead letters so far, by reason."""
        ...

    def partitions(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(topic, partition) -> (how far it got, messages waiting) for the
        partitions this worker holds whose end Kafka has told it."""
        ...


@dataclass
class _Stream:
    count: int = 0
    changed_at: float = 0.0
    seen: int = 0
    """Seconds in which messages came: the usual gap is known after a few."""
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=200))


GAP_PERCENTILE = 0.95
MIN_CHANGES = 3
"""A stream is judged silent only once messages came in this many seconds."""


class WorkerWatch:
    """A worker's checks, run once a second (``check``)."""

    def __init__(
        self, settings: Settings, alerts: SystemAlerts, signals: WorkerSignals,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.alerts = alerts
        self.signals = signals
        self.clock = clock
        self.started = clock()
        self.streams: dict[str, _Stream] = {}
        self.lag_samples: deque[tuple[float, int]] = deque()
        self.dead_samples: deque[tuple[float, int, dict[str, int]]] = deque(
            [(self.started, 0, {})])  # dead letters count from the start
        self.positions: dict[tuple[str, int], tuple[int, float]] = {}
        """(topic, partition) -> (position, when it last moved or had nothing waiting)."""

    def check(self) -> None:
        now = self.clock()
        s = self.settings
        if s.system_stream_silent_min_seconds > 0:
            self._silent(now)
        partitions = self.signals.partitions()
        if s.system_lag_growing_seconds > 0:
            self._lag(now, partitions)
        if s.system_dead_letters_per_minute > 0:
            self._dead_letters(now)
        if s.system_partition_stuck_seconds > 0:
            self._stuck(now, partitions)

    def usual_gap(self, stream: str) -> float | None:
        state = self.streams.get(stream)
        if state is None or state.seen < MIN_CHANGES:
            return None
        gaps = sorted(state.gaps) or [1.0]
        return gaps[min(len(gaps) - 1, int(len(gaps) * GAP_PERCENTILE))]

    def _silent(self, now: float) -> None:
        s = self.settings
        owned = self.signals.owned_streams()
        for stream, count in self.signals.messages().items():
            state = self.streams.setdefault(stream, _Stream(count=count, changed_at=now))
            if count != state.count:
                if state.seen:
                    state.gaps.append(now - state.changed_at)
                state.count, state.changed_at = count, now
                state.seen += 1
            usual = self.usual_gap(stream)
            threshold = max(s.system_stream_silent_min_seconds,
                            s.system_stream_silent_factor * (usual or 0.0))
            silent = now - state.changed_at
            holds: bool | None
            if usual is None or stream not in owned:
                holds = None if stream in owned else False  # not ours now: not silent here
            else:
                holds = silent > threshold
            self.alerts.judge("system_stream_silent", stream, holds, {
                "stream": stream, "silent_s": round(silent, 1),
                "usual_gap_s": round(usual or 0.0, 1), "threshold_s": round(threshold, 1),
            })

    def _lag(self, now: float, partitions: Mapping[tuple[str, int], tuple[int, int]]) -> None:
        s = self.settings
        window = s.system_lag_growing_seconds
        lag = sum(waiting for _, waiting in partitions.values())
        samples = self.lag_samples
        samples.append((now, lag))
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()
        start_t, start_lag = samples[0]
        if now - start_t < window:
            return  # not a whole window yet
        lowest = min(value for _, value in samples)
        growth = lag - start_lag
        holds = growth >= s.system_lag_min_growth and lowest >= start_lag
        clear = lag <= start_lag or lag < s.system_lag_min_growth
        self.alerts.judge("system_lag_growing", "", True if holds else (False if clear else None),
                          {"lag": lag, "growth": growth, "window_s": round(now - start_t)})

    def _dead_letters(self, now: float) -> None:
        s = self.settings
        window = s.system_dead_letter_window_seconds
        by_reason = self.signals.dead_letters()
        total = sum(by_reason.values())
        samples = self.dead_samples
        samples.append((now, total, by_reason))
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()
        _, start_total, start_reasons = samples[0]
        count = total - start_total
        per_minute = count * 60.0 / window
        reasons = {r: n - start_reasons.get(r, 0) for r, n in by_reason.items()}
        top = max(reasons.items(), key=lambda item: item[1], default=("", 0))
        holds = per_minute > s.system_dead_letters_per_minute
        self.alerts.judge("system_dead_letter_rate", "", holds, {
            "dead_letters": count, "per_minute": round(per_minute, 1), "window_s": round(window),
            "threshold": s.system_dead_letters_per_minute,
            "top_reason": f"{top[0]} {top[1]}" if top[1] else "-",
        })

    def _stuck(self, now: float, partitions: Mapping[tuple[str, int], tuple[int, int]]) -> None:
        limit = self.settings.system_partition_stuck_seconds
        seen = set()
        for tp, (position, waiting) in partitions.items():
            seen.add(tp)
            before = self.positions.get(tp)
            if before is None or before[0] != position or waiting == 0:
                self.positions[tp] = (position, now)
                since = now
            else:
                since = before[1]
            stuck = now - since
            topic, partition = tp
            self.alerts.judge("system_partition_stuck", f"{topic}:{partition}", stuck > limit, {
                "topic": topic, "partition": partition, "stuck_s": round(stuck, 1),
                "lag": waiting, "position": position,
            }, severity="critical")
        for tp in list(self.positions):
            if tp not in seen:  # given to another worker: not stuck here any more
                del self.positions[tp]
                self.alerts.judge("system_partition_stuck", f"{tp[0]}:{tp[1]}", False,
                                  {"topic": tp[0], "partition": tp[1], "reassigned": True})


class TowerSignals:
    """The live worker's counters, read for the watch and for ``/metrics``."""

    def __init__(self, tower: Any) -> None:
        self.tower = tower

    def messages(self) -> dict[str, int]:
        return {stream: proc.messages for stream, proc in self.tower.processors.items()}

    def owned_streams(self) -> set[str]:
        assigned = {tp.topic for tp in self._assignment()}
        return {stream for stream, proc in self.tower.processors.items() if proc.topic in assigned}

    def dead_letters(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for proc in self.tower.processors.values():
            for reason, n in proc.dead_letters.items():
                total[reason] = total.get(reason, 0) + n
        if self.tower.decisions is not None:
            bad = sum(p.bad for p in self.tower.decisions.processors.values())
            if bad:
                total["internal_undecodable"] = total.get("internal_undecodable", 0) + bad
        return total

    def _assignment(self) -> set[Any]:
        try:
            return set(self.tower.app.consumer.assignment())
        except Exception:  # no consumer yet (starting, stopping)
            return set()

    def partitions(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(committed, lag) of the agents' partitions: Kafka's end minus the
        group's commit (the start, while nothing is committed). The commit,
        not what was folded, says a partition moves: messages folded whose acks
        wait (a dead letter Kafka refuses) are still stuck."""
        tower = self.tower
        procs: dict[str, Any] = {proc.topic: proc for proc in tower.processors.values()}
        if tower.decisions is not None:
            procs.update({p.topic: p for p in tower.decisions.processors.values()})
        consumer = tower.app.consumer
        committed = getattr(consumer, "_committed_offset", {})
        found: dict[tuple[str, int], tuple[int, int]] = {}
        for tp in self._assignment():
            proc = procs.get(tp.topic)
            if proc is None:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:
                high = None
            if high is None:
                continue
            nxt = committed.get(tp)
            if nxt is None:  # nothing committed yet (Faust keeps no 0 either)
                # Only a partition the agent holds: asking a state for one it has
                # not loaded loads it, and during the recovery after a restart that
                # loaded a half-restored table. Its position was then behind the
                # commit and its windows short, and the agent folded on that: the
                # killed-worker tests lost orders (1 to 16%) in CI.
                if not proc.state.owns(tp.partition) or proc.position(tp.partition) < 0:
                    continue  # nothing read either: cannot tell
                nxt = 0  # read, never committed: from the group's start (earliest)
            found[(tp.topic, tp.partition)] = (nxt, max(0, high - nxt))
        return found


def install_worker_watch(tower: Any) -> WorkerWatch:
    """Watch the worker once a second; its system alerts go out as the rules' do."""
    settings: Settings = tower.settings
    app = tower.app
    decisions = tower.decisions
    assert decisions is not None

    alerts = SystemAlerts(settings, f"worker-{settings.worker_web_port}", settings.worker_url,
                          decisions.publish_alert)
    watch = WorkerWatch(settings, alerts, TowerSignals(tower))
    tower.watch = watch

    @app.timer(interval=1.0)
    async def system_watch() -> None:
        if app.rebalancing:
            return  # positions and ends are in flux; judged again a second later
        try:
            watch.check()
        except Exception:  # the watch must never take the worker down
            log.exception("system watch failed this second")

    return watch


