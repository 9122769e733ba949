"""Deliveries: a carrier from the regional warehouse, or one of the store's guides.

A shipment's steps (pick-up, hub scans, out for delivery, the outcome) are
planned when it is created and sent as their times come; an incident's hold
(:attr:`IncidentHooks.carrier_delay <ctower.simulator.hooks.IncidentHooks.carrier_delay>`)
may stop a step and send it later.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from ctower.schemas.events import MINUTE, Logistics
from ctower.simulator.chain import GUIDE_CARRIER, ISO_CARRIERS, Guide
from ctower.simulator.items import Item
from ctower.simulator.state import OrderState, ShipmentState

if TYPE_CHECKING:
    from ctower.simulator.generator import Generator


class Shipments:
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.world = gen.world
        self.out = gen.out

    def create(self, ts: int, order: OrderState) -> None:
        """Handler: a paid delivery order ships (or waits for a guide who can take it)."""
        gen = self.gen
        rng = gen.rng
        region = self.world.regions[self.world.store_region[order.store.idx]]
        sh = ShipmentState()
        sh.shipment_id = gen.next_id("SH")
        sh.order = order
        sh.region = region.region_id
        sh.district = self.world.district_of(order.store, order.member)
        sh.i = 0
        sh.guide_id = ""
        if order.fulfillment == "warehouse_direct":
            sh.origin_type = "central_warehouse"
            sh.origin_id = region.warehouse_id
            x = rng.random()
            sh.carrier = region.carriers[0 if x < 0.5 else 1 if x < 0.8 else 2]
            pick = ts + gen.ri(900_000, 2_700_000)
            eta = ts + gen.ri(3_600_000, 10_800_000)
            ofd_lead = (1_200_000, 3_600_000)
        else:
            sh.origin_type = "guide"
            sh.origin_id = order.store.store_id
            sh.carrier = GUIDE_CARRIER
            gen.guides.release(order)
            guide = gen.guides.assign(ts, order, gen.ri(1, order.store.guides))
            pick = ts + gen.ri(180_000, 600_000)
            eta = ts + gen.ri(1_800_000, 4_500_000)
            ofd_lead = (180_000, 600_000)
            if guide is None:  # no guide can take it now: it waits, promised as ordered
                sh.eta = eta - eta % MINUTE + MINUTE
                sh.iso = False
                # the draws of the steps it would have had: the rest of the run is the
                # same whether or not a guide could take it (the guide who does plans anew)
                self._plan_steps(sh, pick, sh.eta, ofd_lead, rng)
                self.emit(ts, sh, "created")
                gen.guides.wait(ts, sh, first=True)
                return
            sh.guide_id = guide.guide_id
        sh.eta = eta = eta - eta % MINUTE + MINUTE
        sh.iso = sh.carrier in ISO_CARRIERS
        self._plan_steps(sh, pick, eta, ofd_lead, rng)
        self.emit(ts, sh, "created")
        gen.push(sh.steps[0][0], self.step, sh)

    def guide_takes(self, ts: int, sh: ShipmentState, guide: Guide, rng: random.Random) -> None:
        """A guide takes a delivery that waited: picked up shortly, with a new ETA."""
        sh.guide_id = guide.guide_id
        pick = ts + rng.randint(180_000, 600_000)
        eta = ts + rng.randint(1_800_000, 4_500_000)
        sh.eta = eta - eta % MINUTE + MINUTE
        self._plan_steps(sh, pick, sh.eta, (180_000, 600_000), rng)
        self.gen.push(sh.steps[0][0], self.step, sh)

    def _plan_steps(self, sh: ShipmentState, pick: int, eta: int, ofd_lead: tuple[int, int],
                    rng: random.Random) -> None:
        """The shipment's steps from its pick-up: hub scans, out for delivery, the outcome."""
        gen = self.gen
        ri = gen.ri if rng is gen.rng else rng.randint
        x = rng.random()
        if x < 0.025:
            deliver, final = pick + (eta - pick) * rng.uniform(0.6, 1.0), "failed"
        elif x < 0.10:
            deliver, final = eta + ri(300_000, 3_600_000), "delivered"
        else:
            deliver, final = eta - (eta - pick) * rng.uniform(0.0, 0.3), "delivered"
        slow = gen.guides.slow.get(sh.guide_id) if sh.guide_id else None
        if slow is not None:
            late = slow.late(pick, eta)
            if late is not None:
                deliver, final = late, "delivered"
        deliver_ms = int(deliver)
        ofd = max(pick + 60_000, deliver_ms - ri(*ofd_lead))
        steps: list[tuple[int, str]] = [(pick, "picked_up")]
        t = pick + ri(180_000, 900_000)
        while t < ofd - 60_000:  # hub scans, roughly hourly
            steps.append((t, "in_transit"))
            t += ri(2_400_000, 4_200_000)
        steps.append((ofd, "out_for_delivery"))
        steps.append((max(deliver_ms, ofd + 60_000), final))
        if final == "failed":
            steps.append((steps[-1][0] + ri(3_600_000, 10_800_000), "returned"))
        if slow is not None:
            slow.record(sh, eta, steps[-1][0] if final == "delivered" else 0, final)
        sh.steps = steps

    def step(self, ts: int, sh: ShipmentState) -> None:
        """Handler: send the shipment's next step, unless a hold takes it."""
        gen = self.gen
        delay = gen.hooks.carrier_delay.get((sh.carrier, sh.region))
        if delay is not None and delay.intercept(ts, sh):
            return
        _, status = sh.steps[sh.i]
        self.emit(ts, sh, status)
        if status == "failed" or (status == "delivered" and ts > sh.eta):
            gen.service_desk.late_parcel(ts, sh.order.store, sh.order.order_id,
                                         status == "failed")
        sh.i += 1
        if sh.i < len(sh.steps):
            gen.push(sh.steps[sh.i][0], self.step, sh)
        elif sh.order.refund or status == "returned":
            gen.push(ts + gen.ri(600_000, 7_200_000), gen.orders.refund, sh.order)

    def emit(self, ts: int, sh: ShipmentState, status: str) -> None:
        """One logistics event; ISO sources round ``ts`` up to the second."""
        if sh.iso:
            ts += -ts % 1000  # ISO sources send whole seconds: round up, never before the clock
        sh.last_ts = ts
        event = Logistics(
            ts=ts,
            shipment_id=sh.shipment_id,
            order_id=sh.order.order_id,
            origin_type=sh.origin_type,  # type: ignore[arg-type]
            origin_id=sh.origin_id,
            carrier=sh.carrier,
            region=sh.region,
            status=status,  # type: ignore[arg-type]
            eta=sh.eta,
            district=sh.district,
            guide_id=sh.guide_id or None,
        )
        self.out.append(Item("logistics", sh.shipment_id, ts, event, iso=sh.iso))
