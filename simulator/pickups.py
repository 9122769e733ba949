"""Store pickup: a booked slot, the goods ready, the customer at the counter.

Every store has ``pickup_staff`` counters; an arrival is served by whoever
is free first, so a queue (and the pickup congestion the rules look for)
forms only when arrivals outrun them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctower.schemas.events import Pickup
from ctower.simulator.items import Item
from ctower.simulator.state import OrderState

if TYPE_CHECKING:
    from ctower.simulator.generator import Generator

SERVICE_MEAN_S = 40.0
SERVICE_MIN_S = 15.0
"""Pickup counter service time: 15 s + exponential(40 s)."""


class Pickups:
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.out = gen.out
        self.counter_free = [[0] * s.pickup_staff for s in gen.chain.stores]
        """Per store: when each staff member is next free."""

    def book(self, ts: int, order: OrderState) -> None:
        """Handler: a paid pickup order gets its slot (or follows the plan an incident set)."""
        gen = self.gen
        rng = gen.rng
        plan = order.pickup_plan
        if plan is None:
            ready = ts + gen.ri(600_000, 3_600_000)
            slot = ready - ready % 900_000 + 900_000 * gen.ri(1, 6)
            x = rng.random()
            if x < 0.01:
                arrival: int | None = -1  # cancelled by the customer
            elif x < 0.05:
                arrival = None  # no show
            else:
                jitter = int(rng.gauss(0, 600_000))
                arrival = max(ready + 60_000, slot + jitter)
            order.pickup_plan = plan = (slot, ready, arrival)
        slot, ready, _ = plan
        self.emit(ts, order, "booked", slot)
        gen.push(ready, self._ready, order)

    def _ready(self, ts: int, order: OrderState) -> None:
        gen = self.gen
        assert order.pickup_plan is not None
        slot, _, arrival = order.pickup_plan
        self.emit(ts, order, "ready")
        if arrival is None:
            gen.push(slot + 7_200_000, self._no_show, order)
        elif arrival < 0:
            gen.push(ts + gen.ri(300_000, 3_600_000), self._cancelled, order)
        else:
            gen.push(max(arrival, ts + 1_000), self._arrived, order)

    def _arrived(self, ts: int, order: OrderState) -> None:
        gen = self.gen
        store = order.store
        self.emit(ts, order, "arrived")
        free = self.counter_free[store.idx]
        k = min(range(len(free)), key=free.__getitem__)
        start = max(ts, free[k])
        done = start + int((SERVICE_MIN_S + gen.rng.expovariate(1 / SERVICE_MEAN_S)) * 1000)
        free[k] = done
        gen.push(done, self._served, order)
        watcher = gen.hooks.pickup_watch.get(store.idx)
        if watcher is not None:
            watcher(ts, start, done, order.order_id)

    def _served(self, ts: int, order: OrderState) -> None:
        gen = self.gen
        self.emit(ts, order, "picked_up")
        if order.refund:
            gen.push(ts + gen.ri(1_800_000, 10_800_000), gen.orders.refund, order)

    def _no_show(self, ts: int, order: OrderState) -> None:
        self.emit(ts, order, "no_show")

    def _cancelled(self, ts: int, order: OrderState) -> None:
        self.emit(ts, order, "cancelled")
        self.gen.push(ts + 60_000, self.gen.orders.refund, order)

    def emit(self, ts: int, order: OrderState, state: str, slot: int | None = None) -> None:
        store_id = order.store.store_id
        event = Pickup(
            ts=ts,
            order_id=order.order_id,
            store_id=store_id,
            state=state,  # type: ignore[arg-type]
            slot_start=slot,
        )
        self.out.append(Item("pickup", store_id, ts, event))
