"""Shopping guides (导购) in the simulation: who takes a guide delivery, and when.

A guide delivery is taken by one of the store's guides who can: on shift
(``chain.Guide`` hours), not away (a drop-out), and under the daily cap. A
store whose guides are off shift or full does not offer guide delivery (the
order goes by carrier, as the mini-program would offer it). An order that
finds no guide when it ships (the last before a shift ends or a cap is
reached, or an incident's) waits: the shipment is ``created`` and nothing
more, what the ``guide_capacity`` rule looks for. A guide who takes an order
that waited sets a new ETA.

Background drop-outs: a guide of a store with at least ``_DROP_MIN_GUIDES``
guides now and then leaves before the end of the shift (the others carry
on), so a drop-out alone never leaves a store without guides; the
incidents below do that on purpose.

The desk has its own RNG: as long as every guide order finds a guide, the
streams are the ones the seed made before guides were modelled (with a guide
id, and the store as ``origin_id``).

Incidents:

- :class:`GuideCapacity`: at a busy store's peak every guide is called away
  for ``AWAY_MS`` while guide orders keep coming (a group-buy with delivery).
- :class:`GuideLate`: one guide's deliveries arrive 25 to 50 minutes after
  their ETA for an hour and a half (a guide new to the area, a broken scooter).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from ctower.schemas.events import MINUTE
from ctower.simulator.chain import Guide
from ctower.simulator.clock import DAY_MS, local_hour
from ctower.simulator.incidents import Incident

if TYPE_CHECKING:
    from ctower.simulator.chain import Store
    from ctower.simulator.generator import Generator
    from ctower.simulator.state import OrderState, ShipmentState

HOUR_MS = 60 * MINUTE
_LOCAL = 8 * HOUR_MS
P_DROP_OUT = 0.04
"""A guide leaves before the end of the shift on this share of days."""
_DROP_MIN_GUIDES = 3
RETRY_MS = MINUTE
"""How often a waiting delivery looks for a guide again (within the guides' hours)."""
WAIT_RULE_MS = 20 * MINUTE
"""rules.toml [guides] wait_minutes: the truth says when the rule can see a wait."""
WAITING_MIN = 3
"""rules.toml [guides] waiting_min."""
LATE_GRACE_MS = 15 * MINUTE
"""rules.toml [guides] late_grace_minutes."""
LATE_WINDOW_MS = 120 * MINUTE
LATE_MIN = 4


class _GuideDay:
    __slots__ = ("assigned", "day", "dropped_at", "guide")

    def __init__(self, guide: Guide) -> None:
        self.guide = guide
        self.day = -1
        self.assigned = 0
        self.dropped_at = 0
        """Local time (ms) the guide leaves today; 0 = stays the whole shift."""


class GuideDesk:
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.rng = random.Random(f"guides:{gen.config.seed}")
        by_id = {s.store_id: s.idx for s in gen.chain.stores}
        self.by_store: list[list[_GuideDay]] = [[] for _ in gen.chain.stores]
        for guide in gen.chain.guides:
            self.by_store[by_id[guide.store_id]].append(_GuideDay(guide))
        self.away: dict[str, tuple[int, int]] = {}
        """Guide -> (from, until): called away by an incident."""
        self.slow: dict[str, Any] = {}
        """Guide -> the incident that makes its deliveries late."""
        self.pinned: dict[str, str] = {}
        """Order -> the guide an incident gives it to."""
        self.promised: list[set[str]] = [set() for _ in gen.chain.stores]
        """Per store: guide-delivery orders placed and not shipped yet (nor cancelled)."""
        self.wait_watch: dict[int, Any] = {}
        """Store -> the incident told when a delivery starts waiting and when it is taken."""

    def _today(self, state: _GuideDay, ts: int) -> None:
        day = (ts + _LOCAL) // DAY_MS
        if state.day == day:
            return
        state.day, state.assigned, state.dropped_at = day, 0, 0
        guide = state.guide
        store_guides = len(self.by_store[self.gen.chain.store(guide.store_id).idx])
        if store_guides >= _DROP_MIN_GUIDES and self.rng.random() < P_DROP_OUT:
            start = day * DAY_MS - _LOCAL + guide.shift_start_hour * HOUR_MS
            length = (guide.shift_end_hour - guide.shift_start_hour) * HOUR_MS
            state.dropped_at = start + int(length * self.rng.uniform(0.3, 0.9))

    def available(self, ts: int, store: Store) -> list[_GuideDay]:
        hour = local_hour(ts)
        found = []
        for state in self.by_store[store.idx]:
            self._today(state, ts)
            guide = state.guide
            away = self.away.get(guide.guide_id)
            if (
                guide.on_shift(hour)
                and not (state.dropped_at and ts >= state.dropped_at)
                and not (away and away[0] <= ts < away[1])
                and state.assigned < guide.daily_cap
            ):
                found.append(state)
        return found

    def offer(self, ts: int, store: Store) -> bool:
        """Whether the store offers guide delivery now: its guides on shift have room
        today for one more order beyond those placed and not shipped yet. A store
        whose guides are off shift or full offers a carrier instead, as the
        mini-program would; only incidents place guide orders nobody can take."""
        room = sum(s.guide.daily_cap - s.assigned for s in self.available(ts, store))
        return room > len(self.promised[store.idx])

    def promise(self, order: OrderState) -> None:
        self.promised[order.store.idx].add(order.order_id)

    def release(self, order: OrderState) -> None:
        self.promised[order.store.idx].discard(order.order_id)

    def assign(self, ts: int, order: OrderState, first: int) -> Guide | None:
        """The guide who takes the order now, or None: the least busy today, the
        rotation starting at ``first`` (1-based) breaking ties."""
        free = self.available(ts, order.store)
        if not free:
            return None
        pinned = self.pinned.pop(order.order_id, None)
        chosen = next((s for s in free if s.guide.guide_id == pinned), None)
        if chosen is None:
            n = len(self.by_store[order.store.idx])
            rank = {s.guide.guide_id: (k - first + 1) % n
                    for k, s in enumerate(self.by_store[order.store.idx])}
            chosen = min(free, key=lambda s: (s.assigned, rank[s.guide.guide_id]))
        chosen.assigned += 1
        return chosen.guide

    def wait(self, ts: int, sh: ShipmentState, first: bool = False) -> None:
        """No guide now: look again later (the next full hour when no shift is on)."""
        store = sh.order.store
        watcher = self.wait_watch.get(store.idx)
        if first and watcher is not None:
            watcher.waiting(sh, ts)
        hour = local_hour(ts)
        if any(s.guide.on_shift(hour) for s in self.by_store[store.idx]):
            later = ts + RETRY_MS
        else:
            later = ts - (ts + _LOCAL) % HOUR_MS + HOUR_MS
        self.gen.push(later, self._retry, sh)

    def _retry(self, ts: int, sh: ShipmentState) -> None:
        guide = self.assign(ts, sh.order, 1)
        if guide is None:
            self.wait(ts, sh)
            return
        watcher = self.wait_watch.get(sh.order.store.idx)
        if watcher is not None:
            watcher.taken(sh, ts)
        self.gen.shipments.guide_takes(ts, sh, guide, self.rng)


def daytime(incident: Incident, fraction: float, hours: tuple[int, int] = (10, 20)) -> int:
    """The first instant from ``fraction`` of the run within local ``hours`` (the guides
    work 08:00-22:00: an incident at night would show nothing); from the run's start
    when none is left after it, ``fraction`` of the run when it has none at all."""
    end = incident.start + incident.span
    for t in (incident.at(fraction), incident.start):
        while t < end:
            if hours[0] <= local_hour(t) < hours[1]:
                return t
            t = t - t % HOUR_MS + HOUR_MS
    return incident.at(fraction)


def stock_up(incident: Incident, store: Store, sku: int, qty: int, ts: int) -> None:
    """The incident's goods arrive at the store before its orders (a receipt)."""
    gen = incident.gen

    def receive(at: int, _: Any) -> None:
        if gen.world.stock_key(store.idx, sku) not in gen.stock.avail:
            gen.stock.snapshot(at, store.idx, sku)
        gen.stock.receive(at, store.idx, sku, qty, "receipt")

    gen.push(ts, receive)


def guide_order(incident: Incident, store: Store, sku: int, ts: int, guide: str | None) -> None:
    """A customer a guide serves orders for delivery: views the SKU, adds it to the cart,
    orders and pays, as in a session (given to ``guide`` when not None)."""
    gen, rng = incident.gen, incident.rng
    member = gen.member_of(store)
    gen.sessions.emit_scan(ts, store, sku, "view", member)

    def cart(at: int, _: Any) -> None:
        gen.sessions.emit_scan(at, store, sku, "add_to_cart", member)
        gen.push(at + rng.randint(5_000, 20_000), create)

    def create(at: int, _: Any) -> None:
        qty = gen.stock.reserve(at, store.idx, sku, 1)
        if not qty:
            return
        order = gen.orders.new_order(store, member, "guide", "guide_delivery", store.idx, None,
                              [(sku, qty)], None)
        if guide is not None:
            gen.guides.pinned[order.order_id] = guide
        gen.orders.emit(at, order, "created")
        gen.push(at + rng.randint(5_000, 30_000), gen.orders.pay, order)

    gen.push(ts + rng.randint(3_000, 10_000), cart)


# ---------------------------------------------------------------------------
class GuideCapacity(Incident):
    """At a busy store's evening peak every guide is called away for ``AWAY_MS``
    while a group-buy with guide delivery lands there: orders wait for a guide."""

    kind = "guide_capacity"
    AWAY_MS = 50 * MINUTE
    ORDERS = 8

    def install(self) -> None:
        gen = self.gen
        stores = [s for s in gen.chain.stores if s.guides >= 2]
        busiest = sorted(stores, key=lambda s: (-s.weight, s.idx))[:10]
        used = gen.hooks.incident_stores
        free = [s for s in busiest if s.idx not in used] or busiest
        self.store = free[self.rng.randrange(len(free))]
        used.append(self.store.idx)
        self.t0 = daytime(self, 0.55)
        self.t1 = self.t0 + self.AWAY_MS
        for state in gen.guides.by_store[self.store.idx]:
            gen.guides.away[state.guide.guide_id] = (self.t0, self.t1)
        self.waits: dict[str, list[int]] = {}
        gen.guides.wait_watch[self.store.idx] = self
        self.deal = gen.world.top_skus[self.rng.randrange(0, 20)]
        stock_up(self, self.store, self.deal, 2 * self.ORDERS, self.t0 - 10 * MINUTE)
        for n in range(self.ORDERS):
            gen.push(self.t0 - 4 * MINUTE + n * 2 * MINUTE, self._order)

    def _order(self, ts: int, _: Any) -> None:
        guide_order(self, self.store, self.deal, ts, None)

    def waiting(self, sh: ShipmentState, ts: int) -> None:
        """A delivery of the store found no guide at ``ts`` (its ``created``); those of
        other times (a night order waiting for the morning) are not the incident's."""
        if self.t0 - 30 * MINUTE <= ts < self.t1:
            self.waits.setdefault(sh.shipment_id, [ts, 0])

    def taken(self, sh: ShipmentState, ts: int) -> None:
        if sh.shipment_id in self.waits:
            self.waits[sh.shipment_id][1] = ts

    def truth(self) -> dict[str, Any]:
        end = self.gen.now
        spans = [(c, t or end) for c, t in self.waits.values()]
        detectable = None
        for start in sorted(c + WAIT_RULE_MS for c, _ in spans):
            count = sum(1 for c, t in spans if c + WAIT_RULE_MS < start + 1 <= t)
            if count >= WAITING_MIN:
                detectable = start + 1
                break
        return {
            "kind": self.kind,
            "scope": {"region": self.store.region_id, "store_id": self.store.store_id},
            "start_ts": self.t0,
            "end_ts": self.t1,
            "expect": {
                "rule": "guide capacity: waiting_min orders waited for a guide over wait_minutes",
                "guides_away": sorted(s.guide.guide_id
                                      for s in self.gen.guides.by_store[self.store.idx]),
                "waited": len(spans),
                "longest_wait_min": round(max((t - c for c, t in spans), default=0)
                                          / MINUTE, 1),
                "detectable_ts": detectable,
            },
        }


class GuideLate(Incident):
    """One guide's deliveries arrive 25 to 50 minutes after their ETA for an hour and a
    half, with a few guide orders of the store given to that guide."""

    kind = "guide_late"
    LENGTH_MS = 90 * MINUTE
    ORDERS = 6

    def install(self) -> None:
        gen = self.gen
        self.t0 = daytime(self, 0.30)
        self.t1 = self.t0 + self.LENGTH_MS
        hour = local_hour(self.t0)
        stores = [s for s in gen.chain.stores
                  if any(g.on_shift(hour) and g.on_shift(local_hour(self.t1))
                         for g in gen.chain.guides if g.store_id == s.store_id)]
        busiest = sorted(stores, key=lambda s: (-s.weight, s.idx))[:10] or gen.chain.stores[:1]
        used = gen.hooks.incident_stores
        free = [s for s in busiest if s.idx not in used] or busiest
        self.store = free[self.rng.randrange(len(free))]
        used.append(self.store.idx)
        self.guide = next((g for g in gen.chain.guides if g.store_id == self.store.store_id
                           and g.on_shift(hour) and g.on_shift(local_hour(self.t1))),
                          gen.chain.guides[0])
        gen.guides.slow[self.guide.guide_id] = self
        self.deliveries: list[tuple[str, int, int]] = []
        """(shipment, eta, delivered at) of the guide's deliveries more than the grace
        late, the incident's and any other (the rule does not tell them apart)."""
        self.deal = gen.world.top_skus[self.rng.randrange(0, 20)]
        stock_up(self, self.store, self.deal, 2 * self.ORDERS, self.t0 - 20 * MINUTE)
        for n in range(self.ORDERS):
            gen.push(self.t0 - 10 * MINUTE + n * 5 * MINUTE, self._order)

    def _order(self, ts: int, _: Any) -> None:
        guide_order(self, self.store, self.deal, ts, self.guide.guide_id)

    def late(self, ts: int, eta: int) -> int | None:
        """When a delivery the guide takes at ``ts`` arrives: late in the incident, else None."""
        if not self.t0 <= ts < self.t1:
            return None
        return eta + self.rng.randint(25 * MINUTE, 50 * MINUTE)

    def record(self, sh: ShipmentState, eta: int, done: int, final: str) -> None:
        """Every delivery of the guide, in the incident or not: the rule counts them all."""
        if final == "delivered" and done > eta + LATE_GRACE_MS:
            self.deliveries.append((sh.shipment_id, eta, done))

    def truth(self) -> dict[str, Any]:
        end = self.gen.now
        sent = [(s, eta, done) for s, eta, done in self.deliveries if eta + LATE_GRACE_MS < end]
        detectable = None
        for start in sorted(eta + LATE_GRACE_MS + 1 for _, eta, _ in sent):
            count = sum(1 for _, eta, done in sent
                        if eta + LATE_GRACE_MS < start and done >= start - LATE_WINDOW_MS)
            if count >= LATE_MIN:
                detectable = start
                break
        return {
            "kind": self.kind,
            "scope": {"region": self.store.region_id, "store_id": self.store.store_id,
                      "guide_id": self.guide.guide_id},
            "start_ts": self.t0,
            "end_ts": max((done for _, _, done in sent), default=self.t1),
            "expect": {
                "rule": "guide late: late_min deliveries of one guide past ETA + grace",
                "late_deliveries": len(sent),
                "shipments": sorted(s for s, _, _ in sent),
                "detectable_ts": detectable,
            },
        }
