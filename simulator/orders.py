"""Orders: created from a session's cart, paid or cancelled, sometimes refunded.

Payment is where an order branches into its fulfilment: a store pickup is
booked (:mod:`~ctower.simulator.pickups`), a delivery ships
(:mod:`~ctower.simulator.shipments`), an in-store sale is done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctower.schemas.events import Order, OrderLine
from ctower.simulator.items import Item
from ctower.simulator.state import CouponState, OrderState, Session
from ctower.simulator.world import SKU_SLOTS, WH_BASE

if TYPE_CHECKING:
    from ctower.simulator.chain import Store
    from ctower.simulator.generator import Generator


class Orders:
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.world = gen.world
        self.out = gen.out

    def create(self, ts: int, session: Session) -> None:
        """A session's cart becomes an order of what the shelf (or warehouse) still has."""
        gen = self.gen
        rng = gen.rng
        store = session.store
        fulfillment = session.fulfillment
        if fulfillment == "guide_delivery" and not gen.guides.offer(ts, store):
            fulfillment = "warehouse_direct"  # no guide can take it today: a carrier delivers
        if fulfillment == "warehouse_direct":
            loc = WH_BASE + self.world.store_region[store.idx]
            ship_from: str | None = self.world.regions[loc - WH_BASE].warehouse_id
        else:
            loc = store.idx
            ship_from = None
        wanted: dict[int, int] = {}
        for sku in session.cart:
            x = rng.random()
            wanted[sku] = wanted.get(sku, 0) + (1 if x < 0.7 else 2 if x < 0.9 else 3)
        lines: list[tuple[int, int]] = []
        for sku, qty in wanted.items():
            got = gen.stock.reserve(ts, loc, sku, qty)
            if got:
                lines.append((sku, got))
            else:
                gen.counters.lost_sales += 1
                gen.service_desk.out_of_stock(ts, store, sku)
        if not lines:
            return
        order = self.new_order(
            store,
            session.member or gen.member_of(store),
            session.channel,
            fulfillment,
            loc,
            ship_from,
            lines,
            session.coupon,
        )
        if fulfillment == "guide_delivery":
            gen.guides.promise(order)
        self.emit(ts, order, "created")
        paid_p = 0.97 if fulfillment == "in_store" else 0.92
        if rng.random() < paid_p:
            delay = gen.ri(2_000, 20_000) if fulfillment == "in_store" else gen.ri(5_000, 90_000)
            gen.push(ts + delay, self.pay, order)
        else:
            gen.push(ts + gen.ri(60_000, 900_000), self._cancel, order)

    def new_order(
        self,
        store: Store,
        member: str,
        channel: str,
        fulfillment: str,
        loc: int,
        ship_from: str | None,
        lines: list[tuple[int, int]],
        coupon: CouponState | None,
    ) -> OrderState:
        """An order over reserved lines; applies the coupon when its campaign fits."""
        world = self.world
        order = OrderState()
        order.order_id = self.gen.next_id("OD")
        order.store = store
        order.member = member
        order.channel = channel
        order.fulfillment = fulfillment
        order.loc = loc
        order.ship_from = ship_from
        order.units = lines
        order.lines = [
            OrderLine(sku=world.sku_ids[sku], qty=qty, unit_price=world.sku_unit_price[sku])
            for sku, qty in lines
        ]
        subtotal = sum(world.sku_price[sku] * qty for sku, qty in lines)
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

    def emit(self, ts: int, order: OrderState, status: str) -> None:
        """One order event with the order's current fields."""
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

    def pay(self, ts: int, order: OrderState) -> None:
        """Handler: the order is paid (stock leaves, a coupon is redeemed), then fulfilled."""
        gen = self.gen
        rng = gen.rng
        onhand = gen.stock.onhand
        for sku, qty in order.units:
            key = order.loc * SKU_SLOTS + sku
            onhand[key] -= qty
        self.emit(ts, order, "paid")
        coupon = order.coupon
        if coupon is not None:
            coupon.state = "redeemed"
            gen.coupons.emit(ts, coupon, "redeemed")
        fulfillment = order.fulfillment
        if fulfillment == "store_pickup":
            order.refund = rng.random() < 0.01
            gen.push(ts + gen.ri(1_000, 5_000), gen.pickups.book, order)
        elif fulfillment == "in_store":
            if rng.random() < 0.015:
                gen.push(ts + gen.ri(1_800_000, 10_800_000), self.refund, order)
        else:
            order.refund = rng.random() < 0.015
            gen.push(ts + gen.ri(120_000, 900_000), gen.shipments.create, order)

    def _cancel(self, ts: int, order: OrderState) -> None:
        self.gen.guides.release(order)
        avail = self.gen.stock.avail
        for sku, qty in order.units:
            avail[order.loc * SKU_SLOTS + sku] += qty
        self.emit(ts, order, "cancelled")

    def refund(self, ts: int, order: OrderState) -> None:
        """Handler: the order is refunded."""
        self.emit(ts, order, "refunded")
