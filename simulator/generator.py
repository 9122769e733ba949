"""The six event streams, generated together as one discrete-event simulation.

Why one simulation and not six independent generators: the rules join the
streams (a pickup belongs to a store_pickup order, stock falls with paid
orders, a coupon is redeemed on an order), so the streams must tell one
story. Every future step (pay, ready, arrive, deliver, restock, expire) is a
heap entry ``(ts, seq, handler, arg)``; the loop pops them in time order and
interleaves new shopper sessions, so events leave in non-decreasing ``ts``
order overall, hence per Kafka partition. The exceptions are deliberate:
ISO 8601 sources round ``ts`` up to the second (at most 1 s ahead), and
the ``late`` incident.

Volume follows a target, not chance: the session rate is steered so the
cumulative count tracks ``sim_rate`` x the daily curve (see
:meth:`Generator._session_gap`). That is what lets ``--events N`` with
``--rate max`` end "about now": the span of N events is known in advance.

Determinism: one ``random.Random(seed)``, no set or hash-order iteration,
heap ties broken by a sequence number, ids derived from a run tag of
(seed, start). Same seed and start => byte-identical messages.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ctower.schemas.events import (
    Coupon,
    Event,
    Inventory,
    Logistics,
    Order,
    OrderLine,
    Pickup,
    Scan,
)
from ctower.simulator import incidents as incident_kinds
from ctower.simulator.chain import (
    GUIDE_CARRIER,
    ISO_CARRIERS,
    Campaign,
    Chain,
    Store,
    build_chain,
)
from ctower.simulator.clock import (
    MINUTE_MS,
    cumulative_minutes,
    curve_at,
    local_hour,
    now_ms,
    plan_end,
    plan_span,
)
from ctower.simulator.items import Item

CHANNELS = ("scan_and_go", "mini_program", "community_group", "live_stream", "guide")
_CHANNEL_CUM = (0.45, 0.70, 0.82, 0.90, 1.0)
_FULFILLMENT: dict[str, tuple[tuple[float, str], ...]] = {
    "scan_and_go": ((1.0, "in_store"),),
    "mini_program": ((0.45, "store_pickup"), (0.80, "warehouse_direct"), (1.0, "guide_delivery")),
    "community_group": ((0.80, "store_pickup"), (1.0, "warehouse_direct")),
    "live_stream": ((0.85, "warehouse_direct"), (1.0, "store_pickup")),
    "guide": ((0.70, "guide_delivery"), (1.0, "store_pickup")),
}
"""Per channel, cumulative probability -> fulfillment (docs/domain.md "Channels and fulfilment")."""

_BUCKET_MS = 60_000
"""Width of the far-future buckets of the event queue (see ``Generator.push``)."""

_new_item = tuple.__new__
"""``Item`` without the NamedTuple's Python-level ``__new__`` (hot path only)."""

WH_BASE = 1000
"""Location index of the first central warehouse (stores are 0..n-1)."""
_SKU_SLOTS = 4096
"""Stock keys are ``location * _SKU_SLOTS + sku``: ints hash faster than tuples."""

SERVICE_MEAN_S = 40.0
SERVICE_MIN_S = 15.0
"""Pickup counter service time: 15 s + exponential(40 s)."""

EVENTS_PER_SESSION = 6.0
"""Prior of events per session (scans, then order, fulfilment, stock, coupons)."""
DISTRICTS_PER_CITY = 6
"""Delivery districts (区) of a city; a member lives in one (derived from the id)."""
LOOKAHEAD_MS = 35_000
"""A session's scans are known when it starts and land over the next minute or
so: the controller counts them as already sent and compares with the target
this far ahead (35 s came out best: live --rate within about 5 % from the
first minute on, no overshoot later)."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate. ``start_ms`` None: derived from now (see :class:`Simulator`)."""

    seed: int = 42
    events: int | None = None
    duration_s: float | None = None
    rate: float | None = None
    """Live events per second (ts = wall clock); None = as fast as possible."""
    sim_rate: float = 50.0
    """Events per simulated second at the daily mean (``--rate max`` only)."""
    start_ms: int | None = None
    incidents: tuple[str, ...] = ()
    stores_per_region: int = 10
    n_skus: int = 600


@dataclass(slots=True)
class Plan:
    """Resolved timeline of a run."""

    start_ms: int
    horizon_ms: int
    """Where incidents are placed: the expected end of the run."""
    end_ms: int | None
    """Hard stop on simulated time (``--duration``), None = none."""
    max_events: int | None
    sim_rate: float


class _Session:
    __slots__ = (
        "cart",
        "channel",
        "coupon",
        "fulfillment",
        "i",
        "member",
        "p_order",
        "steps",
        "store",
    )

    def __init__(
        self,
        store: Store,
        member: str | None,
        channel: str,
        fulfillment: str,
        steps: list[tuple[str, int]],
        coupon: _Coupon | None,
        p_order: float,
    ) -> None:
        self.store = store
        self.member = member
        self.channel = channel
        self.fulfillment = fulfillment
        self.steps = steps
        self.i = 0
        self.cart: list[int] = []
        self.coupon = coupon
        self.p_order = p_order


