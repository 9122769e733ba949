"""Action orders: transfer orders from shortages, pre-pack orders from spikes, their
lifecycle from the answers on ct.action-status, and transfers counted in flight."""

from __future__ import annotations

import math
from typing import Any

from ctower.rules.actions import ActionBook
from ctower.rules.config import Rules
from ctower.rules.stock import StockItem, StockMove, StockRulesEngine
from ctower.schemas.actions import ActionOrder, ActionStatus
from tests.rules.test_stock import MASTER, MIN, T0

HOUR = 60 * MIN


class Feed:
    def __init__(self, harness: Any, auto_approve: int = 1000) -> None:
        self.orders: list[ActionOrder] = []
        book = harness.book("stock")
        self.actions = ActionBook(
            harness.state("actions", ActionOrder), self.orders.append, lambda: auto_approve,
            lambda: 10 * MIN, book,
        )
        self.engine = StockRulesEngine(
            harness.state("stock", StockItem), book, lambda: Rules(), MASTER,
            harness.signals.append, harness.levels.append, actions=self.actions,
        )
        self.harness = harness
        self.offset = 0

    def send(self, *moves: tuple[str, str, int, int], source: str = "inventory:0") -> None:
        self.offset += 1
        self.harness.wall += 5
        self.engine.apply(0, [
            StockMove(loc, "K1", kind, qty, ts, source, self.offset) for loc, kind, qty, ts in moves
        ])
        self.engine.evaluate_touched()

    def answer(self, order_id: str, status: str, ts: int, by: str = "WH-EAST") -> None:
        self.actions.apply(0, [ActionStatus(order_id=order_id, sku="K1", status=status,  # type: ignore[arg-type]
                                            by=by, ts=ts)])

    def ids(self, kind: str = "transfer") -> list[str]:
        return list(dict.fromkeys(o.order_id for o in self.orders if o.kind == kind))

    def latest(self, order_id: str) -> ActionOrder:
        return [o for o in self.orders if o.order_id == order_id][-1]

    def shortage(self) -> None:
        """S1 sells its 30 at 30/h and runs out; shoppers scan the empty shelf."""
        self.send(("S1", "snapshot", 30, T0), ("WH-EAST", "snapshot", 500, T0))
        for minute in range(30):
            self.send(("S1", "sale", 1, T0 + minute * MIN + 1), source="order:0")
        for minute in (31, 32, 33):
            self.send(("S1", "scan", 1, T0 + minute * MIN), source="scan:0")


def test_a_shortage_is_ordered_once_while_its_transfer_is_in_flight(harness: Any) -> None:
    feed = Feed(harness)
    feed.shortage()
    [order_id] = feed.ids()  # restock, then stock-out of the same shelf: one order
    assert [(o.status, o.by) for o in feed.orders] == [("proposed", "rules"), ("approved", "auto")]
    order = feed.orders[-1]
    assert (order.source, order.destination, order.sku) == ("WH-EAST", "S1", "K1")
    assert order.cause.startswith("restock:S1|K1")
    assert order.due_at == order.created_at + 4 * HOUR  # the lead time
    [restock] = [a for a in harness.alerts if a.kind == "restock" and a.status == "open"]
    assert restock.evidence["transfer"]["order_id"] == order_id
    [stock_out] = [a for a in harness.alerts if a.kind == "stock_out" and a.status == "open"]
    # what is on its way is not asked for again: the suggestion is the rest of the gap
    assert stock_out.evidence["transfer"]["order_id"] == order_id
    assert stock_out.evidence["transfer"]["in_flight"] == order.qty
    assert stock_out.evidence["transfer"]["qty"] == max(1, math.ceil(30 * 8 - order.qty))
    feed.answer(order_id, "dispatched", T0 + 40 * MIN)
    feed.answer(order_id, "dispatched", T0 + 41 * MIN)  # a replay: changes nothing
    assert feed.actions.stats["out_of_turn"] == 1
    feed.send(("S1", "scan", 1, T0 + 50 * MIN), source="scan:0")
    assert feed.ids() == [order_id]
    # not received by its due time: an alert, resolved when it arrives
    feed.send(("S2", "snapshot", 5, order.due_at + MIN))
    feed.engine.tick()
    [overdue] = [a for a in harness.alerts if a.kind == "action_overdue"]
    assert (overdue.status, overdue.evidence["order_id"], overdue.store_id) == (
        "open", order_id, "S1"
    )
    assert overdue.evidence["status"] == "dispatched"
    feed.answer(order_id, "received", order.due_at + 2 * MIN)
    assert feed.latest(order_id).status == "received"
    assert [a.status for a in harness.alerts if a.kind == "action_overdue"] == ["open", "resolved"]
    assert feed.actions.in_flight(0, "S1|K1") == 0


def test_a_rejected_order_is_not_asked_again_within_the_cooldown(harness: Any) -> None:
    feed = Feed(harness, auto_approve=0)  # every order waits for a person
    feed.shortage()
    [first] = feed.ids()
    assert [o.status for o in feed.orders] == ["proposed"]
    feed.answer(first, "rejected", T0 + 34 * MIN)
    feed.send(("S1", "scan", 1, T0 + 35 * MIN), source="scan:0")
    assert feed.ids() == [first]  # refused a minute ago: not asked again yet
    feed.send(("S1", "scan", 1, T0 + 45 * MIN), source="scan:0")
    second = feed.ids()[1]
    assert feed.latest(second).status == "proposed"
    feed.answer(second, "approved", T0 + 46 * MIN, by="ops-wang")
    assert (feed.latest(second).status, feed.latest(second).by) == ("approved", "ops-wang")
    assert feed.actions.in_flight(0, "S1|K1") == feed.latest(second).qty


def test_an_order_nobody_approves_expires_at_its_due_time(harness: Any) -> None:
    feed = Feed(harness, auto_approve=0)
    feed.shortage()
    [order_id] = feed.ids()
    due = feed.latest(order_id).due_at
    feed.send(("S2", "snapshot", 5, due + MIN))
    feed.engine.tick()
    assert feed.latest(order_id).status == "expired"
    assert not [a for a in harness.alerts if a.kind == "action_overdue"]  # nobody approved it
    assert feed.actions.stats["expired"] == 1


def test_a_spike_issues_a_prepack_order_sized_from_the_spike(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(("S1", "snapshot", 500, T0))
    for minute in range(0, 60, 5):
        feed.send(("S1", "scan", 2, T0 + minute * MIN), source="scan:0")
    for second in range(0, 240, 10):
        feed.send(("S1", "scan", 1, T0 + 60 * MIN + second * 1000), source="scan:0")
    [spike] = [a for a in harness.alerts if a.kind == "demand_spike"]
    [order_id] = feed.ids("prepack")
    order = feed.latest(order_id)
    scans, baseline = spike.evidence["scans"], spike.evidence["baseline"]
    assert order.qty == math.ceil((scans - baseline) * 6)
    assert (order.source, order.destination, order.status) == ("WH-EAST", "S1", "approved")
    assert order.evidence["alert_id"] == spike.alert_id
    assert spike.action is not None and str(order.qty) in spike.action
    assert feed.ids() == []  # no transfer: 500 on hand
