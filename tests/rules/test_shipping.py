"""Paid orders that never ship: the order and logistics streams joined by order id. A
warehouse-direct or guide-delivery order with no shipment within the window becomes a task
(with its member) and an alert, both closed when a shipment appears; nothing else ever
does; replays change nothing; the state forgets what is done; the lane tasks learn the
member from the join."""

from __future__ import annotations

from typing import Any

from ctower.rules.config import LogisticsRules, Rules
from ctower.rules.lanes import Lane, LaneEvent, LaneRules
from ctower.rules.shipping import MARKER_MS, AwaitedOrder, ShippingEvent, ShippingRules
from ctower.rules.tasks import TaskBook
from ctower.schemas.tasks import ShipmentTask

T0 = 1_790_000_000_000
MIN = 60_000
WINDOW = 30 * MIN


class Feed:
    def __init__(self, harness: Any, rules: Rules | None = None) -> None:
        self.harness = harness
        self.rules = rules or Rules()
        self.tasks: list[ShipmentTask] = []
        self.hints: list[tuple[str, list[LaneEvent]]] = []
        self.offset = 0
        self.shipping = self.make()

    def make(self) -> ShippingRules:
        return ShippingRules(self.harness.state("shipping", AwaitedOrder),
                             self.harness.book("shipping"), lambda: self.rules, None,
                             self.tasks.append,
                             lambda lane, items: self.hints.append((lane, items)), "en")

    def send(self, *events: ShippingEvent) -> None:
        self.harness.wall += 5
        self.shipping.state.read(0, self.offset)
        self.shipping.apply(0, list(events))
        self.shipping.evaluate_touched()

    def paid(self, ts: int, order: str, fulfillment: str = "warehouse_direct",
             what: str = "paid") -> ShippingEvent:
        self.offset += 1
        return ShippingEvent(order, what, ts, "order:0", self.offset, f"M-{order}", "S001",
                             fulfillment)

    def shipment(self, ts: int, order: str, status: str = "created") -> ShippingEvent:
        self.offset += 1
        return ShippingEvent(order, "shipment", ts, "logistics:0", self.offset,
                             shipment_id=f"SH-{order}", status=status, carrier="SF",
                             region="EAST")

    def clock(self, ts: int) -> None:
        """Time passes on the order stream (another order, shipped at once)."""
        order = f"X{ts}"
        self.send(self.paid(ts, order), self.shipment(ts, order))

    def alerts(self, kind: str = "order_not_shipped") -> list[tuple[str, str]]:
        return [(a.status, a.key) for a in self.harness.alerts if a.kind == kind]


def test_a_paid_order_without_a_shipment_is_a_task_and_an_alert_until_it_ships(
    harness: Any,
) -> None:
    feed = Feed(harness)
    feed.send(feed.paid(T0, "A"))
    feed.clock(T0 + 29 * MIN)
    assert feed.tasks == [] and feed.alerts() == []
    feed.clock(T0 + 31 * MIN)
    [task] = feed.tasks
    assert (task.kind, task.status, task.order_id, task.member_id, task.shipment_id) == (
        "not_shipped", "open", "A", "M-A", "")
    assert task.opened_at == T0 + WINDOW  # when the window closed, not when judged
    assert task.detail["store_id"] == "S001" and "A" in task.message
    [alert] = [a for a in harness.alerts if a.kind == "order_not_shipped"]
    assert (alert.key, alert.opened_at, alert.store_id) == (
        "order_not_shipped:A", T0 + WINDOW, "S001")
    assert alert.evidence["threshold_minutes"] == 30 and "A" in alert.message
    assert alert.evidence["task_id"] == task.task_id
    feed.clock(T0 + 50 * MIN)
    assert len(feed.tasks) == 1  # judged again and again: one task, one alert
    feed.send(feed.shipment(T0 + 55 * MIN, "A"))
    closed = feed.tasks[-1]
    assert (closed.task_id, closed.status, closed.closed_by, closed.closed_at) == (
        task.task_id, "closed", "recovered", T0 + 55 * MIN)
    assert feed.alerts() == [("open", "order_not_shipped:A"), ("resolved", "order_not_shipped:A")]
    assert feed.shipping.state.get(0, "A") is None  # forgotten once shipped
    # the member reached the shipment's lane
    assert [(lane, [h.member_id for h in items]) for lane, items in feed.hints][-1] == (
        "SF|EAST", ["M-A"])
    assert feed.shipping.state.items(0) == []  # nothing kept of the shipped orders


