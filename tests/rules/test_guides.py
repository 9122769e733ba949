"""Shopping guides: a store's orders waiting for a guide, a guide's late deliveries,
the per-guide daily figures against the cap; exact under replays, bounded in memory."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ctower.rules.config import Rules
from ctower.rules.guides import GuideRulesFamily, GuideStore, local_day
from ctower.rules.lanes import LaneEvent
from ctower.schemas.master_data import GuideInfo, MasterData, RegionInfo, StoreInfo

MIN = 60_000
HOUR = 60 * MIN
T0 = int(datetime(2026, 3, 2, 2, 0, tzinfo=UTC).timestamp() * 1000)
"""10:00 in Shanghai: inside the guides' working hours (08:00-22:00)."""

MASTER = MasterData(
    regions=[RegionInfo(region_id="EAST", warehouse_id="WH-EAST")],
    stores=[StoreInfo(store_id="S1", region_id="EAST"), StoreInfo(store_id="S2",
                                                                  region_id="EAST")],
    guides=[GuideInfo(guide_id="G1", store_id="S1", daily_cap=3),
            GuideInfo(guide_id="G2", store_id="S1"),
            GuideInfo(guide_id="G3", store_id="S1", shift_start_hour=13, shift_end_hour=22)],
)


class Feed:
    """Lane events on partition 0 of the GUIDE|EAST lane, one source message each."""

    def __init__(self, harness: Any, rules: Rules | None = None) -> None:
        self.harness = harness
        self.rules = rules or Rules()
        self.family = self.make()
        self.offset = 0
        self.sent: list[list[LaneEvent]] = []
        self.planned: list[tuple[int, str, str, str, str, int]] = []

    def make(self) -> GuideRulesFamily:
        return GuideRulesFamily(self.harness.state("guides", GuideStore),
                                self.harness.book("guides"), lambda: self.rules, MASTER)

    def send(self, ts: int, sid: str, status: str, guide: str = "", store: str = "S1",
             eta: int | None = None, offset: int | None = None) -> None:
        if offset is None:
            self.offset += 1
            offset = self.offset
        self.harness.wall = ts / 1000
        events = [LaneEvent(sid, status, ts, eta, "GUIDE", "EAST", "logistics:0", offset,
                            guide_id=guide, store=store)]
        self.sent.append(events)
        self.family.apply(0, events)
        self.family.evaluate_touched()

    def tick(self, ts: int) -> None:
        """Time passes: a shipment of another carrier moves the partition's clock."""
        self.send(ts, f"other{self.offset}", "in_transit", store="")
        self.family.tick()

    def delivery(self, created: int, sid: str, guide: str, *, late_min: int = 0,
                 eta_min: int = 60, store: str = "S1") -> None:
        """A delivery's three updates, held until :meth:`play` sends everything in time order."""
        eta = created + eta_min * MIN
        done = eta + late_min * MIN if late_min else eta - 10 * MIN
        self.planned += [(created, sid, "created", "", store, eta),
                         (created + 5 * MIN, sid, "picked_up", guide, store, eta),
                         (done, sid, "delivered", guide, store, eta)]

    def play(self, until: int | None = None) -> None:
        """Send the planned updates in time order (up to ``until``, the rest stay planned)."""
        self.planned.sort(key=lambda step: step[0])
        while self.planned and (until is None or self.planned[0][0] <= until):
            ts, sid, status, guide, store, eta = self.planned.pop(0)
            self.send(ts, sid, status, guide, store, eta)

    def alerts(self, kind: str) -> list[Any]:
        return [a for a in self.harness.alerts if a.kind == kind]


def store(feed: Feed, store_id: str = "S1") -> GuideStore:
    found = feed.family.state.get(0, f"store:{store_id}")
    assert found is not None
    return found


