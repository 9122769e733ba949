"""Lanes (a carrier in a region): a carrier that stops moving parcels is alerted one
window after its last update, thin lanes and young lanes are not judged by silence,
the alert resolves when the lane moves again, and shares are judged with a margin
for chance."""

from __future__ import annotations

import random
from typing import Any

from ctower.rules.config import Rules
from ctower.rules.lanes import Lane, LaneEvent, LaneRules, wilson

T0 = 1_790_000_000_000
MIN = 60_000
WINDOW = 15 * MIN
BUSY = ("SF", "EAST")
OTHER = ("JD", "EAST")
"""Another carrier on the same partition: the feed keeps flowing while SF stops."""

Step = tuple[int, str, str, tuple[str, str], int]
"""(ts, shipment_id, status, (carrier, region), eta)."""


def shipments(lane: tuple[str, str], start: int, end: int, every_ms: int, seed: int,
              late: float = 0.0, failed: float = 0.0) -> list[Step]:
    """A steady lane: created, picked up about 20 min later, two hub scans, delivered."""
    rng = random.Random(seed)
    steps: list[Step] = []
    t = start
    n = 0
    while t < end:
        n += 1
        sid = f"{lane[0]}-{lane[1]}-{n}"
        eta = t + 150 * MIN
        picked = t + rng.randint(12, 28) * MIN
        hub = picked + rng.randint(5, 15) * MIN
        out = hub + rng.randint(25, 45) * MIN
        done = out + rng.randint(10, 30) * MIN
        final = "delivered"
        x = rng.random()
        if x < failed:
            final = "failed"
        elif x < failed + late:
            done = eta + rng.randint(5, 40) * MIN
        steps += [(t, sid, "created", lane, eta), (picked, sid, "picked_up", lane, eta),
                  (hub, sid, "in_transit", lane, eta), (out, sid, "out_for_delivery", lane, eta),
                  (done, sid, final, lane, eta)]
        t += every_ms
    return steps


class Feed:
    """Lane events on partition 0, one source message per event, in time order."""

    def __init__(self, harness: Any, rules: Rules | None = None) -> None:
        self.harness = harness
        self.rules = rules or Rules()
        self.lanes = self.make()
        self.offset = 0
        self.sent: list[tuple[int, LaneEvent]] = []

    def make(self) -> LaneRules:
        return LaneRules(self.harness.state("lanes", Lane), self.harness.book("lanes"),
                         lambda: self.rules)

    def send(self, steps: list[Step], until: int | None = None, since: int = 0) -> None:
        for ts, sid, status, (carrier, region), eta in sorted(steps):
            if until is not None and ts >= until:
                break
            if ts < since:
                continue
            self.offset += 1
            event = LaneEvent(sid, status, ts, eta, carrier, region, "logistics:0", self.offset)
            self.sent.append((self.offset, event))
            self.lanes.apply(0, [event])
            self.lanes.evaluate_touched()

    def opened(self, kind_key: str) -> list[Any]:
        return [a for a in self.harness.alerts if a.status == "open" and a.key.startswith(kind_key)]


def stopped(steps: list[Step], lane: tuple[str, str], at: int) -> list[Step]:
    """The lane's carrier sends nothing but new orders' ``created`` from ``at`` on."""
    return [s for s in steps if s[3] != lane or s[0] < at or s[2] == "created"]


def last_update_before(steps: list[Step], lane: tuple[str, str], at: int) -> int:
    return max(s[0] for s in steps if s[3] == lane and s[2] != "created" and s[0] < at)


def test_a_busy_lane_that_stops_is_alerted_one_window_after_its_last_update(
    harness: Any,
) -> None:
    feed = Feed(harness)
    stop = T0 + 180 * MIN
    busy = shipments(BUSY, T0, T0 + 240 * MIN, 2 * MIN, seed=1)
    other = shipments(OTHER, T0, T0 + 240 * MIN, 2 * MIN, seed=2)
    feed.send(stopped(busy, BUSY, stop) + other, until=stop + 40 * MIN)
    silent = feed.opened("lane_silent:SF|EAST")
    assert len(silent) == 1
    alert = silent[0]
    last = last_update_before(busy, BUSY, stop)
    # the window closed 15 min after the carrier's last update, and that is when it opened
    assert alert.opened_at == last + WINDOW
    assert alert.opened_at - stop <= WINDOW
    assert (alert.kind, alert.severity) == ("shipment_stale", "critical")
    assert (alert.carrier, alert.region) == BUSY
    evidence = alert.evidence
    assert evidence["rule"] == "lane_silent" and evidence["silence_min"] == 15.0
    assert evidence["expected_updates"] >= Rules().logistics.silence_min_expected
    assert evidence["window_start"] == last and evidence["window_end"] == alert.opened_at
    assert evidence["updates_hour_before"] > 40
    assert alert.message and "SF" in alert.message and alert.action
    # the other carrier kept moving, and nothing else fired in normal traffic
    others = [a for a in harness.alerts if a.carrier != "SF"]
    assert others == []


