"""Incidents: things going wrong on purpose, each with its ground truth.

An incident plugs into the running :class:`~ctower.simulator.generator.Generator`
(its queue, the event families' public methods and :mod:`~ctower.simulator.hooks`)
rather than post-editing the stream, so what it
causes stays consistent across streams: a stock-out blocks sales of the SKU,
a pickup rush goes through the same counter queue as every other pickup, a
carrier delay holds the real shipments of that carrier.

Each incident is placed at a fixed fraction of the planned run and reports
what a rule should see (:meth:`Incident.truth`), measured from what was
actually generated, not from what was intended.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from ctower.schemas.events import Scan
from ctower.simulator.items import Item

if TYPE_CHECKING:
    from ctower.simulator.generator import Generator
    from ctower.simulator.state import ShipmentState

MIN_SPAN_MS = 30 * 60_000
"""Incidents need room: a baseline before them and a 5-minute spike window."""

KINDS = ("stock_out", "pickup_rush", "carrier_delay", "demand_spike", "late", "malformed",
         "complaint_burst", "complaint_sla", "district_failed", "not_shipped",
         "guide_capacity", "guide_late")


class Incident:
    """Base: a window placed on the run, its own RNG, and a truth record."""

    kind: ClassVar[str]

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        # Own RNG: where an incident lands does not depend on the other incidents.
        self.rng = random.Random(f"{self.kind}:{gen.config.seed}")
        self.start = gen.plan.start_ms
        self.span = gen.plan.horizon_ms - gen.plan.start_ms

    def at(self, fraction: float) -> int:
        return self.start + int(self.span * fraction)

    def pick_store(self, top: int = 20) -> int:
        """A busy store no other incident uses (incidents must not blur each other)."""
        stores = sorted(self.gen.chain.stores, key=lambda s: (-s.weight, s.idx))[:top]
        used = self.gen.hooks.incident_stores
        free = [s.idx for s in stores if s.idx not in used] or [s.idx for s in stores]
        idx = free[self.rng.randrange(len(free))]
        used.append(idx)
        return idx

    def install(self) -> None:
        raise NotImplementedError

    def truth(self) -> dict[str, Any]:
        raise NotImplementedError


def create(kind: str, gen: Generator) -> Incident:
    from ctower.simulator.guides import GuideCapacity, GuideLate
    from ctower.simulator.service_desk import ComplaintBurst, ComplaintSla
    from ctower.simulator.shipping_incidents import DistrictFailed, NotShipped

    classes: dict[str, type[Incident]] = {
        cls.kind: cls
        for cls in (StockOut, PickupRush, CarrierDelay, DemandSpike, Late, Malformed,
                    ComplaintBurst, ComplaintSla, DistrictFailed, NotShipped,
                    GuideCapacity, GuideLate)
    }
    if kind not in classes:
        raise ValueError(f"unknown incident {kind!r}; known: {', '.join(KINDS)}")
    if gen.plan.horizon_ms - gen.plan.start_ms < MIN_SPAN_MS:
        raise ValueError(
            "incidents need at least 30 minutes of simulated time; raise --events or "
            "--duration, or lower --sim-rate"
        )
    return classes[kind](gen)


# ---------------------------------------------------------------------------
class StockOut(Incident):
    """A SKU at a store is found missing (count adjustment to zero) and stays
    at zero while shoppers keep scanning it, until a transfer from the
    regional warehouse arrives."""

    kind = "stock_out"

    def install(self) -> None:
        gen = self.gen
        self.store = gen.chain.stores[self.pick_store()]
        candidates = gen.world.top_skus[2:12]
        self.rng.shuffle(candidates)
        self.candidates = candidates
        self.sku = candidates[0]
        self.key = gen.world.stock_key(self.store.idx, self.sku)
        self.planned_end = self.at(0.70)
        self.start_ts = self.end_ts = 0
        self.adjusted = 0
        self.scans = self.carts = 0
        self.tries = 0
        self.transfer_kind = "transfer_in"
        self.restock_qty = 0
        gen.push(self.at(0.25), self._begin)

    def _quiet(self, sku: int) -> bool:
        """No order of it between created and paid and no restock on its way:
        then the on-hand the rules compute is exactly zero after the count."""
        gen = self.gen
        key = gen.world.stock_key(self.store.idx, sku)
        return (
            key in gen.stock.avail
            and gen.stock.avail[key] == gen.stock.onhand[key]
            and key not in gen.stock.pending_restock
        )

    def _begin(self, ts: int, _: Any) -> None:
        gen = self.gen
        loc = self.store.idx
        quiet = [sku for sku in self.candidates if self._quiet(sku)]
        if not quiet:
            self.tries += 1
            if self.tries >= 20:  # ten minutes without one: count a shelf now, start next second
                for sku in self.candidates:
                    if gen.world.stock_key(loc, sku) not in gen.stock.avail:
                        gen.stock.snapshot(ts, loc, sku)
                        break
            gen.push(ts + (1_000 if self.tries >= 20 else 30_000), self._begin)
            return
        self.sku = quiet[0]
        self.key = gen.world.stock_key(loc, self.sku)
        self.start_ts = ts
        self.adjusted = gen.stock.onhand[self.key]
        gen.stock.frozen.add(self.key)
        gen.stock.pending_restock.add(self.key)
        if self.adjusted:
            gen.stock.emit(ts, loc, self.sku, "adjustment", -self.adjusted)
        gen.stock.avail[self.key] = gen.stock.onhand[self.key] = 0
        gen.hooks.scan_watch[self.key] = self._on_scan
        gen.push(ts + 20_000, self._searcher)
        gen.push((ts + self.planned_end) // 2, self._dispatch)
        gen.push(max(self.planned_end, ts + 600_000), self._end)

    def _searcher(self, ts: int, _: Any) -> None:
        """Shoppers scanning the shelf label of the missing SKU."""
        if self.end_ts or ts >= self.planned_end:
            return
        self.gen.sessions.start_focused(ts, self.store, self.sku, "scan_and_go", "in_store", 0.3)
        self.gen.push(ts + int(self.rng.expovariate(1 / 30.0) * 1000) + 1, self._searcher)

    def _dispatch(self, ts: int, _: Any) -> None:
        """The warehouse ships the replenishment the rule should have asked for."""
        gen = self.gen
        level, _ = gen.stock.levels(self.store.idx, self.sku)
        wh = gen.world.warehouse_loc(self.store.idx)
        got = gen.stock.reserve(ts, wh, self.sku, level)
        if got:
            gen.stock.onhand[gen.world.stock_key(wh, self.sku)] -= got
            gen.stock.emit(ts, wh, self.sku, "transfer_out", got)
            self.restock_qty = got
        else:
            self.transfer_kind, self.restock_qty = "receipt", level

    def _end(self, ts: int, _: Any) -> None:
        gen = self.gen
        self.end_ts = ts
        gen.stock.frozen.discard(self.key)
        gen.hooks.scan_watch.pop(self.key, None)
        gen.stock.receive(ts, self.store.idx, self.sku, self.restock_qty, self.transfer_kind)

    def _on_scan(self, ts: int, action: str) -> None:
        if self.start_ts <= ts and not self.end_ts:
            self.scans += 1
            self.carts += action == "add_to_cart"

    def truth(self) -> dict[str, Any]:
        gen = self.gen
        return {
            "kind": self.kind,
            "scope": {
                "region": self.store.region_id,
                "store_id": self.store.store_id,
                "sku": gen.world.sku_ids[self.sku],
            },
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            "expect": {
                "rule": "stock-out: on-hand zero while scans continue; "
                "restock from the transfer source",
                "on_hand": 0,
                "adjustment_qty": -self.adjusted,
                "scans_while_zero": self.scans,
                "add_to_cart_while_zero": self.carts,
                "transfer_source": gen.world.loc_ids[gen.world.warehouse_loc(self.store.idx)],
                "nearest_stores": [s for s, _ in gen.chain.nearest_stores(self.store.store_id)],
                "restocked_by": self.transfer_kind,
                "restock_qty": self.restock_qty,
            },
        }


# ---------------------------------------------------------------------------
class PickupRush(Incident):
    """A community group-buy lands at one store: every order has the same
    pickup slot, so arrivals far exceed what the counter can serve."""

    kind = "pickup_rush"

    def install(self) -> None:
        gen = self.gen
        self.store = gen.chain.stores[self.pick_store()]
        self.t0 = self.at(0.40)
        self.length = max(6 * 60_000, min(30 * 60_000, self.span // 5))
        lead = min(40 * 60_000, int(self.span * 0.3))
        staff = self.store.pickup_staff
        service_s = 15.0 + 40.0
        self.n_orders = math.ceil(
            max(3 * self.store.pickup_capacity, 1.6 * staff * (self.length / 1000) / service_s)
        )
        self.deal = gen.world.top_skus[self.rng.randrange(0, 20)]
        self.visits: list[tuple[int, int, int]] = []
        self.rush_orders: set[str] = set()
        times = sorted(
            self.rng.randint(self.t0 - lead, self.t0 - 240_000) for _ in range(self.n_orders)
        )
        gen.push(self.t0 - lead - 60_000, self._delivery)
        for t in times:
            gen.push(t, self._order)
        gen.hooks.pickup_watch[self.store.idx] = self._on_arrival

    def _delivery(self, ts: int, _: Any) -> None:
        """The group-buy goods arrive at the store before the orders come in."""
        gen = self.gen
        if gen.world.stock_key(self.store.idx, self.deal) not in gen.stock.avail:
            gen.stock.snapshot(ts, self.store.idx, self.deal)
        gen.stock.receive(ts, self.store.idx, self.deal, 3 * self.n_orders, "receipt")

    def _order(self, ts: int, _: Any) -> None:
        """A group member opens the deal (view, add to cart), then orders."""
        gen = self.gen
        member = gen.member_of(self.store)
        gen.sessions.emit_scan(ts, self.store, self.deal, "view", member)
        gen.push(ts + self.rng.randint(3_000, 10_000), self._cart, member)

    def _cart(self, ts: int, member: str) -> None:
        self.gen.sessions.emit_scan(ts, self.store, self.deal, "add_to_cart", member)
        self.gen.push(ts + self.rng.randint(5_000, 20_000), self._create, member)

    def _create(self, ts: int, member: str) -> None:
        gen, rng = self.gen, self.rng
        qty = gen.stock.reserve(ts, self.store.idx, self.deal, 1 + (rng.random() < 0.3))
        if not qty:
            return
        order = gen.orders.new_order(
            self.store,
            member,
            "community_group",
            "store_pickup",
            self.store.idx,
            None,
            [(self.deal, qty)],
            None,
        )
        paid = ts + rng.randint(5_000, 60_000)
        ready = max(ts + 120_000, self.t0 - 600_000)
        arrival = (
            None
            if rng.random() < 0.05
            else self.t0 + int(self.length * rng.triangular(0.0, 0.7, 0.15))
        )
        order.pickup_plan = (self.t0, ready, arrival)
        self.rush_orders.add(order.order_id)
        gen.orders.emit(ts, order, "created")
        gen.push(paid, gen.orders.pay, order)

    def _on_arrival(self, arrived: int, start: int, done: int, order_id: str) -> None:
        self.visits.append((arrived, done, order_id in self.rush_orders))

    def truth(self) -> dict[str, Any]:
        cap = self.store.pickup_capacity
        t1 = self.t0 + self.length
        changes = sorted([(a, 1) for a, _, _ in self.visits] + [(d, -1) for _, d, _ in self.visits])
        waiting = peak = peak_ts = 0
        spells: list[tuple[int, int]] = []  # (from, until) while waiting > capacity
        opened = 0
        for ts, step in changes:
            waiting += step
            if waiting > peak:
                peak, peak_ts = waiting, ts
            if waiting > cap and not opened:
                opened = ts
            elif waiting <= cap and opened:
                spells.append((opened, ts))
                opened = 0
        if opened:
            spells.append((opened, changes[-1][0]))
        longest = max(spells, key=lambda s: (s[1] - s[0], s[0]), default=(0, 0))

        def p90(values: list[int]) -> float:
            if not values:
                return 0.0
            values = sorted(values)
            return round(values[min(len(values) - 1, math.ceil(0.9 * len(values)) - 1)] / 1000, 1)

        during = [d - a for a, d, _ in self.visits if self.t0 <= a < t1]
        before = [d - a for a, d, _ in self.visits if a < self.t0]
        return {
            "kind": self.kind,
            "scope": {"region": self.store.region_id, "store_id": self.store.store_id},
            "start_ts": self.t0,
            "end_ts": t1,
            "expect": {
                "rule": "pickup congestion: waiting above capacity, p90 wait above 10 min",
                "capacity": cap,
                "staff": self.store.pickup_staff,
                "rush_orders": len(self.rush_orders),
                "arrivals_in_window": len(during),
                "max_waiting": peak,
                "max_waiting_ts": peak_ts,
                "over_capacity_from_ts": longest[0],
                "over_capacity_until_ts": longest[1],
                "over_capacity_s": round(sum(b - a for a, b in spells) / 1000),
                "p90_wait_s": p90(during),
                "max_wait_s": round(max(during, default=0) / 1000, 1),
                "baseline_p90_wait_s": p90(before),
                "coupon_throttle": "store_pickup campaigns at this store: pressure > 0.8",
            },
        }


# ---------------------------------------------------------------------------
class CarrierDelay(Incident):
    """One carrier in one region stops sending updates; when it resumes, a
    third of the held shipments fail and the rest arrive after their ETA."""

    kind = "carrier_delay"

    def install(self) -> None:
        gen = self.gen
        busiest = max(range(len(gen.world.regions)), key=lambda i: (gen.world.region_share[i], -i))
        self.region = gen.world.regions[busiest]
        self.carrier = self.region.carriers[0]
        self.t0 = self.at(0.35)
        self.t1 = self.at(0.90)
        self.held: dict[str, dict[str, Any]] = {}
        self.shipments: dict[str, ShipmentState] = {}
        gen.hooks.carrier_delay[(self.carrier, self.region.region_id)] = self

    def intercept(self, ts: int, sh: ShipmentState) -> bool:
        """Called before each shipment step of this carrier and region; True = held."""
        if ts < self.t0:
            return False
        record = self.held.get(sh.shipment_id)
        if ts < self.t1:
            if record is None:
                self.held[sh.shipment_id] = {
                    "shipment_id": sh.shipment_id,
                    "last_update_ts": sh.last_ts,
                    "eta": sh.eta,
                    "held_status": sh.steps[sh.i][1],
                }
                self.shipments[sh.shipment_id] = sh
            self.gen.push(self.t1 + self.rng.randint(0, 1_200_000), self.gen.shipments.step, sh)
            return True
        if record is not None and "resumed_ts" not in record:
            record["resumed_ts"] = ts
            if self.rng.random() < 0.35:
                returned = ts + self.rng.randint(3_600_000, 10_800_000)
                sh.steps = [*sh.steps[: sh.i], (ts, "failed"), (returned, "returned")]
            else:
                shift = ts - sh.steps[sh.i][0]
                sh.steps = sh.steps[: sh.i] + [(t + shift, s) for t, s in sh.steps[sh.i :]]
        return False

    def truth(self) -> dict[str, Any]:
        """Outcomes as sent: a failure planned after the run's end is not one."""
        held = []
        for record in sorted(self.held.values(), key=lambda r: r["shipment_id"]):
            sh = self.shipments[record["shipment_id"]]
            sent = [status for _, status in sh.steps[: sh.i]]
            outcome = sent[-1] if sent else "created"
            delivered = [t for t, status in sh.steps[: sh.i] if status == "delivered"]
            held.append(
                {
                    **record,
                    "last_status": outcome,
                    "failed": "failed" in sent,
                    "delivered_late": bool(delivered) and delivered[0] > record["eta"],
                }
            )
        silences = [r.get("resumed_ts", self.t1) - r["last_update_ts"] for r in held]
        return {
            "kind": self.kind,
            "scope": {"carrier": self.carrier, "region": self.region.region_id},
            "start_ts": self.t0,
            "end_ts": self.t1,
            "expect": {
                "rule": "logistics exceptions: stale shipments, ETA passed, failed deliveries",
                "held_shipments": len(held),
                "max_silence_s": round(max(silences, default=0) / 1000),
                "eta_passed_while_held": sum(1 for r in held if self.t0 <= r["eta"] < self.t1),
                "failed": sum(1 for r in held if r["failed"]),
                "delivered_late": sum(1 for r in held if r["delivered_late"]),
                "shipments": held,
            },
        }


