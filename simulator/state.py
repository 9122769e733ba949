"""The mutable state of one session, coupon, order and shipment between their events.

Kept apart from the code that moves them so the incidents, the guide desk and
the event families share one set of types without importing each other.
``__slots__`` everywhere: a run holds tens of thousands of these at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctower.schemas.events import OrderLine
    from ctower.simulator.chain import Campaign, Store


class CouponState:
    """An issued coupon: ``state`` goes issued -> claimed -> redeemed | expired."""

    __slots__ = ("campaign", "coupon_id", "member", "state", "store")

    def __init__(self, coupon_id: str, campaign: Campaign, store: Store, member: str) -> None:
        self.coupon_id = coupon_id
        self.campaign = campaign
        self.store = store
        self.member = member
        self.state = "issued"


class Session:
    """A shopper's visit: the scans decided when it starts, sent one step at a time."""

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
        coupon: CouponState | None,
        p_order: float,
    ) -> None:
        self.store = store
        self.member = member
        self.channel = channel
        self.fulfillment = fulfillment
        self.steps = steps
        """(action, sku index) per scan, in order."""
        self.i = 0
        """Index of the next step to send."""
        self.cart: list[int] = []
        self.coupon = coupon
        self.p_order = p_order
        """Chance the session ends in an order when its cart is not empty."""


class OrderState:
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
    coupon: CouponState | None
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


class ShipmentState:
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
    order: OrderState
    origin_id: str
    origin_type: str
    region: str
    shipment_id: str
    steps: list[tuple[int, str]]
