"""Inventory: stock per (location, SKU), restocking, and the inventory stream.

Two numbers per key: ``avail`` is what may still be sold (an order takes its
units when created), ``onhand`` what the rules see (units leave when paid).
A key is counted (a ``snapshot`` event) the first time anything touches it;
below its reorder point a store asks its regional warehouse, a warehouse its
supplier, so cover rarely falls under the restock rule's lead time unless an
incident makes it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ctower.schemas.events import Inventory
from ctower.simulator.items import Item
from ctower.simulator.world import SKU_SLOTS, WH_BASE

if TYPE_CHECKING:
    from ctower.simulator.generator import Generator


class Stock:
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.world = gen.world
        self.out = gen.out
        self.avail: dict[int, int] = {}
        self.onhand: dict[int, int] = {}
        self.known_keys: list[int] = []
        """Keys in the order they were first counted (what ``adjust`` draws from)."""
        self.pending_restock: set[int] = set()
        """Keys with a replenishment on its way: no second one is ordered."""
        self.frozen: set[int] = set()
        """Keys nothing may be sold from nor adjusted (an incident's empty shelf)."""
        self._levels: dict[int, tuple[int, int]] = {}

    def levels(self, loc: int, sku: int) -> tuple[int, int]:
        """(target level, reorder point) of a location and SKU.

        From the expected paid units per hour there: stores hold about 30 h
        of sales and reorder at 10 h; warehouses hold four days and reorder at
        a third. So cover rarely falls under the restock rule's 4 h lead time
        unless something is wrong.
        """
        key = loc * SKU_SLOTS + sku
        cached = self._levels.get(key)
        if cached is not None:
            return cached
        world = self.world
        rate = self.gen.plan.sim_rate * 3600 * world.sku_share[sku]
        if loc < WH_BASE:
            per_hour = rate * world.store_share[loc] * 0.12
            cached = max(8, math.ceil(per_hour * 30)), max(3, math.ceil(per_hour * 10))
        else:
            per_hour = rate * world.region_share[loc - WH_BASE] * 0.03
            level = max(150, math.ceil(per_hour * 96))
            cached = level, level // 3
        self._levels[key] = cached
        return cached

    def snapshot(self, ts: int, loc: int, sku: int) -> None:
        """The first count of a (location, SKU): emitted when it is first touched."""
        level, _ = self.levels(loc, sku)
        qty = max(1, int(level * self.gen.rng.uniform(0.6, 1.0)))
        key = loc * SKU_SLOTS + sku
        self.avail[key] = qty
        self.onhand[key] = qty
        self.known_keys.append(key)
        self.emit(ts, loc, sku, "snapshot", qty)

    def emit(self, ts: int, loc: int, sku: int, kind: str, qty: int) -> None:
        """One inventory event (the stock dicts are the caller's business)."""
        location_id = self.world.loc_ids[loc]
        event = Inventory(
            ts=ts,
            location_id=location_id,
            sku=self.world.sku_ids[sku],
            kind=kind,  # type: ignore[arg-type]
            qty=qty,
        )
        self.out.append(Item("inventory", location_id, ts, event))

    def reserve(self, ts: int, loc: int, sku: int, qty: int) -> int:
        """Take up to qty units for an order; returns what could be had."""
        key = loc * SKU_SLOTS + sku
        if key not in self.avail:
            self.snapshot(ts, loc, sku)
        if key in self.frozen:
            return 0
        have = self.avail[key]
        got = min(have, qty)
        if got <= 0:
            return 0
        self.avail[key] = have - got
        if key not in self.pending_restock and have - got <= self.levels(loc, sku)[1]:
            self._order_restock(ts, loc, sku)
        return got

    def _order_restock(self, ts: int, loc: int, sku: int) -> None:
        gen = self.gen
        key = loc * SKU_SLOTS + sku
        self.pending_restock.add(key)
        level, _ = self.levels(loc, sku)
        qty = level - self.avail[key]
        if loc >= WH_BASE:
            gen.push(ts + gen.ri(3_600_000, 14_400_000), self._receipt, (loc, sku, qty))
        else:
            gen.push(ts + gen.ri(600_000, 2_400_000), self._transfer_out, (loc, sku, qty))

    def _transfer_out(self, ts: int, move: tuple[int, int, int]) -> None:
        """The regional warehouse ships a store's replenishment (or the supplier does)."""
        gen = self.gen
        loc, sku, qty = move
        wh = WH_BASE + self.world.store_region[loc]
        got = self.reserve(ts, wh, sku, qty)
        if got < qty:
            if got:
                self.avail[wh * SKU_SLOTS + sku] += got
            gen.push(ts + gen.ri(3_600_000, 10_800_000), self._receipt, move)
            return
        self.onhand[wh * SKU_SLOTS + sku] -= qty
        self.emit(ts, wh, sku, "transfer_out", qty)
        gen.push(ts + gen.ri(3_600_000, 9_000_000), self._transfer_in, move)

    def _transfer_in(self, ts: int, move: tuple[int, int, int]) -> None:
        loc, sku, qty = move
        self.receive(ts, loc, sku, qty, "transfer_in")

    def _receipt(self, ts: int, move: tuple[int, int, int]) -> None:
        loc, sku, qty = move
        self.receive(ts, loc, sku, qty, "receipt")

    def receive(self, ts: int, loc: int, sku: int, qty: int, kind: str) -> None:
        """Units arrive (``receipt`` or ``transfer_in``): sellable and counted at once."""
        key = loc * SKU_SLOTS + sku
        self.avail[key] += qty
        self.onhand[key] += qty
        self.pending_restock.discard(key)
        self.emit(ts, loc, sku, kind, qty)

    def adjust(self, ts: int) -> None:
        """Shrinkage or a recount found a unit: the small noise of real stock."""
        gen = self.gen
        key = self.known_keys[gen.rr(len(self.known_keys))]
        if key in self.frozen:
            return
        loc, sku = divmod(key, SKU_SLOTS)
        delta = -gen.ri(1, 2) if gen.rng.random() < 0.8 else 1
        if self.avail[key] + delta < 0:
            return
        self.avail[key] += delta
        self.onhand[key] += delta
        self.emit(ts, loc, sku, "adjustment", delta)