# ---------------------------------------------------------------------------
class DemandSpike(Incident):
    """A live stream features one SKU of one store: its scans jump far above
    the store's baseline for several minutes."""

    kind = "demand_spike"

    def install(self) -> None:
        gen = self.gen
        self.store = gen.chain.stores[self.pick_store()]
        ranked = gen.world.top_skus
        self.sku = ranked[self.rng.randrange(10, len(ranked))]
        self.key = gen.world.stock_key(self.store.idx, self.sku)
        self.t0 = self.at(0.55)
        self.length = max(6 * 60_000, min(12 * 60_000, self.span // 10))
        # Expected baseline scans/min of this (store, SKU) at the curve's peak.
        sessions_per_min = gen.plan.sim_rate * 2.2 * 60 / 6.0
        world = gen.world
        baseline = (
            sessions_per_min * world.store_share[self.store.idx] * 2.3
            * world.sku_share[self.sku] * 1.5
        )
        self.per_min = max(8.0, 20 * baseline)
        self.scan_minutes: dict[int, int] = {}
        gen.hooks.scan_watch[self.key] = self._on_scan
        gen.push(self.t0, self._viewer)

    def _viewer(self, ts: int, _: Any) -> None:
        if ts >= self.t0 + self.length:
            return
        fulfillment = "warehouse_direct" if self.rng.random() < 0.8 else "store_pickup"
        self.gen.sessions.start_focused(ts, self.store, self.sku, "live_stream", fulfillment, 0.35)
        gap = int(self.rng.expovariate(self.per_min / 60_000)) + 1
        self.gen.push(ts + gap, self._viewer)

    def _on_scan(self, ts: int, action: str) -> None:
        minute = ts - ts % 60_000
        self.scan_minutes[minute] = self.scan_minutes.get(minute, 0) + 1

    def truth(self) -> dict[str, Any]:
        t1 = self.t0 + self.length
        base_from = max(self.start, self.t0 - 3_600_000)
        base = sum(
            n for m, n in self.scan_minutes.items() if base_from <= m < self.t0 - self.t0 % 60_000
        )
        spike = sum(n for m, n in self.scan_minutes.items() if self.t0 <= m < t1)
        base_5 = base / max(1.0, (self.t0 - base_from) / 300_000)
        spike_5 = spike / (self.length / 300_000)
        return {
            "kind": self.kind,
            "scope": {
                "region": self.store.region_id,
                "store_id": self.store.store_id,
                "sku": self.gen.world.sku_ids[self.sku],
            },
            "start_ts": self.t0,
            "end_ts": t1,
            "expect": {
                "rule": "demand spike: scans in 5 min above k x moving baseline",
                "baseline_scans_per_5min": round(base_5, 3),
                "spike_scans_per_5min": round(spike_5, 1),
                "ratio": round(spike_5 / max(base_5, 1.0), 1),
                "ratio_floor_used": 1.0,
                "action": "pre-pack at "
                + self.gen.world.regions[self.gen.world.store_region[self.store.idx]].warehouse_id,
            },
        }


# ---------------------------------------------------------------------------
class Late(Incident):
    """Scans that arrive after their window closed: each is sent right after
    an event of the same store (same partition) that is minutes newer."""

    kind = "late"
    COUNT = 6

    def install(self) -> None:
        self.sent: list[dict[str, Any]] = []
        for i in range(self.COUNT):
            self.gen.push(self.at(0.3 + 0.6 * i / (self.COUNT - 1)), self._fire)

    def _fire(self, ts: int, _: Any) -> None:
        gen, rng = self.gen, self.rng
        store = gen.chain.stores[rng.randrange(len(gen.chain.stores))]
        sku = gen.chain.pick_sku(rng)
        member = gen.member_of(store)
        gen.sessions.emit_scan(ts, store, sku, "view", member)  # the partition's newest ts
        behind = min(rng.randint(90_000, 600_000), ts - self.start)
        if behind <= 60_000:
            return
        gen.sessions.emit_scan(ts - behind, store, sku, "view", member, late_ms=behind)
        self.sent.append({"store_id": store.store_id, "ts": ts - behind, "behind_ms": behind})

    def truth(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scope": {"stores": sorted({s["store_id"] for s in self.sent})},
            "start_ts": min((s["ts"] for s in self.sent), default=0),
            "end_ts": max((s["ts"] + s["behind_ms"] for s in self.sent), default=0),
            "expect": {
                "rule": "late events: dropped from closed windows (grace 10 s), counted as late",
                "count": len(self.sent),
                "min_behind_s": min((s["behind_ms"] for s in self.sent), default=0) // 1000,
                "details": "see the top-level `late` list",
            },
        }


# ---------------------------------------------------------------------------
_YEAR_MS = 365 * 86_400_000


class Malformed(Incident):
    """Broken messages of every kind the decoder names, spread over the run."""

    kind = "malformed"
    CASES: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("truncated_json", "scan", "not_json"),
        ("invalid_utf8", "scan", "not_utf8"),
        ("not_an_object", "order", "not_an_object"),
        ("missing_field", "order", "missing_field"),
        ("wrong_type", "inventory", "wrong_type"),
        ("unknown_enum", "scan", "unknown_value"),
        ("negative_quantity", "inventory", "out_of_range"),
        ("negative_line_qty", "order", "out_of_range"),
        ("ts_years_away", "pickup", "ts_out_of_window"),
        ("naive_iso_ts", "logistics", "bad_timestamp"),
        ("empty_batch", "coupon", "empty_batch"),
        ("bad_element_in_batch", "scan", "bad_timestamp"),
    )
    """(what is broken, stream, reason code the decoder must give)."""

    def install(self) -> None:
        self.sent: list[str] = []
        n = len(self.CASES)
        for i, case in enumerate(self.CASES):
            self.gen.push(self.at(0.1 + 0.8 * i / (n - 1)), self._fire, case)

    def _fire(self, ts: int, case: tuple[str, str, str]) -> None:
        gen, rng = self.gen, self.rng
        what, stream, reason = case
        store = gen.chain.stores[rng.randrange(len(gen.chain.stores))]
        sku = gen.world.sku_ids[gen.chain.pick_sku(rng)]
        enc = msgspec.json.encode
        ident = f"{gen.tag}-{gen.next_serial()}"
        scan = {
            "ts": ts,
            "scan_id": f"SC-{ident}",
            "store_id": store.store_id,
            "sku": sku,
            "action": "view",
        }
        order = {
            "ts": ts,
            "order_id": f"OD-{ident}",
            "member_id": gen.member_of(store),
            "store_id": store.store_id,
            "channel": "mini_program",
            "fulfillment": "store_pickup",
            "lines": [{"sku": sku, "qty": 1, "unit_price": 9.9}],
            "amount": 9.9,
            "status": "created",
        }
        stock = {"ts": ts, "location_id": store.store_id, "sku": sku, "kind": "receipt", "qty": 12}
        key = store.store_id
        contained: tuple[Any, ...] = ()
        index = -1
        if what == "truncated_json":
            full = enc(scan)
            raw = full[: len(full) // 2]
        elif what == "invalid_utf8":
            raw = enc(scan).replace(store.store_id.encode(), b"S\xe4\xb8")
        elif what == "not_an_object":
            raw = b'"ORDER-PAID"'
        elif what == "missing_field":
            raw = enc({k: v for k, v in order.items() if k != "channel"})
        elif what == "wrong_type":
            raw = enc({**stock, "qty": "12"})
        elif what == "unknown_enum":
            raw = enc({**scan, "action": "purchase"})
        elif what == "negative_quantity":
            raw = enc({**stock, "qty": -5})
        elif what == "negative_line_qty":
            raw = enc({**order, "lines": [{"sku": sku, "qty": -1, "unit_price": 9.9}]})
        elif what == "ts_years_away":
            raw = enc(
                {
                    "ts": ts - 7 * _YEAR_MS,
                    "order_id": f"OD-{ident}",
                    "store_id": store.store_id,
                    "state": "arrived",
                }
            )
        elif what == "naive_iso_ts":
            key = f"SH-{ident}"
            raw = enc(
                {
                    "ts": "2026-01-01T10:00:00",
                    "shipment_id": key,
                    "order_id": f"OD-{ident}",
                    "origin_type": "central_warehouse",
                    "origin_id": "WH-EAST",
                    "carrier": "SF",
                    "region": "EAST",
                    "status": "in_transit",
                }
            )
        elif what == "empty_batch":
            key = gen.chain.campaigns[0].campaign_id
            raw = b"[]"
        else:  # bad_element_in_batch: a good scan, then one with a nonsense ts
            good = Scan(
                ts=ts, scan_id=f"SC-{ident}", store_id=store.store_id, sku=sku, action="view"
            )
            bad = {**scan, "scan_id": f"SC-{ident}-b", "ts": "yesterday"}
            raw = b"[" + msgspec.json.encode(good) + b"," + enc(bad) + b"]"
            contained, index = (good,), 1
        gen.out.append(
            Item(
                stream,
                key,
                ts,
                None,
                raw=raw,
                contained=contained,
                rejections=((index, reason, what),),
            )
        )
        self.sent.append(what)

    def truth(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scope": {},
            "start_ts": self.at(0.1),
            "end_ts": self.at(0.9),
            "expect": {
                "rule": "dead-letter with the reason code; valid neighbours still counted",
                "count": len(self.sent),
                "cases": list(self.sent),
                "details": "see the top-level `malformed` list",
            },
        }
