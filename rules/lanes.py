"""Logistics exceptions per lane (a carrier in a region).

Shipment events are keyed by shipment, so a lane's shipments are spread over
every partition; the worker re-keys them by ``carrier|region`` onto the
internal ``lanes`` topic (:class:`LaneEvent`), and one partition then sees a
lane whole. Alerts are per lane, not per shipment: in normal traffic a few
shipments of every busy lane are late or fail (the simulator's base rate is
7.5% late, 2.5% failed), and an alert per shipment would bury the one that
matters, a carrier that stopped moving parcels in a region.

The logistics window is ``silence_minutes`` (15): a lane that sent no update
for that long while its open shipments, judged by how long the lane's own
shipments usually stay in each stage, should have made at least
``silence_min_expected`` of them, is silent. Counting what the open shipments
owe, rather than the lane's hourly rate, is what keeps the rule quiet at
night (few shipments in flight owe few updates, however busy the evening
was) and in thin lanes, and lets it fire on a busy lane one window after the
carrier stops, long before any single shipment exceeds its stage's allowance.
The stage allowances (``stale_minutes``) remain the rule for single stuck
shipments.

Shares (failed deliveries, on-time rate) are judged with a Wilson score
bound at ``confidence``: 13 of 20 deliveries on time is chance in a thin lane
at night, 130 of 200 is a carrier getting worse.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable
from functools import partial
from statistics import NormalDist

from msgspec import Struct

from ctower.rules.alert_book import AlertBook, Finding
from ctower.rules.config import LogisticsRules, Rules
from ctower.rules.family import RuleFamily
from ctower.rules.rule_state import RuleState
from ctower.rules.tasks import TaskBook
from ctower.schemas.events import MINUTE

_FORGET_MS = 3 * 86_400_000
"""A shipment without an update for three days is dropped from the lane."""
_DWELL_SAMPLES = 64
"""Dwell times kept per stage: recent enough to follow the carrier, enough for a tail."""
_HOUR = 60 * MINUTE
MEMBER_HINT = "member"
"""Status of a :class:`LaneEvent` that only says which member a shipment is for
(sent by the shipping rules, which see the order): not a shipment event, and with
no event time (``ts`` 0), so it moves no clock."""


class LaneEvent(Struct, array_like=True):
    shipment_id: str
    status: str
    ts: int
    eta: int | None
    carrier: str
    region: str
    source: str
    offset: int
    order_id: str = ""
    district: str = ""
    member_id: str = ""
    guide_id: str = ""
    store: str = ""
    """The store of a guide delivery (its ``origin_id``); empty for any other shipment."""


class Lane(Struct, kw_only=True, array_like=True):
    # New fields go at the end: entities written by an older worker still decode.
    open: dict[str, tuple[str, int, int]] = {}
    """shipment_id -> (status, since when, eta or 0)."""
    finished: list[tuple[int, str]] = []
    """(time, on_time | late | failed | returned)."""
    progress: dict[int, int] = {}
    """Minute -> progress updates (anything but ``created``), for the evidence."""
    last_progress: int = 0
    first_seen: int = 0
    """The lane's oldest event here: how long its dwell times have had to show."""
    dwell: dict[str, list[int]] = {}
    """Stage -> how long the lane's latest shipments stayed in it (ms, oldest first)."""
    done: dict[str, int] = {}
    """Shipments finished while their outcome counts: a repeat of one is not news."""
    orders: dict[str, tuple[str, str]] = {}
    """Open shipment -> (order id, district), for their customer-service tasks."""
    district_failed: dict[str, list[int]] = {}
    """District -> times of its failed or returned deliveries in the failed window."""
    members: dict[str, tuple[str, int]] = {}
    """Shipment -> (member, when told), for its customer-service tasks: told by the
    shipping rules, possibly before the lane hears of the shipment."""