def test_the_alert_opens_at_the_window_even_when_the_next_event_comes_later(
    harness: Any,
) -> None:
    """A replay moves event time by minutes between looks: the alert still says when."""
    feed = Feed(harness)
    stop = T0 + 180 * MIN
    busy = shipments(BUSY, T0, stop, 2 * MIN, seed=1)
    other = shipments(OTHER, T0, stop, 2 * MIN, seed=2)
    feed.send(busy + other, until=stop)
    last = last_update_before(busy, BUSY, stop)
    feed.send([(last + WINDOW + 7 * MIN, "JD-late", "created", OTHER, 0)])
    alert = feed.opened("lane_silent:SF|EAST")[0]
    assert alert.opened_at == last + WINDOW


def test_a_thin_lane_is_not_alerted_within_the_window(harness: Any) -> None:
    """Five shipments an hour: a quarter of an hour without news proves nothing yet. Only
    once its few parcels are all overdue by its own standards does the silence count."""
    feed = Feed(harness)
    stop = T0 + 180 * MIN
    thin = stopped(shipments(BUSY, T0, T0 + 300 * MIN, 12 * MIN, seed=3), BUSY, stop)
    other = shipments(OTHER, T0, T0 + 300 * MIN, 2 * MIN, seed=2)
    feed.send(thin + other, until=stop + 20 * MIN)
    assert feed.opened("lane_silent:") == []
    # it was judged, and its open shipments owed too little for the silence to mean much
    lane = feed.lanes.state.get(0, "SF|EAST")
    assert lane is not None
    silence, expected = LaneRules._silence(lane, stop + 20 * MIN, Rules().logistics)
    assert silence > WINDOW and 0 < expected < Rules().logistics.silence_min_expected
    feed.send(thin + other, since=stop + 20 * MIN, until=stop + 90 * MIN)
    late = feed.opened("lane_silent:SF|EAST")
    assert len(late) == 1 and late[0].opened_at > stop + 2 * WINDOW


def test_quiet_hours_are_not_a_stop(harness: Any) -> None:
    """At night orders stop; the carrier delivers what it holds and then has nothing to
    move. Hours without an update owe nothing."""
    feed = Feed(harness)
    evening = T0 + 180 * MIN
    busy = shipments(BUSY, T0, evening, MIN, seed=1)  # sixty an hour, then none
    other = shipments(OTHER, T0, T0 + 480 * MIN, 10 * MIN, seed=2)
    feed.send(busy + other)
    assert feed.opened("") == []


