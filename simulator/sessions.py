"""Shopper sessions and the scan stream: what a visit looks at, carts, and orders.

A session decides its whole path when it starts (store, channel, member,
coupon, the SKUs it views and carts) and sends one scan per step a few
seconds apart; a non-empty cart may end in an order
(:meth:`Orders.create <ctower.simulator.orders.Orders.create>`). Sessions
also carry the chain's background processes: pushed coupons and stock
recounts ride on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctower.schemas.events import Scan
from ctower.simulator.items import Item
from ctower.simulator.state import CouponState, Session
from ctower.simulator.world import SKU_SLOTS

if TYPE_CHECKING:
    from ctower.simulator.chain import Store
    from ctower.simulator.generator import Generator

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

_new_item = tuple.__new__
"""``Item`` without the NamedTuple's Python-level ``__new__`` (hot path only)."""


class Sessions:
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.world = gen.world
        self.stock = gen.stock
        self.out = gen.out
        self.random = gen.random
        self.scan_watch = gen.hooks.scan_watch
        self.counters = gen.counters

    def start(self, ts: int) -> None:
        """A new session at ``ts``: its path decided now, its first scan sent or scheduled."""
        gen = self.gen
        rng = gen.rng
        chain = gen.chain
        store = chain.pick_store(rng)
        gen.service_desk.session(ts, store)
        region = self.world.store_region[store.idx]
        x = rng.random()
        channel = CHANNELS[-1]
        for bound, name in zip(_CHANNEL_CUM, CHANNELS, strict=True):
            if x < bound:
                channel = name
                break
        fulfillment = self._fulfillment(channel)
        anonymous = channel == "scan_and_go" and rng.random() < 0.15
        member = None if anonymous else gen.member_of(store)
        campaigns = self.world.active_campaigns(ts, region)
        coupon: CouponState | None = None
        skus: list[int] = []
        if campaigns and member is not None and rng.random() < 0.10:
            campaign = campaigns[gen.rr(len(campaigns))]
            if campaign.kind == "store_pickup":
                channel = "mini_program" if rng.random() < 0.6 else "community_group"
                fulfillment = "store_pickup"
            coupon = gen.coupons.issue(ts, campaign, store, member)
            skus.append(campaign.sku_idx[gen.rr(len(campaign.sku_idx))])
            if rng.random() < 0.4:
                skus.append(campaign.sku_idx[gen.rr(len(campaign.sku_idx))])
        n = 1
        while n < 6 and rng.random() < 0.55:
            n += 1
        for _ in range(n):
            y = rng.random()
            if campaigns and y < 0.3:
                campaign = campaigns[gen.rr(len(campaigns))]
                skus.append(campaign.sku_idx[gen.rr(len(campaign.sku_idx))])
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
        session = Session(store, member, channel, fulfillment, steps, coupon, p_order)
        self.counters.committed_scans += len(steps)
        if coupon is not None:
            gen.push(ts + gen.ri(2_000, 20_000), self._claim_then_browse, session)
        else:
            self._scan_step(ts, session)
        # Side processes riding on sessions: pushed coupons and stock counts.
        if campaigns and rng.random() < 0.05:
            campaign = campaigns[gen.rr(len(campaigns))]
            pushed = gen.coupons.issue(ts, campaign, store, gen.member_of(store))
            if rng.random() < 0.4:
                gen.push(ts + gen.ri(60_000, 1_800_000), gen.coupons.claim, pushed)
        if self.stock.known_keys and rng.random() < 0.01:
            self.stock.adjust(ts)

    def start_focused(
        self, ts: int, store: Store, sku: int, channel: str, fulfillment: str, p_cart: float
    ) -> None:
        """A one-SKU session (live-stream viewers, shoppers looking for a missing item)."""
        gen = self.gen
        steps = [("view", sku)]
        if gen.rng.random() < p_cart:
            steps.append(("add_to_cart", sku))
        session = Session(store, gen.member_of(store), channel, fulfillment, steps, None, 0.5)
        self.counters.committed_scans += len(steps)
        self._scan_step(ts, session)

    def emit_scan(
        self, ts: int, store: Store, sku: int, action: str, member: str | None, late_ms: int = 0
    ) -> Scan:
        """One scan outside a session (incidents); snapshots the shelf on first touch."""
        gen = self.gen
        if store.idx * SKU_SLOTS + sku not in self.stock.avail:
            self.stock.snapshot(gen.now, store.idx, sku)
        event = Scan(
            ts=ts,
            scan_id=gen.next_id("SC"),
            store_id=store.store_id,
            sku=self.world.sku_ids[sku],
            action=action,  # type: ignore[arg-type]
            member_id=member,
        )
        self.out.append(Item("scan", store.store_id, ts, event, late_ms=late_ms))
        return event

    def _fulfillment(self, channel: str) -> str:
        x = self.gen.rng.random()
        choices = _FULFILLMENT[channel]
        for bound, name in choices:
            if x < bound:
                return name
        return choices[-1][1]

    def _featured_sku(self, ts: int) -> int:
        """The SKU a live stream features this hour (same for every store)."""
        hour_index = ts // 3_600_000
        top = self.world.top_skus
        return top[(hour_index * 7 + self.gen.config.seed) % len(top)]

    def _claim_then_browse(self, ts: int, session: Session) -> None:
        gen = self.gen
        assert session.coupon is not None
        gen.coupons.claim(ts, session.coupon)
        gen.push(ts + gen.ri(5_000, 60_000), self._scan_step, session)

    def _scan_step(self, ts: int, session: Session) -> None:
        """One scan of a session, then the next step (the hottest code of the simulator)."""
        gen = self.gen
        steps = session.steps
        i = session.i
        action, sku = steps[i]
        store = session.store
        key = store.idx * SKU_SLOTS + sku
        if key not in self.stock.avail:
            self.stock.snapshot(ts, store.idx, sku)
        legacy = store.legacy_pos
        if legacy:
            ts += -ts % 1000  # ISO sources send whole seconds: round up, never before the clock
        store_id = store.store_id
        event = Scan(
            ts=ts,
            scan_id=gen.next_id("SC"),
            store_id=store_id,
            sku=self.world.sku_ids[sku],
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
        now = gen.now
        if i < len(steps):
            if steps[i][0] == "add_to_cart":
                gap = 3_000 + int(self.random() * 17_001)
            else:
                gap = 5_000 + int(self.random() * 35_001)
            gen.push(now + gap, self._scan_step, session)
        elif session.cart and self.random() < session.p_order:
            gen.push(now + gen.ri(10_000, 60_000), gen.orders.create, session)