class LaneRules(RuleFamily):
    def __init__(
        self, state: RuleState[Lane], book: AlertBook, rules: Callable[[], Rules],
        tasks: TaskBook | None = None,
    ) -> None:
        """``tasks``: where each stale, overdue or failed shipment becomes a
        customer-service task (none when None; the lane alerts then count them)."""
        super().__init__()
        self.state = state
        self.book = book
        self.rules = rules
        self.tasks = tasks
        self._swept: dict[str, int] = {}
        """Lane -> the event minute its open shipments and members were last
        swept for the forgotten (see :meth:`_trim`)."""

    def apply(self, partition: int, events: Iterable[LaneEvent]) -> None:
        """Apply one array of events (whole source messages, in source order)."""
        state = self.state
        evaluate = partial(self.evaluate_if_time_passed, partition)
        for ev in state.fresh_items(partition, events, evaluate):
            key = f"{ev.carrier}|{ev.region}"
            lane = state.get(partition, key) or Lane()
            if ev.status == MEMBER_HINT:
                self._member(partition, key, lane, ev)
                continue
            finished = ev.shipment_id in lane.done
            self._event(lane, ev)
            if self.tasks is not None and not finished:
                self._task_event(partition, key, lane, ev)
            state.put(partition, key, lane)
            self.touch(partition, key)
        evaluate()

    def due(self, partition: int, now: int) -> set[str]:
        """The lanes touched, and the lanes that went silent.

        A replay at full speed moves event time by minutes between two
        wall-clock ticks, so a lane that went silent is looked at too, not
        only the lanes events touched: its alert then opens at the event
        time the silence crossed the window, not at the next tick.
        """
        keys = super().due(partition, now)
        window = int(self.rules().logistics.silence_minutes * MINUTE)
        for key, lane in self.state.items(partition):
            if lane.open and lane.last_progress and now - lane.last_progress >= window:
                keys.add(key)
        return keys

    @staticmethod
    def _event(lane: Lane, ev: LaneEvent) -> None:
        sid, status, ts = ev.shipment_id, ev.status, ev.ts
        eta = ev.eta or 0
        if not lane.first_seen or ts < lane.first_seen:
            lane.first_seen = ts
        if sid in lane.done and status != "returned":
            return  # sent twice, or a straggler of a finished shipment: counted already
        if status == "created":
            if sid not in lane.open:
                lane.open[sid] = (status, ts, eta)
            return
        before = lane.open.get(sid)
        if before is not None and before[:2] == (status, ts):
            return  # the same update twice (at-least-once producers)
        minute = ts - ts % MINUTE
        lane.progress[minute] = lane.progress.get(minute, 0) + 1
        lane.last_progress = max(lane.last_progress, ts)
        if before is not None and ts >= before[1]:
            samples = lane.dwell.setdefault(before[0], [])
            samples.append(ts - before[1])
            if len(samples) > _DWELL_SAMPLES:
                del samples[: len(samples) - _DWELL_SAMPLES]
        if status == "delivered":
            lane.open.pop(sid, None)
            lane.finished.append((ts, "on_time" if not eta or ts <= eta else "late"))
            lane.done[sid] = ts
        elif status == "failed":
            lane.open.pop(sid, None)
            lane.finished.append((ts, "failed"))
            lane.done[sid] = ts
        elif status == "returned":
            if lane.open.pop(sid, None) is not None:
                lane.finished.append((ts, "returned"))
                lane.done[sid] = ts
        else:
            lane.open[sid] = (status, ts, eta or (before[2] if before else 0))

    def _member(self, partition: int, key: str, lane: Lane, ev: LaneEvent) -> None:
        """Whose shipment it is: kept for its tasks, and added to those already open."""
        if not ev.member_id:
            return
        now = self.state.now(partition)  # a hint carries no event time of its own
        if ev.shipment_id not in lane.done:  # a finished shipment opens no more tasks
            lane.members[ev.shipment_id] = (ev.member_id, now)
            self.state.put(partition, key, lane)
        if self.tasks is not None:
            self.tasks.add_member(partition, ev.shipment_id, ev.member_id, now)

    def _task_event(self, partition: int, key: str, lane: Lane, ev: LaneEvent) -> None:
        """Keep what a shipment's task needs (its order, its district), and tell the
        task book; a failed delivery in a district is counted for the district
        (not called for a shipment already finished: a repeat is not news)."""
        assert self.tasks is not None
        sid = ev.shipment_id
        order_id, district = lane.orders.get(sid, ("", ""))
        order_id, district = ev.order_id or order_id, ev.district or district
        member = lane.members.get(sid, ("", 0))[0]
        if sid in lane.open:
            if (order_id or district) and lane.orders.get(sid) != (order_id, district):
                lane.orders[sid] = (order_id, district)
        else:
            lane.orders.pop(sid, None)
            lane.members.pop(sid, None)
        if ev.status in ("failed", "returned") and district:
            lane.district_failed.setdefault(district, []).append(ev.ts)
        self.tasks.on_event(partition, key, sid, ev.status, ev.ts, order_id, district, member)

    def forget(self, partition: int) -> None:
        super().forget(partition)
        self._swept.clear()  # only saves work: rebuilt as lanes are judged
        if self.tasks is not None:
            self.tasks.forget(partition)

    def tick(self) -> None:
        """Staleness comes from time passing, not from events: look at every lane."""
        for partition in self.state.partitions():
            now = self.state.now(partition)
            if not now:
                continue
            for key, _ in self.state.items(partition):
                self.evaluate(partition, key, now)
            if self.tasks is not None:
                self.tasks.tick(partition, now)
            self.book.expire(partition, now)

    def evaluate(self, partition: int, key: str, now: int) -> None:
        lane = self.state.get(partition, key)
        if lane is None:
            return
        rules = self.rules().logistics
        carrier, region = key.split("|", 1)
        minute = now - now % MINUTE
        sweep = self._swept.get(key) != minute
        if sweep:
            self._swept[key] = minute
        if self._trim(lane, now, rules, sweep):
            self.state.touch(partition, key)
        scope = {"carrier": carrier, "region": region}
        base: dict[str, object] = {"carrier": carrier, "region": region}
        # Silence is measured up to the partition's newest event, not past it: when the
        # whole feed stops (a replay ended, the integration is down) and the clock runs on
        # with the wall, no carrier is to blame for the quiet.
        heard = min(now, self.state.part(partition).clock.max_ts)
        # a walk over every open shipment at every judgement: the allowances looked
        # up once, not computed per shipment (1.7x faster on 2,000 open shipments)
        allowed = {status: minutes * MINUTE for status, minutes in rules.stale_minutes.items()}
        allowance, never = allowed.get, float("inf")
        stale = sorted([
            (last, sid)
            for sid, (status, last, _) in lane.open.items()
            if now - last > allowance(status, never)
        ])
        silence_ms, expected = self._silence(lane, heard, rules)
        base["silence_min"] = round(silence_ms / MINUTE, 1)
        base["expected_updates"] = round(expected, 1)
        base["stale"] = len(stale)
        base["open"] = len(lane.open)
        if self.tasks is not None:
            self._tasks(partition, key, lane, now, rules, stale, scope)
            base["tasks_open"] = self.tasks.open_count(partition, key)
        self._silent(partition, key, lane, now, rules, scope, base, silence_ms, expected)
        self._stale(partition, key, stale, now, rules, scope, base)
        self._failed(partition, key, lane, now, rules, scope, base)
        self._eta(partition, key, lane, now, rules, scope, base)
        self._on_time(partition, key, lane, now, rules, scope, base)

    def _tasks(self, partition: int, key: str, lane: Lane, now: int, rules: LogisticsRules,
               stale: list[tuple[int, str]], scope: dict[str, str]) -> None:
        """Tasks for the lane's stale and overdue shipments, and the districts whose
        deliveries keep failing (few per lane: both read what evaluate computed)."""
        assert self.tasks is not None
        overdue = now - int(rules.eta_grace_minutes * MINUTE)
        self.tasks.sync(
            partition, key, now,
            [(sid, lane.open[sid][0], last) for last, sid in stale],
            [(sid, eta) for sid, (_, _, eta) in lane.open.items() if eta and eta < overdue],
            lane.orders, lane.members,
        )
        since = now - int(rules.failed_window_minutes * MINUTE)
        for district, times in list(lane.district_failed.items()):
            recent = [t for t in times if t >= since]
            if len(recent) != len(times):
                if recent:
                    lane.district_failed[district] = recent
                else:
                    del lane.district_failed[district]
                self.state.touch(partition, key)
            alert_key = f"district_failed:{key}|{district}"
            if len(recent) >= rules.district_failed_min:
                self.book.hold(partition, alert_key, Finding(
                    kind="district_failed", severity="warning",
                    evidence={"carrier": scope["carrier"], "region": scope["region"],
                              "district": district, "failed": len(recent),
                              "threshold": rules.district_failed_min,
                              "window_minutes": rules.failed_window_minutes,
                              "window_start": since, "window_end": now},
                    action={"kind": "lane"}, **scope), now)
            elif self.book.is_open(partition, alert_key):
                self.book.clear(partition, alert_key, now, {"failed": len(recent)})

    @staticmethod
    def _trim(lane: Lane, now: int, rules: LogisticsRules, sweep: bool = True) -> bool:
        """Drop what no rule looks at any more; True if the lane changed.

        The shipments forgotten after three days and the members told an hour
        ago are found by a walk over all of the lane's open shipments and
        members: only with ``sweep`` (the evaluation calls it once per minute
        of event time per lane; a lane is judged several times a second)."""
        changed = False
        keep = now - int(max(rules.failed_window_minutes, rules.on_time_window_minutes) * MINUTE)
        if lane.finished and lane.finished[0][0] < keep:
            lane.finished = [f for f in lane.finished if f[0] >= keep]
            lane.done = {sid: ts for sid, ts in lane.done.items() if ts >= keep}
            changed = True
        horizon = now - 70 * MINUTE
        old = [m for m in lane.progress if m < horizon]
        for minute in old:
            del lane.progress[minute]
        if not sweep:
            return changed or bool(old)
        forgotten = [s for s, (_, last, _) in lane.open.items() if last < now - _FORGET_MS]
        for sid in forgotten:
            del lane.open[sid]
            lane.orders.pop(sid, None)
        # members told of shipments the lane never heard of (or no longer holds)
        unheard = [s for s, (_, told) in lane.members.items()
                   if s not in lane.open and told < now - _HOUR]
        for sid in unheard:
            del lane.members[sid]
        return changed or bool(old) or bool(forgotten) or bool(unheard)

    @staticmethod
    def _silence(lane: Lane, heard: int, rules: LogisticsRules) -> tuple[int, float]:
        """(ms without an update, updates the lane's open shipments owed in that time).

        A shipment's debt is the share of the lane's own shipments that, having
        stayed as long as it had in its stage when the silence began, left the
        stage by ``heard``. A stage counts once the lane has ``silence_min_samples``
        dwell times of it and has been watched for longer than the stage is
        allowed (before that, only the quick exits have been seen). Shipments
        already past their allowance when the silence began owe nothing: they
        are the stage rule's business, and a lane's forgotten parcels must not
        make its ordinary night quiet look like a stop.
        """
        if not lane.last_progress or not lane.open:
            return 0, 0.0
        start = lane.last_progress
        silence = max(0, heard - start)
        if silence < rules.silence_minutes * MINUTE:
            return silence, 0.0
        watched = heard - lane.first_seen
        samples: dict[str, list[int]] = {}
        for stage, times in lane.dwell.items():
            allowed = rules.stale_minutes.get(stage)
            if (
                allowed is not None
                and len(times) >= rules.silence_min_samples
                and watched >= allowed * MINUTE
            ):
                samples[stage] = sorted(times)
        expected = 0.0
        for status, since, _ in lane.open.values():
            left = samples.get(status)
            if left is None:
                continue
            aged = max(0, start - since)
            if aged > rules.stale_minutes[status] * MINUTE:
                continue
            stayed = len(left) - bisect_right(left, aged)
            if not stayed:
                expected += 1.0  # already older than any the lane has seen leave
                continue
            still = len(left) - bisect_right(left, heard - since)
            expected += (stayed - still) / stayed
        return silence, expected

    def _silent(self, partition: int, key: str, lane: Lane, now: int, rules: LogisticsRules,
                scope: dict[str, str], base: dict[str, object], silence_ms: int,
                expected: float) -> None:
        alert_key = f"lane_silent:{key}"
        window = int(rules.silence_minutes * MINUTE)
        if silence_ms >= window and expected >= rules.silence_min_expected:
            if self.book.is_open(partition, alert_key):
                return
            # Opened when the window closed, if the debt was already due then: the
            # rules see a replayed hour in seconds, and the alert should say when the
            # lane crossed the line, not when this evaluation happened to run.
            at = lane.last_progress + window
            entry = self.book.state.get(partition, alert_key)
            cooling = entry.resolved_at + self.book.cooldown_ms() if entry is not None else 0
            then_ms, then_expected = self._silence(lane, at, rules)
            if at < cooling or at >= now or then_expected < rules.silence_min_expected:
                at = now
            else:
                silence_ms, expected = then_ms, then_expected
            before = lane.last_progress - _HOUR
            evidence = {
                **base,
                "silence_min": round(silence_ms / MINUTE, 1),
                "expected_updates": round(expected, 1),
                "rule": "lane_silent",
                "updates_hour_before": sum(n for m, n in lane.progress.items() if m >= before),
                "threshold_expected": rules.silence_min_expected,
                "window_minutes": rules.silence_minutes,
                "window_start": lane.last_progress,
                "window_end": at,
            }
            self.book.hold(partition, alert_key, Finding(
                kind="shipment_stale", severity="critical", evidence=evidence,
                action={"kind": "lane"}, **scope), at)
        else:
            # Resolved when the lane moves again, not when the debt estimate dips (held
            # shipments passing their allowance stop counting while the lane is still
            # dead) nor when the clock steps back (a lagging source catching up).
            entry = self.book.state.get(partition, alert_key)
            opened = entry.open if entry is not None else None
            if opened is not None and lane.last_progress > opened.evidence["window_start"]:
                self.book.clear(partition, alert_key, now, {"silence_min": base["silence_min"]})

    def _stale(self, partition: int, key: str, stale: list[tuple[int, str]], now: int,
               rules: LogisticsRules, scope: dict[str, str], base: dict[str, object]) -> None:
        alert_key = f"shipment_stale:{key}"
        if len(stale) >= rules.min_stale:
            evidence = {
                **base,
                "rule": "stage",
                "oldest": [sid for _, sid in stale[:5]],
                "threshold_stale": rules.min_stale,
                "window_start": stale[0][0],
                "window_end": now,
            }
            self.book.hold(partition, alert_key, Finding(
                kind="shipment_stale", severity="warning", evidence=evidence,
                action={"kind": "lane"}, **scope), now)
        else:
            self.book.clear(partition, alert_key, now, {"stale": len(stale)})

    def _failed(self, partition: int, key: str, lane: Lane, now: int, rules: LogisticsRules,
                scope: dict[str, str], base: dict[str, object]) -> None:
        since = now - int(rules.failed_window_minutes * MINUTE)
        recent = [outcome for ts, outcome in lane.finished if ts >= since]
        failed = sum(1 for o in recent if o in ("failed", "returned"))
        share = failed / len(recent) if recent else 0.0
        low, _ = wilson(failed, len(recent), rules.confidence)
        alert_key = f"shipment_failed:{key}"
        if failed >= rules.failed_min and low >= rules.failed_share:
            self.book.hold(partition, alert_key, Finding(
                kind="shipment_failed", severity="warning",
                evidence={**base, "failed": failed, "finished": len(recent),
                          "share_pct": round(100 * share, 1),
                          "share_low_pct": round(100 * low, 1),
                          "threshold_pct": round(100 * rules.failed_share, 1),
                          "confidence": rules.confidence,
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
                evidence={**base, "past_eta": len(past),
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
        _, high = wilson(on_time, len(delivered), rules.confidence)
        alert_key = f"carrier_on_time:{key}"
        if len(delivered) >= rules.on_time_min_deliveries and high < rules.on_time_below:
            self.book.hold(partition, alert_key, Finding(
                kind="carrier_on_time", severity="warning",
                evidence={**base, "on_time_pct": round(100 * rate, 1),
                          "on_time_high_pct": round(100 * high, 1),
                          "deliveries": len(delivered),
                          "threshold_pct": round(100 * rules.on_time_below, 1),
                          "confidence": rules.confidence,
                          "window_minutes": rules.on_time_window_minutes,
                          "window_start": since, "window_end": now},
                action={"kind": "lane"}, **scope), now)
        else:
            self.book.clear(partition, alert_key, now, {"on_time_pct": round(100 * rate, 1)})


def wilson(hits: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score bounds of a share, each one-sided at ``confidence``; (0, 1) when n is 0.

    A rule uses one side: "at ``confidence``, the failed share is at least
    the lower bound", so chance alone trips it at most ``1 - confidence`` of
    the time in a lane whose true share sits exactly at the threshold.
    """
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(confidence)
    p = hits / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return max(0.0, centre - half), min(1.0, centre + half)
