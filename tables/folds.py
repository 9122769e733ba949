"""How each stream's events feed the windowed aggregates.

This is the per-event hot path, so each stream has one plain function and
field positions are resolved once at import. A fold never touches Kafka or
the table: it fills a :class:`MessageFold`, which the window state applies
once per message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ctower.schemas.events import Coupon, Event, Logistics, Order, Pickup, Scan, Service
from ctower.tables.aggregates import (
    CAMPAIGN_STORE_MINUTE,
    CARRIER_REGION_15MIN,
    SERVICE_MINUTE,
    SKU_SALES_5MIN,
    STORE_MINUTE,
    AggregateSpec,
)
from ctower.tables.window_state import Contributions, WindowState


class MessageFold:
    """Contributions of one Kafka message, with lateness decided per event.

    An event whose window ended at or before the partition's watermark is not
    added: it goes to :meth:`WindowState.late` (which also recognises replays).
    """

    __slots__ = ("contributions", "offset", "partition", "state", "watermark")

    def __init__(self, state: WindowState, partition: int, offset: int) -> None:
        self.state = state
        self.partition = partition
        self.offset = offset
        self.watermark = state.watermark(partition)
        self.contributions: Contributions = {}

    def add(
        self,
        spec: AggregateSpec,
        dims: tuple[str, ...],
        ts: int,
        index: int,
        deltas: Sequence[tuple[int, int]],
    ) -> None:
        """Add ``deltas`` ((field position, amount), ...) to the event's window."""
        size = spec.window_ms
        start = ts - ts % size
        key = (spec.name, dims, start)
        if start + size <= self.watermark:
            self.state.late(self.partition, self.offset, key, ts, index)
            return
        row = self.contributions.get(key)
        if row is None:
            row = self.contributions[key] = [0] * len(spec.fields)
        for position, amount in deltas:
            row[position] += amount


_SM = STORE_MINUTE.index
SCAN_VIEW = ((_SM("scans"), 1),)
SCAN_CART = ((_SM("scans"), 1), (_SM("add_to_cart"), 1))
ORDER_CREATED = ((_SM("orders"), 1),)
ORDER_REFUNDED = ((_SM("refunded_orders"), 1),)
PAID_ORDERS = _SM("paid_orders")
GMV = _SM("gmv_fen")
PICKUP_DELTAS = {
    "arrived": ((_SM("pickup_arrivals"), 1),),
    "picked_up": ((_SM("pickups_served"), 1),),
    "no_show": ((_SM("pickup_no_shows"), 1),),
}
COUPON_STORE_DELTAS = {
    "issued": ((_SM("coupons_issued"), 1),),
    "redeemed": ((_SM("coupons_redeemed"), 1),),
}
COUPON_CAMPAIGN_DELTAS = {
    action: ((CAMPAIGN_STORE_MINUTE.index(action), 1),)
    for action in CAMPAIGN_STORE_MINUTE.fields
}
UNITS = SKU_SALES_5MIN.index("units")
REVENUE = SKU_SALES_5MIN.index("revenue_fen")
SHIPMENT_STATUS = {status: CARRIER_REGION_15MIN.index(status) for status in (
    "created", "picked_up", "in_transit", "out_for_delivery", "delivered", "failed", "returned",
)}
ON_TIME = CARRIER_REGION_15MIN.index("delivered_on_time")
DELIVERED_LATE = CARRIER_REGION_15MIN.index("delivered_late")


def fold_scans(events: Sequence[Scan], fold: MessageFold) -> None:
    add = fold.add
    for index, ev in enumerate(events):
        deltas = SCAN_CART if ev.action == "add_to_cart" else SCAN_VIEW
        add(STORE_MINUTE, (ev.store_id,), ev.ts, index, deltas)  # type: ignore[arg-type]


