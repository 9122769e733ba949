"""Customer-service tasks per shipment beside the lane rules: a stale, overdue or failed
parcel becomes one task with its order and a message for the customer, closed when it
recovers; the lane's alerts count them; a district whose deliveries keep failing is
flagged."""

from __future__ import annotations

from typing import Any

from ctower.rules.config import Rules
from ctower.rules.lanes import Lane, LaneEvent, LaneRules
from ctower.rules.tasks import TaskBook
from ctower.schemas.tasks import ShipmentTask

T0 = 1_790_000_000_000
MIN = 60_000


class Feed:
    def __init__(self, harness: Any) -> None:
        self.tasks: list[ShipmentTask] = []
        self.book = TaskBook(harness.state("tasks", ShipmentTask), self.tasks.append, "en")
        self.lanes = LaneRules(harness.state("lanes", Lane), harness.book("lanes"),
                               lambda: Rules(), tasks=self.book)
        self.harness = harness
        self.offset = 0

    def send(self, ts: int, sid: str, status: str, eta: int = 0, district: str = "",
             carrier: str = "SF") -> None:
        self.offset += 1
        self.harness.wall += 5
        self.lanes.apply(0, [LaneEvent(sid, status, ts, eta or None, carrier, "EAST",
                                       "logistics:0", self.offset, f"O-{sid}", district)])
        self.lanes.evaluate_touched()

    def latest(self) -> dict[str, ShipmentTask]:
        return {f"{t.shipment_id}:{t.kind}": t for t in self.tasks}


def test_a_late_parcel_is_one_task_with_its_order_closed_when_delivered(harness: Any) -> None:
    feed = Feed(harness)
    eta = T0 + 60 * MIN
    feed.send(T0, "A", "created", eta)
    feed.send(T0 + 10 * MIN, "A", "picked_up", eta)
    feed.send(T0 + 11 * MIN, "B", "created", T0 + 500 * MIN)  # on time: never a task
    for minute in range(20, 100, 5):  # the clock passes A's ETA plus the 30 min grace
        feed.send(T0 + minute * MIN, f"X{minute}", "created", T0 + 900 * MIN, carrier="JD")
    task = feed.latest()["A:past_eta"]
    assert (task.status, task.order_id, task.carrier, task.detail) == (
        "open", "O-A", "SF", {"eta": eta})
    assert task.opened_at > eta + 30 * MIN
    assert "O-A" in task.message and "running late" in task.message
    # once, however often judged; B is on time (stale in its stage, another task)
    assert [t.shipment_id for t in feed.tasks if t.kind == "past_eta"] == ["A"]
    feed.send(T0 + 101 * MIN, "A", "delivered", eta)
    closed = feed.latest()["A:past_eta"]
    assert (closed.status, closed.closed_by, closed.closed_at) == (
        "closed", "recovered", T0 + 101 * MIN)
    assert feed.latest()["A:stale"].closed_by == "recovered"
    assert feed.book.open_count(0, "SF|EAST") == 1  # B, still waiting to be picked up


def test_stale_and_failed_parcels_and_the_lane_alert_counts_them(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(T0, "S", "created")
    feed.send(T0 + MIN, "S", "in_transit")
    for minute in range(5, 130, 5):
        feed.send(T0 + minute * MIN, f"X{minute}", "created", carrier="JD")
    stale = feed.latest()["S:stale"]
    assert stale.status == "open" and stale.detail == {"stage": "in_transit", "since": T0 + MIN}
    assert "in_transit" in stale.message
    feed.send(T0 + 131 * MIN, "S", "out_for_delivery")  # it moves: recovered
    assert feed.latest()["S:stale"].closed_by == "recovered"
    for n in range(3):  # three failed deliveries in one district within the hour
        feed.send(T0 + (140 + n) * MIN, f"F{n}", "created", district="Pudong")
        feed.send(T0 + (141 + n) * MIN, f"F{n}", "failed")
        feed.send(T0 + (141 + n) * MIN + 5, f"F{n}", "failed")  # a straggler: not news
    failed = [t for t in feed.tasks if t.kind == "failed"]
    assert [(t.shipment_id, t.district, t.status) for t in failed] == [
        ("F0", "Pudong", "open"), ("F1", "Pudong", "open"), ("F2", "Pudong", "open")]
    lane = feed.lanes.state.get(0, "SF|EAST")
    assert lane is not None and len(lane.district_failed["Pudong"]) == 3  # stragglers not counted
    [district] = [a for a in harness.alerts if a.kind == "district_failed"]
    assert district.key == "district_failed:SF|EAST|Pudong"
    assert (district.evidence["failed"], district.evidence["district"]) == (3, "Pudong")
    # the lane's failed-deliveries alert says how many tasks are open instead of one each
    lane_alerts = [a for a in harness.alerts if a.kind == "shipment_failed"]
    assert lane_alerts and lane_alerts[0].evidence["tasks_open"] == 3
    # an hour later the district is clear again
    feed.send(T0 + 205 * MIN, "Y", "created", carrier="JD")
    assert [a.status for a in harness.alerts if a.kind == "district_failed"] == [
        "open", "resolved"]
