"""Coupons: issued to a member, maybe claimed, then redeemed on an order or expired."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctower.schemas.events import Coupon
from ctower.simulator.items import Item
from ctower.simulator.state import CouponState

if TYPE_CHECKING:
    from ctower.simulator.chain import Campaign, Store
    from ctower.simulator.generator import Generator


class Coupons:
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.out = gen.out

    def issue(self, ts: int, campaign: Campaign, store: Store, member: str) -> CouponState:
        """A new coupon, sent now, expiring after its campaign's validity."""
        coupon = CouponState(self.gen.next_id("CP"), campaign, store, member)
        self.emit(ts, coupon, "issued")
        self.gen.push(ts + campaign.validity_s * 1000, self._expire, coupon)
        return coupon

    def claim(self, ts: int, coupon: CouponState) -> None:
        if coupon.state == "issued":
            coupon.state = "claimed"
            self.emit(ts, coupon, "claimed")

    def _expire(self, ts: int, coupon: CouponState) -> None:
        if coupon.state in ("issued", "claimed"):
            coupon.state = "expired"
            self.emit(ts, coupon, "expired")

    def emit(self, ts: int, coupon: CouponState, action: str) -> None:
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