def test_orders_waiting_for_a_guide_alert_after_the_wait_and_resolve_when_taken(
    harness: Any,
) -> None:
    feed = Feed(harness)
    for n in range(3):  # waiting, none taken by a guide
        feed.send(T0 + n * MIN, f"w{n}", "created", eta=T0 + 2 * HOUR)
    feed.send(T0, "quick", "created", eta=T0 + HOUR)  # taken at once: never waits
    feed.send(T0 + MIN, "quick", "picked_up", "G2", eta=T0 + HOUR)
    feed.tick(T0 + 22 * MIN)  # the third has waited 20 min, not more
    assert feed.alerts("guide_capacity") == []
    feed.tick(T0 + 22 * MIN + 1_000)
    (alert,) = feed.alerts("guide_capacity")
    assert (alert.store_id, alert.region, alert.status) == ("S1", "EAST", "open")
    assert alert.opened_at == T0 + 22 * MIN + 1_000
    ev = alert.evidence
    assert (ev["waiting"], ev["open"], ev["threshold"]) == (3, 4, 3)
    assert ev["oldest_wait_min"] == 22.0
    # at 10:22 G3's shift has not begun: two guides of three can take a delivery
    assert (ev["guides"], ev["on_shift"], ev["available"]) == (3, 2, 2)
    assert alert.severity == "warning"
    assert "S1" in alert.message and "3" in alert.message
    for n in range(3):
        feed.send(T0 + 30 * MIN + n, f"w{n}", "picked_up", "G1", eta=T0 + 2 * HOUR)
    assert [a.status for a in feed.alerts("guide_capacity")] == ["open", "resolved"]


def test_night_orders_wait_for_the_morning_shift_without_an_alert(harness: Any) -> None:
    feed = Feed(harness)
    night = T0 - 12 * HOUR + 30 * MIN  # 22:30 the evening before
    for n in range(4):
        feed.send(night + n * MIN, f"n{n}", "created", eta=night + 12 * HOUR)
    feed.tick(night + 3 * HOUR)
    assert feed.alerts("guide_capacity") == []
    # waits count from 08:00: at 08:21 they have waited 21 minutes of working hours
    feed.tick(T0 - 2 * HOUR + 19 * MIN)
    assert feed.alerts("guide_capacity") == []
    feed.tick(T0 - 2 * HOUR + 21 * MIN)
    (alert,) = feed.alerts("guide_capacity")
    assert alert.evidence["oldest_wait_min"] == 21.0


def test_a_guide_whose_deliveries_run_late_is_named_and_the_others_are_not(
    harness: Any,
) -> None:
    feed = Feed(harness)
    feed.delivery(T0 - MIN, "a0", "G1", late_min=35)
    feed.delivery(T0, "a1", "G1", late_min=30)
    feed.delivery(T0 + 2 * MIN, "b1", "G2", late_min=30)  # G2: two late, under the threshold
    feed.delivery(T0 + 4 * MIN, "a2", "G1", late_min=25)
    feed.delivery(T0 + 6 * MIN, "b2", "G2", late_min=20)
    feed.delivery(T0 + 8 * MIN, "c1", "G2", late_min=10)  # late, but within the 15 min grace
    # G1's fourth delivery is out, 16 min past its ETA: running late before it arrives
    eta = T0 + 30 * MIN + HOUR
    feed.planned += [(T0 + 30 * MIN, "a3", "created", "", "S1", eta),
                     (T0 + 35 * MIN, "a3", "out_for_delivery", "G1", "S1", eta)]
    feed.play()
    assert feed.alerts("guide_late") == []
    feed.tick(eta + 15 * MIN)
    assert feed.alerts("guide_late") == []
    feed.tick(eta + 16 * MIN)
    (alert,) = feed.alerts("guide_late")
    assert (alert.key, alert.store_id, alert.opened_at) == ("guide_late:G1", "S1", eta + 16 * MIN)
    ev = alert.evidence
    assert (ev["guide_id"], ev["late"], ev["arrived_late"], ev["still_out"]) == ("G1", 4, 3, 1)
    assert ev["examples"] == ["a3"] and ev["daily_cap"] == 3 and ev["deliveries"] == 3
    assert ev["on_time_pct"] == 0.0
    assert "G1" in alert.message
    # two hours after the late arrivals only the one still out is left: resolved
    feed.tick(eta + 25 * MIN + 2 * HOUR)
    assert [a.status for a in feed.alerts("guide_late")] == ["open", "resolved"]