def test_nothing_fires_for_shipped_pickup_in_store_or_cancelled_orders(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(feed.paid(T0, "P", "store_pickup"), feed.paid(T0, "I", "in_store"),
              feed.paid(T0, "G", "guide_delivery"), feed.paid(T0, "C"))
    feed.send(feed.shipment(T0 + 10 * MIN, "G"))
    feed.send(feed.paid(T0 + 12 * MIN, "C", what="cancelled"))
    # a shipment seen before its order (the logistics stream ahead): nothing is owed
    feed.send(feed.shipment(T0 + 13 * MIN, "E"))
    feed.send(feed.shipment(T0 + 14 * MIN, "E", "picked_up"))
    feed.send(feed.paid(T0 + 12 * MIN, "E"))
    feed.clock(T0 + 120 * MIN)
    assert feed.tasks == [] and feed.alerts() == []
    assert feed.shipping.state.items(0) == []
    assert [items[0].member_id for _, items in feed.hints if items[0].order_id == "E"] == ["M-E"]


def test_a_cancelled_order_closes_its_task_and_a_marker_is_forgotten(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(feed.paid(T0, "A"), feed.shipment(T0, "LONE"))
    feed.clock(T0 + 40 * MIN)
    feed.send(feed.paid(T0 + 41 * MIN, "A", what="refunded"))
    assert [(t.status, t.closed_by) for t in feed.tasks] == [("open", ""), ("closed", "refunded")]
    assert feed.shipping.state.get(0, "LONE") is not None  # its order may still come...
    feed.clock(T0 + MARKER_MS + MIN)
    assert feed.shipping.state.items(0) == []  # ...but not hours later


def test_a_replayed_message_changes_nothing_and_a_restart_keeps_the_due_time(
    harness: Any,
) -> None:
    feed = Feed(harness)
    first = feed.paid(T0, "A")
    feed.send(first)
    feed.send(first)  # the same message again (a replay after a crash)
    assert feed.shipping.state.replayed_skips == 1
    feed.shipping.state.flush(0)
    feed.shipping = feed.make()  # same table: what Faust's recovery gives back
    feed.send(first)
    feed.clock(T0 + 31 * MIN)
    assert [(t.kind, t.order_id, t.opened_at) for t in feed.tasks] == [
        ("not_shipped", "A", T0 + WINDOW)]
    assert feed.alerts() == [("open", "order_not_shipped:A")]


def test_the_window_is_a_rule_and_a_change_applies_to_orders_waiting(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(feed.paid(T0, "A"))
    feed.clock(T0 + 12 * MIN)
    feed.rules = Rules(logistics=LogisticsRules(not_shipped_minutes=10))
    feed.clock(T0 + 13 * MIN)
    assert [(t.order_id, t.opened_at) for t in feed.tasks] == [("A", T0 + 10 * MIN)]


def test_lane_tasks_carry_the_member_told_before_or_after_they_open(harness: Any) -> None:
    tasks: list[ShipmentTask] = []
    book = TaskBook(harness.state("tasks", ShipmentTask), tasks.append, "en")
    lanes = LaneRules(harness.state("lanes", Lane), harness.book("lanes"), lambda: Rules(),
                      tasks=book)
    offset = 0

    def send(sid: str, status: str, ts: int, member: str = "", source: str = "logistics:0"
             ) -> None:
        nonlocal offset
        offset += 1
        harness.wall += 5
        lanes.apply(0, [LaneEvent(sid, status, ts, None, "SF", "EAST", source, offset,
                                  f"O-{sid}", "", member)])
        lanes.evaluate_touched()

    send("A", "member", 0, "M-A", "shipping:0")  # told before the lane hears of A
    send("A", "created", T0)
    send("B", "created", T0)
    send("A", "failed", T0 + MIN)
    send("B", "failed", T0 + MIN)
    assert {t.shipment_id: t.member_id for t in tasks} == {"A": "M-A", "B": ""}
    send("B", "member", 0, "M-B", "shipping:0")  # told after B's task opened
    latest = tasks[-1]
    assert (latest.shipment_id, latest.member_id, latest.status) == ("B", "M-B", "open")
    assert latest.ts > T0 + MIN  # a later version: the store keeps it
    assert lanes.state.now(0) == T0 + MIN  # hints carry no time: the clock is the carrier's
    lane = lanes.state.get(0, "SF|EAST")
    assert lane is not None and lane.members == {}  # finished shipments: nothing kept
    assert lane.progress == {T0 - T0 % MIN + MIN: 2}  # a hint is not a carrier's update


def test_a_late_shipment_read_before_the_clock_passed_the_window_still_counts(
    harness: Any,
) -> None:
    """The logistics stream may run ahead of the order stream: the result is the same."""
    feed = Feed(harness)
    feed.send(feed.paid(T0, "A"))
    feed.send(feed.shipment(T0 + 45 * MIN, "A"))  # the clock is still at T0
    feed.send(feed.shipment(T0 + 46 * MIN, "B"))  # B's shipment before B's order
    feed.send(feed.paid(T0, "B"))
    assert [(t.order_id, t.status, t.opened_at, t.closed_at) for t in feed.tasks] == [
        ("A", "open", T0 + WINDOW, None), ("A", "closed", T0 + WINDOW, T0 + 45 * MIN),
        ("B", "open", T0 + WINDOW, None), ("B", "closed", T0 + WINDOW, T0 + 46 * MIN)]
    assert [a.status for a in harness.alerts] == ["open", "resolved", "open", "resolved"]
    assert feed.shipping.state.items(0) == []