class _Coupon:
    __slots__ = ("campaign", "coupon_id", "member", "state", "store")

    def __init__(self, coupon_id: str, campaign: Campaign, store: Store, member: str) -> None:
        self.coupon_id = coupon_id
        self.campaign = campaign
        self.store = store
        self.member = member
        self.state = "issued"


class _Order:
    """An order's state between its events."""

    __slots__ = (
        "amount",
        "channel",
        "coupon",
        "fulfillment",
        "lines",
        "loc",
        "member",
        "order_id",
        "pickup_plan",
        "refund",
        "ship_from",
        "store",
        "units",
    )
    amount: float
    channel: str
    coupon: _Coupon | None
    fulfillment: str
    lines: list[OrderLine]
    loc: int
    member: str
    order_id: str
    pickup_plan: tuple[int, int, int | None] | None
    """(slot start, ready at, arrival at | None = no show | -1 = cancelled)."""
    refund: bool
    ship_from: str | None
    store: Store
    units: list[tuple[int, int]]
    """(sku index, qty) per line: what stock moves."""

    def __init__(self) -> None:
        self.pickup_plan = None
        self.refund = False


class _Shipment:
    """A shipment's planned steps and how far it got."""

    __slots__ = (
        "carrier",
        "district",
        "eta",
        "guide_id",
        "i",
        "iso",
        "last_ts",
        "order",
        "origin_id",
        "origin_type",
        "region",
        "shipment_id",
        "steps",
    )
    carrier: str
    district: str
    eta: int
    guide_id: str
    """The guide delivering it ("" until one takes it, and for carriers)."""
    i: int
    """Index of the next step to send."""
    iso: bool
    last_ts: int
    order: _Order
    origin_id: str
    origin_type: str
    region: str
    shipment_id: str
    steps: list[tuple[int, str]]


@dataclass(slots=True)
class Counters:
    sessions: int = 0
    emitted: int = 0
    committed_scans: int = 0
    """Scans of every session started so far (known up front)."""
    session_scans: int = 0
    """Of those, the ones already emitted."""
    lost_sales: int = 0
    """Order lines dropped because the shelf (or warehouse) was empty."""