def test_each_guide_counts_a_day_against_its_cap_and_a_new_day_starts_from_zero(
    harness: Any,
) -> None:
    feed = Feed(harness)
    for n in range(3):
        feed.delivery(T0 + n * 10 * MIN, f"g1-{n}", "G1")
    feed.delivery(T0, "g2-0", "G2", late_min=5)
    feed.play()
    held = store(feed)
    g1, g2 = held.guides["G1"], held.guides["G2"]
    assert (g1.deliveries, g1.on_time, g1.late, g1.day) == (3, 3, 0, local_day(T0))
    assert (g2.deliveries, g2.on_time, g2.late) == (1, 0, 1)
    now = T0 + 4 * HOUR  # 14:00: all three on shift, G1 at its cap of 3
    roster = feed.family.roster("S1", held, now)
    assert roster == {"guides": 3, "on_shift": 3, "at_cap": 1, "available": 2}
    tomorrow = T0 + 24 * HOUR
    feed.delivery(tomorrow, "g1-next", "G1")
    feed.play()
    g1 = store(feed).guides["G1"]
    assert (g1.day, g1.deliveries) == (local_day(tomorrow), 1)
    assert feed.family.roster("S1", store(feed), tomorrow + HOUR)["at_cap"] == 0


def test_replayed_messages_and_repeated_updates_count_once(harness: Any) -> None:
    feed = Feed(harness)
    feed.delivery(T0, "a", "G1", late_min=30)
    feed.delivery(T0 + MIN, "b", "G1")
    feed.play()
    before = store(feed)
    counts = (before.guides["G1"].deliveries, before.guides["G1"].late,
              len(before.guides["G1"].late_times))
    for events in list(feed.sent):  # the whole history again, as after a crash
        feed.family.apply(0, events)
    # an at-least-once producer sends the delivery again, under a new offset
    feed.send(T0 + MIN + 50 * MIN, "b", "delivered", "G1", eta=T0 + MIN + HOUR)
    after = store(feed)
    assert (after.guides["G1"].deliveries, after.guides["G1"].late,
            len(after.guides["G1"].late_times)) == counts == (2, 1, 1)
    assert feed.family.state.replayed_skips == 6


def test_memory_is_bounded_by_the_day(harness: Any) -> None:
    feed = Feed(harness)
    for day in range(4):
        for n in range(10):
            feed.delivery(T0 + day * 24 * HOUR + n * 5 * MIN, f"d{day}-{n}", f"G{n % 2 + 1}")
        feed.planned.append((T0 + day * 24 * HOUR, f"lost{day}", "created", "", "S1",
                             T0 + day * 24 * HOUR + HOUR))
    feed.play()
    feed.tick(T0 + 3 * 24 * HOUR + 6 * HOUR)
    held = store(feed)
    assert len(held.done) == 10  # the last day's only
    assert set(held.open) == {"lost3"}  # a day without news: forgotten
    assert {d.day for d in held.guides.values()} == {local_day(T0 + 3 * 24 * HOUR)}
    # stores apart: another store's deliveries are its own entity
    feed.delivery(T0 + 3 * 24 * HOUR + 7 * HOUR, "s2", "G9", store="S2")
    feed.play()
    assert set(store(feed, "S2").guides) == {"G9"}
    assert store(feed).guides.keys() == held.guides.keys()


def test_both_alerts_read_whole_in_chinese(harness: Any) -> None:
    from ctower.rules.alert_book import Finding
    from ctower.rules.texts import render

    feed = Feed(harness)
    for n in range(4):
        feed.send(T0 + n, f"w{n}", "created", eta=T0 + HOUR)
        feed.delivery(T0 + n, f"l{n}", "G1", late_min=40)
    feed.play()
    feed.tick(T0 + 3 * HOUR)
    kinds = {a.kind: a for a in harness.alerts}
    assert set(kinds) == {"guide_capacity", "guide_late"}
    for alert in kinds.values():
        finding = Finding(kind=alert.kind, severity=alert.severity, evidence=alert.evidence,
                          action={"kind": "guides" if alert.kind == "guide_capacity" else "guide",
                                  "guide_id": alert.evidence.get("guide_id")},
                          region=alert.region, store_id=alert.store_id)
        message, action = render(finding, "zh")
        assert "?" not in message and action and "?" not in action
        assert "导购" in message and "S1" in message


def test_guide_rules_refuse_working_hours_that_end_before_they_start() -> None:
    import pytest

    from ctower.rules.config import RulesError, load_rules

    with pytest.raises(RulesError, match="guides"):
        load_rules(None, {"CTOWER_RULE_GUIDES__HOURS_END": "6"})
