"""The rule families on one table, wired to where their outputs go.

Why a separate assembly: the worker runs the rules in force, but a backtest
runs them (twice: the rules in force and a candidate) over a recorded file
in-process, and a shadow candidate runs beside the live rules in the worker.
All of them must build the families the same way, or a backtest would
judge with rules the worker does not run. The worker's own decision layer
builds the same families on its Faust table.

:class:`MemoryTable` stands in for a Faust table where nothing is persisted
(a backtest; a shadow, whose state is not worth a changelog: it starts again
empty after a restart, like a candidate just switched on).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ctower.rules.alert_book import AlertBook, AlertEntry
from ctower.rules.config import Rules
from ctower.rules.guides import GuideRulesFamily, GuideStore
from ctower.rules.lanes import Lane, LaneEvent, LaneRules
from ctower.rules.pickup import PickupQueue, PickupRules
from ctower.rules.rule_state import RuleState
from ctower.rules.service import ServiceItem, ServiceRulesFamily
from ctower.rules.shipping import AwaitedOrder, ShippingEvent, ShippingRules
from ctower.rules.stock import StockItem, StockMove, StockRulesEngine
from ctower.rules.tasks import TaskBook
from ctower.schemas.control import Alert, CouponSignal, PickupLevel, StockLevel
from ctower.schemas.events import MINUTE
from ctower.schemas.master_data import MasterData
from ctower.schemas.tasks import ShipmentTask


class MemoryTable:
    """What :class:`RuleState` uses of a Faust table, kept in memory only."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> None:
        return None


def _drop(_: Any) -> None:
    return None


class RuleEngine:
    """Pickup, stock, lane, service, shipping and guide rules sharing one table, one
    clock and one set of outputs. What only the live rules do (action orders) is left
    out; the customer-service tasks are kept (the lanes' district flags and the
    not-shipped alerts come with them) and go to ``task``."""

    def __init__(
        self,
        table: Any,
        rules: Callable[[], Rules],
        master: MasterData | None,
        language: str,
        *,
        alert: Callable[[Alert], None],
        signal: Callable[[CouponSignal], None],
        stock_level: Callable[[StockLevel], None] = _drop,
        pickup_level: Callable[[PickupLevel], None] = _drop,
        clock: Callable[[], float] = time.time,
        prefix: str = "",
        task: Callable[[ShipmentTask], None] = _drop,
        member_hints: bool = False,
    ) -> None:
        """``prefix`` names the families' keys in the table (a shadow beside the
        live rules on one table must not overwrite them). ``member_hints``: the
        shipping rules tell this engine's lane rules (partition 0) whose shipment
        it is, as the worker's do through the ``lanes`` topic (a backtest; a shadow
        gets the live rules' hints with the lane events)."""
        self.rules = rules

        def state(family: str, entity: type[Any]) -> RuleState[Any]:
            return RuleState(table, prefix + family, entity, clock=clock)

        def book(family: str) -> AlertBook:
            return AlertBook(
                state(f"alerts.{family}", AlertEntry), alert, language,
                lambda: int(self.rules().alerts.cooldown_minutes * MINUTE), wall=clock,
            )

        self.pickup = PickupRules(
            state("pickup", PickupQueue), book("pickup"), rules, master, signal, pickup_level,
        )
        self.stock = StockRulesEngine(
            state("stock", StockItem), book("stock"), rules, master, signal, stock_level,
        )
        self.tasks = TaskBook(state("tasks", ShipmentTask), task, language)
        self.lane_rules = LaneRules(state("lanes", Lane), book("lanes"), rules, tasks=self.tasks)
        self.service = ServiceRulesFamily(
            state("service", ServiceItem), book("service"), rules, master,
        )
        self.shipping = ShippingRules(
            state("shipping", AwaitedOrder), book("shipping"), rules, master, task,
            (lambda _, items: self._hints.extend(items)) if member_hints else None,
            language,
        )
        self._shipping_arrays = 0
        self._hints: list[LaneEvent] = []

        self.guides = GuideRulesFamily(state("guides", GuideStore), book("guides"), rules, master)

    def families(self) -> tuple[Any, ...]:
        return (
            self.pickup, self.stock, self.lane_rules, self.service, self.shipping, self.guides,
        )

    def states(self) -> list[RuleState[Any]]:
        families = self.families()
        return [f.state for f in families] + [f.book.state for f in families] + [
            self.tasks.state]

    def apply_moves(self, partition: int, moves: list[StockMove]) -> None:
        self.stock.apply(partition, moves)

    def apply_lane_events(self, partition: int, events: list[LaneEvent]) -> None:
        """Lanes, and the guide deliveries riding on the GUIDE lanes."""
        self.lane_rules.apply(partition, events)
        self.guides.apply(partition, events)

    def apply_shipping(self, partition: int, events: list[ShippingEvent]) -> None:
        if self.shipping.hint is not None:  # no topic here: number the arrays as one would
            self._shipping_arrays += 1
            self.shipping.state.read(partition, self._shipping_arrays)
        self.shipping.apply(partition, events)
        if self._hints:  # one array, as the worker's forwarder sends them
            hints, self._hints = self._hints, []
            self.lane_rules.apply(0, hints)

    def evaluate_touched(self) -> None:
        for family in self.families():
            family.evaluate_touched()

    def tick(self) -> None:
        for family in self.families():
            family.tick()

    def adopt(self, partitions: list[int]) -> None:
        for state in self.states():
            state.adopt(partitions)

    def drop(self, partition: int) -> None:
        for state in self.states():
            state.drop(partition)
        self.tasks.forget(partition)
        self.shipping.forget(partition)