class Generator:
    """The simulation state and its handlers; :meth:`run` yields :class:`Item`s."""

    def __init__(self, config: SimConfig, chain: Chain, plan: Plan) -> None:
        self.config = config
        self.chain = chain
        self.plan = plan
        self.rng = random.Random(config.seed)
        self.random = self.rng.random
        digest = hashlib.blake2b(f"{config.seed}:{plan.start_ms}".encode(), digest_size=3)
        self.tag = digest.hexdigest()
        self.heap: list[tuple[int, int, Callable[[int, Any], None], Any]] = []
        self.far: dict[int, list[tuple[int, int, Callable[[int, Any], None], Any]]] = {}
        self.near_end = plan.start_ms - plan.start_ms % _BUCKET_MS + _BUCKET_MS
        self.seq = 0
        self.out: list[Item] = []
        self.now = plan.start_ms
        self.counters = Counters()
        self._cum_start = cumulative_minutes(plan.start_ms)
        self._levels: dict[int, tuple[int, int]] = {}
        self._ids = 0
        self.regions = chain.regions
        self.region_idx = {r.region_id: i for i, r in enumerate(chain.regions)}
        self.store_region = [self.region_idx[s.region_id] for s in chain.stores]
        self.loc_ids: dict[int, str] = {s.idx: s.store_id for s in chain.stores}
        for i, r in enumerate(chain.regions):
            self.loc_ids[WH_BASE + i] = r.warehouse_id
        self.sku_ids = [s.sku for s in chain.skus]
        self.sku_price = [s.price_fen for s in chain.skus]
        self.sku_unit_price = [s.price_fen / 100 for s in chain.skus]
        if len(chain.skus) > _SKU_SLOTS:
            raise ValueError(f"at most {_SKU_SLOTS} SKUs")
        total_pop = sum(s.popularity for s in chain.skus)
        self.sku_share = [s.popularity / total_pop for s in chain.skus]
        total_weight = sum(s.weight for s in chain.stores)
        self.store_share = [s.weight / total_weight for s in chain.stores]
        self.region_share = [0.0] * len(chain.regions)
        for s in chain.stores:
            self.region_share[self.store_region[s.idx]] += self.store_share[s.idx]
        # Top sellers a live stream may feature: a visible bump on SKUs whose
        # baseline is already high, not a spike (that is the demand_spike incident).
        ranked = sorted(range(len(chain.skus)), key=lambda i: (-chain.skus[i].popularity, i))
        self.top_skus = ranked[:20]
        # Stock: what may still be sold (avail) and what the rules see (onhand).
        self.avail: dict[int, int] = {}
        self.onhand: dict[int, int] = {}
        self.known_keys: list[int] = []
        self.pending_restock: set[int] = set()
        self.frozen: set[int] = set()
        # Pickup counters: per store, when each staff member is next free.
        self.counter_free = [[0] * s.pickup_staff for s in chain.stores]
        # Incident hooks.
        self.scan_watch: dict[int, Callable[[int, str], None]] = {}
        self.pickup_watch: dict[int, Callable[[int, int, int, str], None]] = {}
        self.carrier_delay: dict[tuple[str, str], Any] = {}
        self.incident_stores: list[int] = []
        self._campaign_cache: tuple[int, list[list[Campaign]]] = (-1, [])
        from ctower.simulator.guides import GuideDesk
        from ctower.simulator.service_desk import ServiceDesk

        self.service_desk = ServiceDesk(self)
        self.guides = GuideDesk(self)
        self.incidents: list[incident_kinds.Incident] = []
        for kind in config.incidents:
            self.incidents.append(incident_kinds.create(kind, self))

    # --- plumbing ------------------------------------------------------------
    def push(self, ts: int, handler: Callable[[int, Any], None], arg: Any = None) -> None:
        """Schedule ``handler(ts, arg)``.

        Only the next minute or so lives in the heap; later entries (coupon
        expiries, shipment steps hours ahead) wait in per-minute buckets. A
        heap of thousands instead of tens of thousands makes every pop cheaper,
        and the order, hence the output, is the same: (ts, seq).
        """
        self.seq += 1
        if ts < self.near_end:
            heapq.heappush(self.heap, (ts, self.seq, handler, arg))
        else:
            bucket = self.far.get(ts // _BUCKET_MS)
            if bucket is None:
                self.far[ts // _BUCKET_MS] = [(ts, self.seq, handler, arg)]
            else:
                bucket.append((ts, self.seq, handler, arg))

    def _advance(self) -> None:
        """Move the next minute's bucket into the heap."""
        entries = self.far.pop(self.near_end // _BUCKET_MS, None)
        self.near_end += _BUCKET_MS
        if not entries:
            return
        heap = self.heap
        if len(entries) > len(heap) // 4:
            heap.extend(entries)
            heapq.heapify(heap)
        else:
            for entry in entries:
                heapq.heappush(heap, entry)

    def ri(self, lo: int, hi: int) -> int:
        """``randint`` at a tenth of its cost (its rejection sampling is not needed here)."""
        return lo + int(self.random() * (hi - lo + 1))

    def rr(self, n: int) -> int:
        """``randrange(n)``, cheaply."""
        return int(self.random() * n)

    @staticmethod
    def stock_key(loc: int, sku: int) -> int:
        """Key of a (location, SKU) in the stock dicts."""
        return loc * _SKU_SLOTS + sku

    def warehouse_loc(self, store_idx: int) -> int:
        """Location index of a store's regional central warehouse."""
        return WH_BASE + self.store_region[store_idx]

    def next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self.tag}-{self._ids}"

    def member_of(self, store: Store) -> str:
        return f"M{store.idx + 1:03d}{self.rr(store.member_pool):05d}"

    @staticmethod
    def district_of(store: Store, member: str) -> str:
        """Where a member's parcels go: a district of the store's city, fixed per member
        (no draw from the generator's RNG, so the other streams stay as they were)."""
        return f"{store.city}-{zlib.crc32(member.encode()) % DISTRICTS_PER_CITY + 1:02d}"

    # --- the loop --------------------------------------------------------------
    def run(self) -> Iterator[Item]:
        """Items in send order until the event budget or the end time is reached."""
        for incident in self.incidents:
            incident.install()
        plan = self.plan
        heap, out, counters = self.heap, self.out, self.counters
        max_events = plan.max_events if plan.max_events is not None else math.inf
        end = plan.end_ms if plan.end_ms is not None else math.inf
        next_session = plan.start_ms
        heappop = heapq.heappop
        emitted = 0
        while True:
            while not heap and next_session >= self.near_end:
                self._advance()
            if heap and heap[0][0] <= next_session:
                ts, _, handler, arg = heappop(heap)
                if ts >= end:
                    return
                self.now = ts
                handler(ts, arg)
            else:
                ts = next_session
                if ts >= end:
                    return
                self.now = ts
                self._start_session(ts)
                next_session = ts + self._session_gap(ts)
            if out:
                for item in out:
                    yield item
                    emitted += 1 if item[4] is None else item.units  # [4]: raw
                    if emitted >= max_events:
                        counters.emitted = emitted
                        return
                counters.emitted = emitted
                out.clear()

    def _session_gap(self, ts: int) -> int:
        """Milliseconds to the next session: the rate that keeps the count on target.

        Base rate: the curve's events/s over the events per session seen so
        far (a session's scans count from the moment it starts, since they are
        already decided). A correction closes the gap between the cumulative
        target, slightly ahead, and what is sent or decided, within about 30 s
        of simulated time. So ``--rate N`` is about N from the start, and the
        span of ``--events N`` is known in advance to within seconds.
        """
        c = self.counters
        c.sessions += 1
        rate = self.plan.sim_rate
        pending = c.committed_scans - c.session_scans
        eps = (c.emitted + pending + EVENTS_PER_SESSION * 20) / (c.sessions + 20)
        ahead = ts + LOOKAHEAD_MS
        target = (cumulative_minutes(ahead) - self._cum_start) * 60.0 * rate
        base = rate * curve_at(ts) / eps
        corrected = base + (target - c.emitted - pending) / (30.0 * eps)
        per_s = min(max(corrected, 0.05 * base), 5.0 * base)
        return max(1, int(self.rng.expovariate(per_s) * 1000))

    # --- campaigns ----------------------------------------------------------------
    def active_campaigns(self, ts: int, region: int) -> list[Campaign]:
        hour = local_hour(ts)
        cached_hour, by_region = self._campaign_cache
        if cached_hour != hour:
            by_region = [
                [
                    c
                    for c in self.chain.campaigns
                    if r.region_id in c.regions and c.active_at_hour(hour)
                ]
                for r in self.regions
            ]
            self._campaign_cache = (hour, by_region)
        return by_region[region]

    # --- sessions -----------------------------------------------------------------
    def _start_session(self, ts: int) -> None:
        rng = self.rng
        chain = self.chain
        store = chain.pick_store(rng)
        self.service_desk.session(ts, store)
        region = self.store_region[store.idx]
        x = rng.random()
        channel = CHANNELS[-1]
        for bound, name in zip(_CHANNEL_CUM, CHANNELS, strict=True):
            if x < bound:
                channel = name
                break
        fulfillment = self._fulfillment(channel)
        anonymous = channel == "scan_and_go" and rng.random() < 0.15
        member = None if anonymous else self.member_of(store)
        campaigns = self.active_campaigns(ts, region)
        coupon: _Coupon | None = None
        skus: list[int] = []
        if campaigns and member is not None and rng.random() < 0.10:
            campaign = campaigns[self.rr(len(campaigns))]
            if campaign.kind == "store_pickup":
                channel = "mini_program" if rng.random() < 0.6 else "community_group"
                fulfillment = "store_pickup"
            coupon = self._issue_coupon(ts, campaign, store, member)
            skus.append(campaign.sku_idx[self.rr(len(campaign.sku_idx))])
            if rng.random() < 0.4:
                skus.append(campaign.sku_idx[self.rr(len(campaign.sku_idx))])
        n = 1
        while n < 6 and rng.random() < 0.55:
            n += 1
        for _ in range(n):
            y = rng.random()
            if campaigns and y < 0.3:
                campaign = campaigns[self.rr(len(campaigns))]
                skus.append(campaign.sku_idx[self.rr(len(campaign.sku_idx))])
            elif channel == "live_stream" and y < 0.6:
                skus.append(self._featured_sku(ts))
            else:
                skus.append(chain.pick_sku(rng))
        p_cart = 0.6 if coupon is not None else 0.42
        steps: list[tuple[str, int]] = []
        for sku in skus:
            steps.append(("view", sku))
            if rng.random() < p_cart:
                steps.append(("add_to_cart", sku))
        p_order = 0.0 if member is None else (0.92 if coupon is not None else 0.78)
        session = _Session(store, member, channel, fulfillment, steps, coupon, p_order)
        self.counters.committed_scans += len(steps)
        if coupon is not None:
            self.push(ts + self.ri(2_000, 20_000), self._claim_then_browse, session)
        else:
            self._scan_step(ts, session)
        # Side processes riding on sessions: pushed coupons and stock counts.
        if campaigns and rng.random() < 0.05:
            campaign = campaigns[self.rr(len(campaigns))]
            pushed = self._issue_coupon(ts, campaign, store, self.member_of(store))
            if rng.random() < 0.4:
                self.push(ts + self.ri(60_000, 1_800_000), self._claim, pushed)
        if self.known_keys and rng.random() < 0.01:
            self._adjust(ts)

    def start_focused_session(
        self, ts: int, store: Store, sku: int, channel: str, fulfillment: str, p_cart: float
    ) -> None:
        """A one-SKU session (live-stream viewers, shoppers looking for a missing item)."""
        rng = self.rng
        steps = [("view", sku)]
        if rng.random() < p_cart:
            steps.append(("add_to_cart", sku))
        session = _Session(store, self.member_of(store), channel, fulfillment, steps, None, 0.5)
        self.counters.committed_scans += len(steps)
        self._scan_step(ts, session)

    def emit_scan(
        self, ts: int, store: Store, sku: int, action: str, member: str | None, late_ms: int = 0
    ) -> Scan:
        """One scan outside a session (incidents); snapshots the shelf on first touch."""
        if store.idx * _SKU_SLOTS + sku not in self.avail:
            self.snapshot(self.now, store.idx, sku)
        self._ids += 1
        event = Scan(
            ts=ts,
            scan_id=f"SC-{self.tag}-{self._ids}",
            store_id=store.store_id,
            sku=self.sku_ids[sku],
            action=action,  # type: ignore[arg-type]
            member_id=member,
        )
        self.out.append(Item("scan", store.store_id, ts, event, late_ms=late_ms))
        return event

    def _fulfillment(self, channel: str) -> str:
        x = self.rng.random()
        choices = _FULFILLMENT[channel]
        for bound, name in choices:
            if x < bound:
                return name
        return choices[-1][1]

    def _featured_sku(self, ts: int) -> int:
        """The SKU a live stream features this hour (same for every store)."""
        hour_index = ts // 3_600_000
        return self.top_skus[(hour_index * 7 + self.config.seed) % len(self.top_skus)]

    def _claim_then_browse(self, ts: int, session: _Session) -> None:
        assert session.coupon is not None
        self._claim(ts, session.coupon)
        self.push(ts + self.ri(5_000, 60_000), self._scan_step, session)

    def _scan_step(self, ts: int, session: _Session) -> None:
        """One scan of a session, then the next step (the hottest code of the simulator)."""
        steps = session.steps
        i = session.i
        action, sku = steps[i]
        store = session.store
        key = store.idx * _SKU_SLOTS + sku
        if key not in self.avail:
            self.snapshot(ts, store.idx, sku)
        legacy = store.legacy_pos
        if legacy:
            ts += -ts % 1000  # ISO sources send whole seconds: round up, never before the clock
        self._ids += 1
        store_id = store.store_id
        event = Scan(
            ts=ts,
            scan_id=f"SC-{self.tag}-{self._ids}",
            store_id=store_id,
            sku=self.sku_ids[sku],
            action=action,  # type: ignore[arg-type]
            member_id=session.member,
        )
        item = ("scan", store_id, ts, event, None, (), (), 0, legacy, False)
        self.out.append(_new_item(Item, item))
        if self.scan_watch:
            watcher = self.scan_watch.get(key)
            if watcher is not None:
                watcher(ts, action)
        if action == "add_to_cart":
            session.cart.append(sku)
        self.counters.session_scans += 1
        i += 1
        session.i = i
        now = self.now
        if i < len(steps):
            if steps[i][0] == "add_to_cart":
                gap = 3_000 + int(self.random() * 17_001)
            else:
                gap = 5_000 + int(self.random() * 35_001)
            self.push(now + gap, self._scan_step, session)
        elif session.cart and self.random() < session.p_order:
            self.push(now + self.ri(10_000, 60_000), self._order_create, session)

    # --- orders ---------------------------------------------------------------------
    def _order_create(self, ts: int, session: _Session) -> None:
        rng = self.rng
        store = session.store
        fulfillment = session.fulfillment
        if fulfillment == "guide_delivery" and not self.guides.offer(ts, store):
            fulfillment = "warehouse_direct"  # no guide can take it today: a carrier delivers
        if fulfillment == "warehouse_direct":
            loc = WH_BASE + self.store_region[store.idx]
            ship_from: str | None = self.regions[loc - WH_BASE].warehouse_id
        else:
            loc = store.idx
            ship_from = None
        wanted: dict[int, int] = {}
        for sku in session.cart:
            x = rng.random()
            wanted[sku] = wanted.get(sku, 0) + (1 if x < 0.7 else 2 if x < 0.9 else 3)
        lines: list[tuple[int, int]] = []
        for sku, qty in wanted.items():
            got = self.reserve(ts, loc, sku, qty)
            if got:
                lines.append((sku, got))
            else:
                self.counters.lost_sales += 1
                self.service_desk.out_of_stock(ts, store, sku)
        if not lines:
            return
        order = self.new_order(
            store,
            session.member or self.member_of(store),
            session.channel,
            fulfillment,
            loc,
            ship_from,
            lines,
            session.coupon,
        )
        if fulfillment == "guide_delivery":
            self.guides.promise(order)
        self._emit_order(ts, order, "created")
        paid_p = 0.97 if fulfillment == "in_store" else 0.92
        if rng.random() < paid_p:
            delay = self.ri(2_000, 20_000) if fulfillment == "in_store" else self.ri(5_000, 90_000)
            self.push(ts + delay, self._order_paid, order)
        else:
            self.push(ts + self.ri(60_000, 900_000), self._order_cancel, order)

    def new_order(
        self,
        store: Store,
        member: str,
        channel: str,
        fulfillment: str,
        loc: int,
        ship_from: str | None,
        lines: list[tuple[int, int]],
        coupon: _Coupon | None,
    ) -> _Order:
        """An order over reserved lines; applies the coupon when its campaign fits."""
        order = _Order()
        order.order_id = self.next_id("OD")
        order.store = store
        order.member = member
        order.channel = channel
        order.fulfillment = fulfillment
        order.loc = loc
        order.ship_from = ship_from
        order.units = lines
        order.lines = [
            OrderLine(sku=self.sku_ids[sku], qty=qty, unit_price=self.sku_unit_price[sku])
            for sku, qty in lines
        ]
        subtotal = sum(self.sku_price[sku] * qty for sku, qty in lines)
        order.coupon = None
        if coupon is not None and coupon.state == "claimed":
            campaign = coupon.campaign
            fits = any(sku in campaign.sku_idx for sku, _ in lines)
            if campaign.kind == "store_pickup" and fulfillment != "store_pickup":
                fits = False
            if fits and coupon.store is store and coupon.member == member:
                order.coupon = coupon
                subtotal -= min(campaign.value_fen, subtotal // 2)
        order.amount = subtotal / 100
        order.refund = False
        return order

    def _emit_order(self, ts: int, order: _Order, status: str) -> None:
        event = Order(
            ts=ts,
            order_id=order.order_id,
            member_id=order.member,
            store_id=order.store.store_id,
            channel=order.channel,  # type: ignore[arg-type]
            fulfillment=order.fulfillment,  # type: ignore[arg-type]
            lines=order.lines,
            amount=order.amount,
            status=status,  # type: ignore[arg-type]
            coupon_id=order.coupon.coupon_id if order.coupon is not None else None,
            ship_from=order.ship_from,
        )
        self.out.append(Item("order", order.store.store_id, ts, event))

    def _order_paid(self, ts: int, order: _Order) -> None:
        rng = self.rng
        for sku, qty in order.units:
            key = order.loc * _SKU_SLOTS + sku
            self.onhand[key] -= qty
        self._emit_order(ts, order, "paid")
        coupon = order.coupon
        if coupon is not None:
            coupon.state = "redeemed"
            self._emit_coupon(ts, coupon, "redeemed")
        fulfillment = order.fulfillment
        if fulfillment == "store_pickup":
            order.refund = rng.random() < 0.01
            self.push(ts + self.ri(1_000, 5_000), self._pickup_booked, order)
        elif fulfillment == "in_store":
            if rng.random() < 0.015:
                self.push(ts + self.ri(1_800_000, 10_800_000), self._order_refund, order)
        else:
            order.refund = rng.random() < 0.015
            self.push(ts + self.ri(120_000, 900_000), self._ship_create, order)

    def _order_cancel(self, ts: int, order: _Order) -> None:
        self.guides.release(order)
        for sku, qty in order.units:
            self.avail[order.loc * _SKU_SLOTS + sku] += qty
        self._emit_order(ts, order, "cancelled")

    def _order_refund(self, ts: int, order: _Order) -> None:
        self._emit_order(ts, order, "refunded")

    # --- coupons ----------------------------------------------------------------------
    def _issue_coupon(self, ts: int, campaign: Campaign, store: Store, member: str) -> _Coupon:
        coupon = _Coupon(self.next_id("CP"), campaign, store, member)
        self._emit_coupon(ts, coupon, "issued")
        self.push(ts + campaign.validity_s * 1000, self._expire, coupon)
        return coupon

    def _claim(self, ts: int, coupon: _Coupon) -> None:
        if coupon.state == "issued":
            coupon.state = "claimed"
            self._emit_coupon(ts, coupon, "claimed")

    def _expire(self, ts: int, coupon: _Coupon) -> None:
        if coupon.state in ("issued", "claimed"):
            coupon.state = "expired"
            self._emit_coupon(ts, coupon, "expired")

    def _emit_coupon(self, ts: int, coupon: _Coupon, action: str) -> None:
        campaign_id = coupon.campaign.campaign_id
        event = Coupon(
            ts=ts,
            coupon_id=coupon.coupon_id,
            campaign_id=campaign_id,
            store_id=coupon.store.store_id,
            member_id=coupon.member,
            action=action,  # type: ignore[arg-type]
        )
        self.out.append(Item("coupon", campaign_id, ts, event))

    # --- store pickup -------------------------------------------------------------------
    def _pickup_booked(self, ts: int, order: _Order) -> None:
        rng = self.rng
        plan = order.pickup_plan
        if plan is None:
            ready = ts + self.ri(600_000, 3_600_000)
            slot = ready - ready % 900_000 + 900_000 * self.ri(1, 6)
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
        self._emit_pickup(ts, order, "booked", slot)
        self.push(ready, self._pickup_ready, order)

    def _pickup_ready(self, ts: int, order: _Order) -> None:
        assert order.pickup_plan is not None
        slot, _, arrival = order.pickup_plan
        self._emit_pickup(ts, order, "ready")
        if arrival is None:
            self.push(slot + 7_200_000, self._pickup_no_show, order)
        elif arrival < 0:
            self.push(ts + self.ri(300_000, 3_600_000), self._pickup_cancelled, order)
        else:
            self.push(max(arrival, ts + 1_000), self._pickup_arrived, order)

    def _pickup_arrived(self, ts: int, order: _Order) -> None:
        rng = self.rng
        store = order.store
        self._emit_pickup(ts, order, "arrived")
        free = self.counter_free[store.idx]
        k = min(range(len(free)), key=free.__getitem__)
        start = max(ts, free[k])
        done = start + int((SERVICE_MIN_S + rng.expovariate(1 / SERVICE_MEAN_S)) * 1000)
        free[k] = done
        self.push(done, self._pickup_served, order)
        watcher = self.pickup_watch.get(store.idx)
        if watcher is not None:
            watcher(ts, start, done, order.order_id)

    def _pickup_served(self, ts: int, order: _Order) -> None:
        self._emit_pickup(ts, order, "picked_up")
        if order.refund:
            self.push(ts + self.ri(1_800_000, 10_800_000), self._order_refund, order)

    def _pickup_no_show(self, ts: int, order: _Order) -> None:
        self._emit_pickup(ts, order, "no_show")

    def _pickup_cancelled(self, ts: int, order: _Order) -> None:
        self._emit_pickup(ts, order, "cancelled")
        self.push(ts + 60_000, self._order_refund, order)

    def _emit_pickup(self, ts: int, order: _Order, state: str, slot: int | None = None) -> None:
        store_id = order.store.store_id
        event = Pickup(
            ts=ts,
            order_id=order.order_id,
            store_id=store_id,
            state=state,  # type: ignore[arg-type]
            slot_start=slot,
        )
        self.out.append(Item("pickup", store_id, ts, event))

    # --- logistics ------------------------------------------------------------------------
    def _ship_create(self, ts: int, order: _Order) -> None:
        rng = self.rng
        region = self.regions[self.store_region[order.store.idx]]
        sh = _Shipment()
        sh.shipment_id = self.next_id("SH")
        sh.order = order
        sh.region = region.region_id
        sh.district = self.district_of(order.store, order.member)
        sh.i = 0
        sh.guide_id = ""
        if order.fulfillment == "warehouse_direct":
            sh.origin_type = "central_warehouse"
            sh.origin_id = region.warehouse_id
            x = rng.random()
            sh.carrier = region.carriers[0 if x < 0.5 else 1 if x < 0.8 else 2]
            pick = ts + self.ri(900_000, 2_700_000)
            eta = ts + self.ri(3_600_000, 10_800_000)
            ofd_lead = (1_200_000, 3_600_000)
        else:
            sh.origin_type = "guide"
            sh.origin_id = order.store.store_id
            sh.carrier = GUIDE_CARRIER
            self.guides.release(order)
            guide = self.guides.assign(ts, order, self.ri(1, order.store.guides))
            pick = ts + self.ri(180_000, 600_000)
            eta = ts + self.ri(1_800_000, 4_500_000)
            ofd_lead = (180_000, 600_000)
            if guide is None:  # no guide can take it now: it waits, promised as ordered
                sh.eta = eta - eta % MINUTE_MS + MINUTE_MS
                sh.iso = False
                # the draws of the steps it would have had: the rest of the run is the
                # same whether or not a guide could take it (the guide who does plans anew)
                self._plan_steps(sh, pick, sh.eta, ofd_lead, rng)
                self._emit_shipment(ts, sh, "created")
                self.guides.wait(ts, sh, first=True)
                return
            sh.guide_id = guide.guide_id
        sh.eta = eta = eta - eta % MINUTE_MS + MINUTE_MS
        sh.iso = sh.carrier in ISO_CARRIERS
        self._plan_steps(sh, pick, eta, ofd_lead, rng)
        self._emit_shipment(ts, sh, "created")
        self.push(sh.steps[0][0], self._ship_step, sh)

    def guide_takes(self, ts: int, sh: _Shipment, guide: Any, rng: random.Random) -> None:
        """A guide takes a delivery that waited: picked up shortly, with a new ETA."""
        sh.guide_id = guide.guide_id
        pick = ts + rng.randint(180_000, 600_000)
        eta = ts + rng.randint(1_800_000, 4_500_000)
        sh.eta = eta - eta % MINUTE_MS + MINUTE_MS
        self._plan_steps(sh, pick, sh.eta, (180_000, 600_000), rng)
        self.push(sh.steps[0][0], self._ship_step, sh)

    def _plan_steps(self, sh: _Shipment, pick: int, eta: int, ofd_lead: tuple[int, int],
                    rng: random.Random) -> None:
        """The shipment's steps from its pick-up: hub scans, out for delivery, the outcome."""
        ri = self.ri if rng is self.rng else rng.randint
        x = rng.random()
        if x < 0.025:
            deliver, final = pick + (eta - pick) * rng.uniform(0.6, 1.0), "failed"
        elif x < 0.10:
            deliver, final = eta + ri(300_000, 3_600_000), "delivered"
        else:
            deliver, final = eta - (eta - pick) * rng.uniform(0.0, 0.3), "delivered"
        slow = self.guides.slow.get(sh.guide_id) if sh.guide_id else None
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

    def _ship_step(self, ts: int, sh: _Shipment) -> None:
        delay = self.carrier_delay.get((sh.carrier, sh.region))
        if delay is not None and delay.intercept(ts, sh):
            return
        _, status = sh.steps[sh.i]
        self._emit_shipment(ts, sh, status)
        if status == "failed" or (status == "delivered" and ts > sh.eta):
            self.service_desk.late_parcel(ts, sh.order.store, sh.order.order_id,
                                          status == "failed")
        sh.i += 1
        if sh.i < len(sh.steps):
            self.push(sh.steps[sh.i][0], self._ship_step, sh)
        elif sh.order.refund or status == "returned":
            self.push(ts + self.ri(600_000, 7_200_000), self._order_refund, sh.order)

    def _emit_shipment(self, ts: int, sh: _Shipment, status: str) -> None:
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

    # --- inventory --------------------------------------------------------------------------
    def levels(self, loc: int, sku: int) -> tuple[int, int]:
        """(target level, reorder point) of a location and SKU.

        From the expected paid units per hour there: stores hold about 30 h
        of sales and reorder at 10 h; warehouses hold four days and reorder at
        a third. So cover rarely falls under the restock rule's 4 h lead time
        unless something is wrong.
        """
        key = loc * _SKU_SLOTS + sku
        cached = self._levels.get(key)
        if cached is not None:
            return cached
        rate = self.plan.sim_rate * 3600 * self.sku_share[sku]
        if loc < WH_BASE:
            per_hour = rate * self.store_share[loc] * 0.12
            cached = max(8, math.ceil(per_hour * 30)), max(3, math.ceil(per_hour * 10))
        else:
            per_hour = rate * self.region_share[loc - WH_BASE] * 0.03
            level = max(150, math.ceil(per_hour * 96))
            cached = level, level // 3
        self._levels[key] = cached
        return cached

    def snapshot(self, ts: int, loc: int, sku: int) -> None:
        """The first count of a (location, SKU): emitted when it is first touched."""
        level, _ = self.levels(loc, sku)
        qty = max(1, int(level * self.rng.uniform(0.6, 1.0)))
        key = loc * _SKU_SLOTS + sku
        self.avail[key] = qty
        self.onhand[key] = qty
        self.known_keys.append(key)
        self.emit_inventory(ts, loc, sku, "snapshot", qty)

    def emit_inventory(self, ts: int, loc: int, sku: int, kind: str, qty: int) -> None:
        location_id = self.loc_ids[loc]
        event = Inventory(
            ts=ts,
            location_id=location_id,
            sku=self.sku_ids[sku],
            kind=kind,  # type: ignore[arg-type]
            qty=qty,
        )
        self.out.append(Item("inventory", location_id, ts, event))

    def reserve(self, ts: int, loc: int, sku: int, qty: int) -> int:
        """Take up to qty units for an order; returns what could be had."""
        key = loc * _SKU_SLOTS + sku
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
        key = loc * _SKU_SLOTS + sku
        self.pending_restock.add(key)
        level, _ = self.levels(loc, sku)
        qty = level - self.avail[key]
        if loc >= WH_BASE:
            self.push(ts + self.ri(3_600_000, 14_400_000), self._receipt, (loc, sku, qty))
        else:
            self.push(ts + self.ri(600_000, 2_400_000), self._transfer_out, (loc, sku, qty))

    def _transfer_out(self, ts: int, move: tuple[int, int, int]) -> None:
        """The regional warehouse ships a store's replenishment (or the supplier does)."""
        loc, sku, qty = move
        wh = WH_BASE + self.store_region[loc]
        got = self.reserve(ts, wh, sku, qty)
        if got < qty:
            if got:
                self.avail[wh * _SKU_SLOTS + sku] += got
            self.push(ts + self.ri(3_600_000, 10_800_000), self._receipt, move)
            return
        self.onhand[wh * _SKU_SLOTS + sku] -= qty
        self.emit_inventory(ts, wh, sku, "transfer_out", qty)
        self.push(ts + self.ri(3_600_000, 9_000_000), self._transfer_in, move)

    def _transfer_in(self, ts: int, move: tuple[int, int, int]) -> None:
        loc, sku, qty = move
        self.receive(ts, loc, sku, qty, "transfer_in")

    def _receipt(self, ts: int, move: tuple[int, int, int]) -> None:
        loc, sku, qty = move
        self.receive(ts, loc, sku, qty, "receipt")

    def receive(self, ts: int, loc: int, sku: int, qty: int, kind: str) -> None:
        key = loc * _SKU_SLOTS + sku
        self.avail[key] += qty
        self.onhand[key] += qty
        self.pending_restock.discard(key)
        self.emit_inventory(ts, loc, sku, kind, qty)

    def _adjust(self, ts: int) -> None:
        """Shrinkage or a recount found a unit: the small noise of real stock."""
        key = self.known_keys[self.rr(len(self.known_keys))]
        if key in self.frozen:
            return
        loc, sku = divmod(key, _SKU_SLOTS)
        delta = -self.ri(1, 2) if self.rng.random() < 0.8 else 1
        if self.avail[key] + delta < 0:
            return
        self.avail[key] += delta
        self.onhand[key] += delta
        self.emit_inventory(ts, loc, sku, "adjustment", delta)


class Simulator:
    """The public face: ``Simulator(config).items()`` / ``.events()``.

    ``plan`` is resolved at construction: the start is ``start_ms`` if given;
    with a live ``rate``, now; with ``--rate max`` and ``duration_s``, now
    minus the duration; with ``--rate max`` and ``events`` (default 100k),
    early enough that the planned events end 30 s plus 1 % of the span before
    now, so the last event is about now and never after it.
    """

    def __init__(self, config: SimConfig, now: int | None = None) -> None:
        self.config = config
        self.chain = build_chain(
            config.seed, stores_per_region=config.stores_per_region, n_skus=config.n_skus
        )
        self.plan = self._plan(now if now is not None else now_ms())
        self.generator: Generator | None = None

    def _plan(self, now: int) -> Plan:
        c = self.config
        if c.rate is not None:
            start = c.start_ms if c.start_ms is not None else now
            sim_rate = c.rate / curve_at(start)
            if c.duration_s is not None:
                horizon = start + int(c.duration_s * 1000)
            elif c.events is not None:
                horizon = start + int(c.events / c.rate * 1000)
            else:
                horizon = start + 3_600_000
            end = start + int(c.duration_s * 1000) if c.duration_s is not None else None
            return Plan(start, horizon, end, c.events, sim_rate)
        sim_rate = c.sim_rate
        if c.duration_s is not None:
            duration = int(c.duration_s * 1000)
            start = c.start_ms if c.start_ms is not None else now - duration
            return Plan(start, start + duration, start + duration, c.events, sim_rate)
        events = c.events if c.events is not None else 100_000
        if c.start_ms is not None:
            return Plan(c.start_ms, plan_end(c.start_ms, events, sim_rate), None, events, sim_rate)
        span = now - plan_span(events, sim_rate, now)
        end = now - 30_000 - span // 100
        return Plan(plan_span(events, sim_rate, end), end, None, events, sim_rate)

    def items(self) -> Iterator[Item]:
        """Every message in send order: valid events, late ones, malformed ones."""
        self.generator = Generator(self.config, self.chain, self.plan)
        return self.generator.run()

    def events(self) -> Iterator[tuple[str, Event]]:
        """The valid events only (including late ones and those inside envelopes)."""
        for item in self.items():
            if item.event is not None:
                yield item.stream, item.event
            for event in item.contained:
                yield item.stream, event

    def incident_truth(self) -> list[dict[str, Any]]:
        """Ground truth of each incident, complete once the items are consumed."""
        if self.generator is None:
            return []
        return [incident.truth() for incident in self.generator.incidents]
