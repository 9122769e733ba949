"""Logistics exceptions per lane (a carrier in a region).

Shipment events are keyed by shipment, so a lane's shipments are spread over
every partition; the worker re-keys them by ``carrier|region`` onto the
internal ``lanes`` topic (:class:`LaneEvent`), and one partition then sees a
lane whole. Alerts are per lane, not per shipment: in normal traffic a few
shipments of every busy lane are late or fail (the simulator's base rate is
7.5% late, 2.5% failed), and an alert per shipment would bury the one that
matters, a carrier that stopped moving parcels in a region.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from msgspec import Struct

from ctower.tables.rules.alert_book import AlertBook, Finding
from ctower.tables.rules.config import LogisticsRules, Rules
from ctower.tables.rules.rule_state import RuleState

MINUTE = 60_000
_FORGET_MS = 3 * 86_400_000
"""A shipment without an update for three days is dropped from the lane."""


class LaneEvent(Struct, array_like=True):
    shipment_id: str
    status: str
    ts: int
    eta: int | None
    carrier: str
    region: str
    source: str
    offset: int


class Lane(Struct, kw_only=True, array_like=True):
    open: dict[str, tuple[str, int, int]] = {}
    """shipment_id -> (status, last update, eta or 0)."""
    finished: list[tuple[int, str]] = []
    """(time, on_time | late | failed | returned)."""
    progress: dict[int, int] = {}
    """Minute -> progress updates (anything but ``created``)."""
    last_progress: int = 0


class LaneRules:
    def __init__(
        self, state: RuleState[Lane], book: AlertBook, rules: Callable[[], Rules]
    ) -> None:
        self.state = state
        self.book = book
        self.rules = rules
        self._touched: dict[int, set[str]] = {}
        self._evaluated_at: dict[int, int] = {}

    def apply(self, partition: int, events: Iterable[LaneEvent]) -> None:
        """Apply one array of events (whole source messages, in source order)."""
        state = self.state
        evaluate = lambda: self._evaluate_if_time_passed(partition)  # noqa: E731
        for ev in state.fresh_items(partition, events, evaluate):
            key = f"{ev.carrier}|{ev.region}"
            lane = state.get(partition, key) or Lane(open={}, finished=[], progress={})
            self._event(lane, ev)
            state.put(partition, key, lane)
            self._touched.setdefault(partition, set()).add(key)
        evaluate()

    def _evaluate_if_time_passed(self, partition: int) -> None:
        now = self.state.now(partition)
        if now - self._evaluated_at.get(partition, 0) >= 1_000:
            self._evaluated_at[partition] = now
            for key in self._touched.pop(partition, ()):
                self.evaluate(partition, key, now)

    @staticmethod
    def _event(lane: Lane, ev: LaneEvent) -> None:
        sid, status, ts = ev.shipment_id, ev.status, ev.ts
        eta = ev.eta or 0
        if status == "created":
            if sid not in lane.open:
                lane.open[sid] = (status, ts, eta)
            return
        minute = ts - ts % MINUTE
        lane.progress[minute] = lane.progress.get(minute, 0) + 1
        lane.last_progress = max(lane.last_progress, ts)
        if status == "delivered":
            lane.open.pop(sid, None)
            lane.finished.append((ts, "on_time" if not eta or ts <= eta else "late"))
        elif status == "failed":
            lane.open.pop(sid, None)
            lane.finished.append((ts, "failed"))
        elif status == "returned":
            if lane.open.pop(sid, None) is not None:
                lane.finished.append((ts, "returned"))
        else:
            lane.open[sid] = (status, ts, eta or lane.open.get(sid, ("", 0, 0))[2])

    def evaluate_touched(self) -> None:
        touched, self._touched = self._touched, {}
        for partition, keys in touched.items():
            if self.state.owns(partition):
                now = self.state.now(partition)
                for key in keys:
                    self.evaluate(partition, key, now)

    def tick(self) -> None:
        """Staleness comes from time passing, not from events: look at every lane."""
        for partition in self.state.partitions():
            now = self.state.now(partition)
            if not now:
                continue
            for key, _ in self.state.items(partition):
                self.evaluate(partition, key, now)
            self.book.expire(partition, now)

    def evaluate(self, partition: int, key: str, now: int) -> None:
        lane = self.state.get(partition, key)
        if lane is None:
            return
        rules = self.rules().logistics
        carrier, region = key.split("|", 1)
        if self._trim(lane, now, rules):
            self.state.touch(partition, key)
        scope = {"carrier": carrier, "region": region}
        base = {"carrier": carrier, "region": region}
        self._stale(partition, key, lane, now, rules, scope, base)
        self._failed(partition, key, lane, now, rules, scope, base)
        self._eta(partition, key, lane, now, rules, scope, base)
        self._on_time(partition, key, lane, now, rules, scope, base)

    @staticmethod
    def _trim(lane: Lane, now: int, rules: LogisticsRules) -> bool:
        changed = False
        keep = now - int(max(rules.failed_window_minutes, rules.on_time_window_minutes) * MINUTE)
        if lane.finished and lane.finished[0][0] < keep:
            lane.finished = [f for f in lane.finished if f[0] >= keep]
            changed = True
        horizon = now - 70 * MINUTE
        old = [m for m in lane.progress if m < horizon]
        for minute in old:
            del lane.progress[minute]
        forgotten = [s for s, (_, last, _) in lane.open.items() if last < now - _FORGET_MS]
        for sid in forgotten:
            del lane.open[sid]
        return changed or bool(old) or bool(forgotten)

    def _stale(self, partition: int, key: str, lane: Lane, now: int, rules: LogisticsRules,
               scope: dict[str, str], base: dict[str, object]) -> None:
        stale = sorted(
            (last, sid)
            for sid, (status, last, _) in lane.open.items()
            if now - last > rules.stale_minutes.get(status, float("inf")) * MINUTE
        )
        silence_ms = now - lane.last_progress if lane.last_progress else 0
        before = lane.last_progress - 60 * MINUTE
        rate = sum(n for m, n in lane.progress.items() if m >= before) / 60
        expected = rate * rules.silence_minutes
        silent = (
            bool(lane.open)
            and silence_ms >= rules.silence_minutes * MINUTE
            and expected >= rules.silence_min_expected
        )
        alert_key = f"shipment_stale:{key}"
        if len(stale) >= rules.min_stale or silent:
            evidence = {
                **base,
                "stale": len(stale),
                "open": len(lane.open),
                "oldest": [sid for _, sid in stale[:5]],
                "silence_min": round(silence_ms / MINUTE, 1),
                "expected_updates": round(expected, 1),
                "threshold_stale": rules.min_stale,
                "threshold_silence_min": rules.silence_minutes,
                "window_start": lane.last_progress,
                "window_end": now,
            }
            self.book.hold(partition, alert_key, Finding(
                kind="shipment_stale", severity="critical" if silent else "warning",
                evidence=evidence, action={"kind": "lane"}, **scope), now)
        else:
            self.book.clear(partition, alert_key, now, {"stale": len(stale)})

    def _failed(self, partition: int, key: str, lane: Lane, now: int, rules: LogisticsRules,
                scope: dict[str, str], base: dict[str, object]) -> None:
        since = now - int(rules.failed_window_minutes * MINUTE)
        recent = [outcome for ts, outcome in lane.finished if ts >= since]
        failed = sum(1 for o in recent if o in ("failed", "returned"))
        share = failed / len(recent) if recent else 0.0
        alert_key = f"shipment_failed:{key}"
        if failed >= rules.failed_min and share >= rules.failed_share:
            self.book.hold(partition, alert_key, Finding(
                kind="shipment_failed", severity="warning",
                evidence={**base, "failed": failed, "finished": len(recent),
                          "share_pct": round(100 * share, 1),
                          "threshold_pct": round(100 * rules.failed_share, 1),
                          "window_minutes": rules.failed_window_minutes,
                          "window_start": since, "window_end": now},
                action={"kind": "lane"}, **scope), now)
        else:
            self.book.clear(partition, alert_key, now, {"failed": failed})

    def _eta(self, partition: int, key: str, lane: Lane, now: int, rules: LogisticsRules,
             scope: dict[str, str], base: dict[str, object]) -> None:
        overdue = now - int(rules.eta_grace_minutes * MINUTE)
        past = [sid for sid, (_, _, eta) in lane.open.items() if eta and eta < overdue]
        share = len(past) / len(lane.open) if lane.open else 0.0
        alert_key = f"eta_passed:{key}"
        if len(past) >= rules.eta_min and share >= rules.eta_share:
            self.book.hold(partition, alert_key, Finding(
                kind="eta_passed", severity="warning",
                evidence={**base, "past_eta": len(past), "open": len(lane.open),
                          "share_pct": round(100 * share, 1), "examples": sorted(past)[:5],
                          "threshold": rules.eta_min,
                          "grace_minutes": rules.eta_grace_minutes, "window_end": now},
                action={"kind": "lane"}, **scope), now)
        else:
            self.book.clear(partition, alert_key, now, {"past_eta": len(past)})

    def _on_time(self, partition: int, key: str, lane: Lane, now: int, rules: LogisticsRules,
                 scope: dict[str, str], base: dict[str, object]) -> None:
        since = now - int(rules.on_time_window_minutes * MINUTE)
        delivered = [o for ts, o in lane.finished if ts >= since and o in ("on_time", "late")]
        on_time = sum(1 for o in delivered if o == "on_time")
        rate = on_time / len(delivered) if delivered else 1.0
        alert_key = f"carrier_on_time:{key}"
        if len(delivered) >= rules.on_time_min_deliveries and rate < rules.on_time_below:
            self.book.hold(partition, alert_key, Finding(
                kind="carrier_on_time", severity="warning",
                evidence={**base, "on_time_pct": round(100 * rate, 1),
                          "deliveries": len(delivered),
                          "threshold_pct": round(100 * rules.on_time_below, 1),
                          "window_minutes": rules.on_time_window_minutes,
                          "window_start": since, "window_end": now},
                action={"kind": "lane"}, **scope), now)
        else:
            self.book.clear(partition, alert_key, now, {"on_time_pct": round(100 * rate, 1)})
