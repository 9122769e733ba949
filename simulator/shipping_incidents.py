"""Incidents of fulfilment: a district whose deliveries keep failing, and paid orders
that never ship.

Both make orders of their own, through the generator's order and shipment
code (the same events, stock effects and customer-service tickets as any
order), so the rules meet them exactly as they would in the real streams, and
the truth says when a rule can first see each one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ctower.rules.config import LogisticsRules
from ctower.schemas.events import MINUTE
from ctower.simulator.chain import ISO_CARRIERS
from ctower.simulator.incidents import Incident
from ctower.simulator.state import OrderState, ShipmentState

if TYPE_CHECKING:
    from ctower.simulator.chain import Store



def _region_store(incident: Incident, avoid_region: str) -> Store:
    """A busy store outside ``avoid_region`` (the carrier delay's lane) no other incident uses."""
    gen = incident.gen
    stores = sorted((s for s in gen.chain.stores if s.region_id != avoid_region),
                    key=lambda s: (-s.weight, s.idx))[:10]
    free = [s for s in stores if s.idx not in gen.hooks.incident_stores] or stores
    store = free[incident.rng.randrange(len(free))]
    gen.hooks.incident_stores.append(store.idx)
    return store


def _busiest_region(incident: Incident) -> str:
    """Where the carrier delay happens (its failures flag districts of their own)."""
    gen = incident.gen
    busiest = max(range(len(gen.world.regions)), key=lambda i: (gen.world.region_share[i], -i))
    return gen.world.regions[busiest].region_id


def _order(incident: Incident, ts: int, store: Store, member: str, fulfillment: str,
           then: Callable[[int, OrderState], None]) -> None:
    """A member scans a top SKU into the cart, orders one where it ships from and pays
    5-60 s later (``then(paid_ts, order)``), as any shopper's order goes; nothing when
    that location has none of the top SKUs."""
    gen = incident.gen
    if fulfillment == "warehouse_direct":
        loc = gen.world.warehouse_loc(store.idx)
        ship_from: str | None = gen.world.loc_ids[loc]
    else:
        loc, ship_from = store.idx, None
    for sku in gen.world.top_skus:
        key = gen.world.stock_key(loc, sku)
        if key not in gen.stock.avail or gen.stock.avail[key] > 0:
            break
    emit_scan = gen.sessions.emit_scan
    emit_scan(ts, store, sku, "view", member)
    gen.push(ts + 2_000, lambda cart, _: emit_scan(cart, store, sku, "add_to_cart", member))

    def create(created: int, _: Any) -> None:
        got = gen.stock.reserve(created, loc, sku, 1)
        if not got:
            return
        order = gen.orders.new_order(store, member, "mini_program", fulfillment, loc, ship_from,
                              [(sku, got)], None)
        gen.orders.emit(created, order, "created")

        def pay(paid: int, _: Any) -> None:
            for line_sku, qty in order.units:  # what the generator's payment does to stock
                gen.stock.onhand[gen.world.stock_key(loc, line_sku)] -= qty
            gen.orders.emit(paid, order, "paid")
            then(paid, order)

        gen.push(created + incident.rng.randint(5_000, 60_000), pay)

    gen.push(ts + incident.rng.randint(5_000, 20_000), create)  # after the cart


class DistrictFailed(Incident):
    """Deliveries to one district of a city fail one after another: a carrier's
    courier there cannot get through (a closed compound, a wrong address pool)."""

    kind = "district_failed"
    FAILURES = 4

    def install(self) -> None:
        gen = self.gen
        self.store = _region_store(self, _busiest_region(self))
        self.region = gen.world.regions[gen.world.store_region[self.store.idx]]
        self.carrier = self.region.carriers[0]
        # members of the store who live in one district
        self.members: list[str] = []
        n = 0
        target = None
        while len(self.members) < self.FAILURES:
            member = f"M{self.store.idx + 1:03d}{n:05d}"
            district = gen.world.district_of(self.store, member)
            target = target or district
            if district == target:
                self.members.append(member)
            n += 1
        self.district = target or ""
        self.t0 = self.at(0.5)
        self.failed_at: list[int] = []
        self.shipments: list[str] = []
        for i, member in enumerate(self.members):
            # failures about 8 minutes apart, each order placed 1-2 hours before
            fail = self.t0 + i * 8 * MINUTE + self.rng.randint(0, 60_000)
            placed = max(self.start + i * 1_000, fail - self.rng.randint(60, 120) * MINUTE)
            gen.push(placed, self._order, (member, fail))

    def _order(self, ts: int, plan: tuple[str, int]) -> None:
        member, fail = plan
        _order(self, ts, self.store, member, "warehouse_direct",
               lambda paid, order: self._plan(paid, order, fail))

    def _plan(self, paid: int, order: OrderState, fail: int) -> None:
        gen = self.gen
        sh = ShipmentState()
        sh.shipment_id = gen.next_id("SH")
        sh.order = order
        sh.region = self.region.region_id
        sh.district = self.district
        sh.guide_id = ""
        sh.i = 0
        sh.origin_type, sh.origin_id = "central_warehouse", self.region.warehouse_id
        sh.carrier = self.carrier
        sh.iso = self.carrier in ISO_CARRIERS
        created = paid + 2 * MINUTE
        picked = created + 10 * MINUTE
        out = max(picked + MINUTE, fail - 20 * MINUTE)
        fail = max(fail, out + MINUTE)  # a run too short for the plan: compressed, in order
        sh.eta = fail + 60 * MINUTE - fail % MINUTE
        sh.steps = [(created, "created"), (picked, "picked_up"), (out, "out_for_delivery"),
                    (fail, "failed"), (fail + self.rng.randint(60, 180) * MINUTE, "returned")]
        gen.push(created, self._step, sh)

    def _step(self, ts: int, sh: ShipmentState) -> None:
        """The shipment's next step as the generator sends one (a failure also brings
        the customer's ticket, the return a refund)."""
        gen = self.gen
        _, status = sh.steps[sh.i]
        gen.shipments.emit(ts, sh, status)
        if status == "failed":
            self.failed_at.append(sh.last_ts)
            self.shipments.append(sh.shipment_id)
            gen.service_desk.late_parcel(ts, sh.order.store, sh.order.order_id, True)
        sh.i += 1
        if sh.i < len(sh.steps):
            gen.push(sh.steps[sh.i][0], self._step, sh)
        else:
            gen.push(ts + self.rng.randint(600_000, 7_200_000), gen.orders.refund, sh.order)

    def truth(self) -> dict[str, Any]:
        threshold = LogisticsRules().district_failed_min
        times = sorted(self.failed_at)
        return {
            "kind": self.kind,
            "scope": {"carrier": self.carrier, "region": self.region.region_id,
                      "district": self.district},
            "start_ts": times[0] if times else self.t0,
            "end_ts": times[-1] if times else self.t0,
            "expect": {
                "rule": "district_failed: district_failed_min failed deliveries of a lane in one "
                        "district within failed_window_minutes",
                "failed": len(times),
                "shipments": self.shipments,
                "detectable_ts": times[threshold - 1] if len(times) >= threshold else None,
            },
        }


class NotShipped(Incident):
    """Paid orders the warehouse (or a guide) never ships: lost in a picking queue."""

    kind = "not_shipped"
    ORDERS = ((0.30, "warehouse_direct"), (0.50, "guide_delivery"), (0.65, "warehouse_direct"))

    def install(self) -> None:
        self.store = _region_store(self, "")
        self.orders: list[dict[str, Any]] = []
        for fraction, fulfillment in self.ORDERS:
            self.gen.push(self.at(fraction), self._order, fulfillment)

    def _order(self, ts: int, fulfillment: str) -> None:
        store = self.store
        member = f"M{store.idx + 1:03d}{self.rng.randrange(store.member_pool):05d}"
        _order(self, ts, store, member, fulfillment,
               lambda paid, order: self.orders.append({
                   "order_id": order.order_id, "member_id": order.member,
                   "fulfillment": fulfillment, "paid_at": paid}))

    def truth(self) -> dict[str, Any]:
        window = int(LogisticsRules().not_shipped_minutes * MINUTE)
        found = [{**o, "due_ts": o["paid_at"] + window} for o in self.orders]
        return {
            "kind": self.kind,
            "scope": {"store_id": self.store.store_id, "region": self.store.region_id},
            "start_ts": min((o["paid_at"] for o in found), default=self.at(0.3)),
            "end_ts": max((o["due_ts"] for o in found), default=self.at(0.65)),
            "expect": {
                "rule": "not shipped: a paid warehouse-direct or guide-delivery order with no "
                        "shipment within not_shipped_minutes",
                "window_minutes": window // MINUTE,
                "orders": found,
            },
        }