def test_a_young_lane_has_no_dwell_times_to_judge_a_silence_by(harness: Any) -> None:
    """Forty minutes in, only the quick pick-ups have been seen: the stage is not judged."""
    feed = Feed(harness)
    stop = T0 + 40 * MIN
    busy = shipments(BUSY, T0, T0 + 120 * MIN, MIN // 2, seed=4)
    other = shipments(OTHER, T0, T0 + 120 * MIN, 2 * MIN, seed=2)
    feed.send(stopped(busy, BUSY, stop) + other, until=stop + 18 * MIN)
    assert feed.opened("lane_silent:") == []


def test_silence_resolves_when_the_lane_moves_again(
    harness: Any,
) -> None:
    feed = Feed(harness)
    stop = T0 + 180 * MIN
    resume = stop + 50 * MIN
    busy = shipments(BUSY, T0, T0 + 300 * MIN, 2 * MIN, seed=1)
    other = shipments(OTHER, T0, T0 + 300 * MIN, 2 * MIN, seed=2)
    held = [s for s in busy if stop <= s[0] < resume and s[2] != "created"]
    feed.send(stopped(busy, BUSY, stop) + other, until=resume)
    assert len(feed.opened("lane_silent:SF|EAST")) == 1
    # one held parcel moves: the lane is alive again
    _, sid, status, lane, eta = held[0]
    feed.send([(resume, sid, status, lane, eta)])
    silent = [a for a in harness.alerts if a.key == "lane_silent:SF|EAST"]
    assert [a.status for a in silent] == ["open", "resolved"]
    assert silent[1].resolved_at == resume
    # and while it keeps moving, nothing reopens
    feed.send(busy + other, since=resume + 1, until=resume + 40 * MIN)
    assert [a.status for a in harness.alerts if a.key == "lane_silent:SF|EAST"] == [
        "open", "resolved"]


def test_a_stopped_feed_is_not_a_silent_carrier(harness: Any) -> None:
    """When nothing at all comes (a replay ended, the integration is down), the clock runs
    on with the wall, stage allowances still pass, but no carrier is blamed for the quiet."""
    feed = Feed(harness)
    end = T0 + 180 * MIN
    feed.send(shipments(BUSY, T0, end, 2 * MIN, seed=1) + shipments(OTHER, T0, end, 2 * MIN, 2),
              until=end)
    for _ in range(40):
        harness.wall += 60  # forty minutes of nothing
        feed.lanes.tick()
    assert feed.lanes.state.now(0) > end + 30 * MIN
    assert feed.opened("lane_silent:") == []


def test_a_replay_after_a_restart_opens_nothing_twice(harness: Any) -> None:
    feed = Feed(harness)
    stop = T0 + 180 * MIN
    busy = stopped(shipments(BUSY, T0, T0 + 300 * MIN, 2 * MIN, seed=1), BUSY, stop)
    other = shipments(OTHER, T0, T0 + 300 * MIN, 2 * MIN, seed=2)
    feed.send(busy + other, until=stop + 20 * MIN)
    assert len(feed.opened("lane_silent:SF|EAST")) == 1
    alerts_before = len(harness.alerts)
    feed.lanes.state.flush(0)
    feed.lanes.book.state.flush(0)
    # the worker dies after the flush but before its commit: the last messages come again
    feed.lanes = feed.make()  # same table: what Faust's recovery gives back
    for _, event in feed.sent[-30:]:
        feed.lanes.apply(0, [event])
    feed.lanes.evaluate_touched()
    feed.lanes.tick()
    assert feed.lanes.state.replayed_skips == 30
    assert len(harness.alerts) == alerts_before
    # a finished shipment sent again, late: it drags the clock back, but resolves
    # nothing, reopens nothing, and is not counted or reopened as a shipment
    lane = feed.lanes.state.get(0, "SF|EAST")
    assert lane is not None
    finished = list(lane.finished)
    sid, done = next(iter(lane.done.items()))
    again = [(s[0], sid, s[2], BUSY, s[4]) for s in busy if s[1] == sid]
    feed.send(again)
    feed.lanes.tick()
    assert len(harness.alerts) == alerts_before
    assert sid not in lane.open and lane.finished == finished and lane.done[sid] == done
    # and the restored alert still resolves, once, when the lane moves
    lane = feed.lanes.state.get(0, "SF|EAST")
    assert lane is not None and lane.dwell and lane.first_seen == T0
    sid = next(s for s, (status, _, _) in lane.open.items() if status == "picked_up")
    feed.send([(stop + 25 * MIN, sid, "in_transit", BUSY, 0)])
    silent = [a for a in harness.alerts if a.key == "lane_silent:SF|EAST"]
    assert [a.status for a in silent] == ["open", "resolved"]


def test_shares_are_judged_with_a_margin_for_chance(harness: Any) -> None:
    # four late of twenty is 80% on time, and a few more late by chance is no trend
    assert wilson(13, 20, 0.99)[1] > 0.8
    # three failed of twelve is 25%, but the low end of its bound is well under 15%
    assert wilson(3, 12, 0.99)[0] < 0.15
    feed = Feed(harness)
    end = T0 + 240 * MIN
    normal = shipments(BUSY, T0, end, 2 * MIN, seed=5, late=0.08, failed=0.03)
    bad = shipments(OTHER, T0, end, 2 * MIN, seed=6, late=0.5, failed=0.3)
    feed.send(normal + bad, until=end)
    kinds = {(a.kind, a.carrier) for a in feed.opened("")}
    assert ("carrier_on_time", "JD") in kinds and ("shipment_failed", "JD") in kinds
    assert not any(carrier == "SF" for _, carrier in kinds)
    failed = feed.opened("shipment_failed:JD|EAST")[0].evidence
    assert failed["share_low_pct"] >= failed["threshold_pct"] and failed["confidence"] == 0.99