def fold_orders(events: Sequence[Order], fold: MessageFold) -> None:
    add = fold.add
    for index, ev in enumerate(events):
        ts: int = ev.ts  # type: ignore[assignment]
        status = ev.status
        if status == "created":
            add(STORE_MINUTE, (ev.store_id,), ts, index, ORDER_CREATED)
        elif status == "paid":
            add(STORE_MINUTE, (ev.store_id,), ts, index, ((PAID_ORDERS, 1), (GMV, ev.amount_fen)))
            location = ev.stock_location
            for line in ev.lines:
                revenue = round(line.qty * line.unit_price * 100)
                add(SKU_SALES_5MIN, (location, line.sku), ts, index,
                    ((UNITS, line.qty), (REVENUE, revenue)))
        elif status == "refunded":
            add(STORE_MINUTE, (ev.store_id,), ts, index, ORDER_REFUNDED)


def fold_pickups(events: Sequence[Pickup], fold: MessageFold) -> None:
    add = fold.add
    for index, ev in enumerate(events):
        deltas = PICKUP_DELTAS.get(ev.state)
        if deltas is not None:
            add(STORE_MINUTE, (ev.store_id,), ev.ts, index, deltas)  # type: ignore[arg-type]


def fold_coupons(events: Sequence[Coupon], fold: MessageFold) -> None:
    add = fold.add
    for index, ev in enumerate(events):
        ts: int = ev.ts  # type: ignore[assignment]
        deltas = COUPON_STORE_DELTAS.get(ev.action)
        if deltas is not None:
            add(STORE_MINUTE, (ev.store_id,), ts, index, deltas)
        add(CAMPAIGN_STORE_MINUTE, (ev.campaign_id, ev.store_id), ts, index,
            COUPON_CAMPAIGN_DELTAS[ev.action])


def fold_logistics(events: Sequence[Logistics], fold: MessageFold) -> None:
    add = fold.add
    for index, ev in enumerate(events):
        ts: int = ev.ts  # type: ignore[assignment]
        deltas: tuple[tuple[int, int], ...] = ((SHIPMENT_STATUS[ev.status], 1),)
        if ev.status == "delivered" and ev.eta is not None:
            on_time = ts <= ev.eta  # type: ignore[operator]
            deltas += ((ON_TIME if on_time else DELIVERED_LATE, 1),)
        add(CARRIER_REGION_15MIN, (ev.carrier, ev.region), ts, index, deltas)


SERVICE_DELTAS = {
    ("inquiry", "opened"): ((SERVICE_MINUTE.index("inquiries"), 1),),
    ("complaint", "opened"): ((SERVICE_MINUTE.index("complaints"), 1),),
    ("complaint", "closed"): ((SERVICE_MINUTE.index("complaints_closed"), 1),),
}


def fold_service(events: Sequence[Service], fold: MessageFold) -> None:
    add = fold.add
    for index, ev in enumerate(events):
        deltas = SERVICE_DELTAS.get((ev.kind, ev.state))
        if deltas is not None:
            add(SERVICE_MINUTE, (ev.store_id, ev.sku or ""), ev.ts, index, deltas)  # type: ignore[arg-type]


def fold_nothing(events: Sequence[Event], fold: MessageFold) -> None:
    """Inventory feeds the stock position, not a windowed counter."""


Fold = Callable[[Sequence[Any], MessageFold], None]

FOLDS: dict[str, Fold] = {
    "scan": fold_scans,
    "order": fold_orders,
    "pickup": fold_pickups,
    "coupon": fold_coupons,
    "logistics": fold_logistics,
    "inventory": fold_nothing,
    "service": fold_service,
}

SPECS_BY_STREAM: dict[str, tuple[AggregateSpec, ...]] = {
    "scan": (STORE_MINUTE,),
    "order": (STORE_MINUTE, SKU_SALES_5MIN),
    "pickup": (STORE_MINUTE,),
    "coupon": (STORE_MINUTE, CAMPAIGN_STORE_MINUTE),
    "logistics": (CARRIER_REGION_15MIN,),
    "inventory": (),
    "service": (SERVICE_MINUTE,),
}
