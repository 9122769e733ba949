"""The event streams of the control tower, as typed records.

On the wire every event is UTF-8 JSON. ``ts`` is accepted as ISO 8601 with an
offset or as epoch milliseconds and is always an ``int`` (epoch ms, UTC) once
decoded, so windows and the store never deal with time zones. Money is
accepted in yuan and kept in integer fen (``amount_fen``) because GMV must
add up exactly, and float sums depend on their order.

``identity()`` names one real-world event: its ``event_id`` when the producer
gives one, else the natural key of what happened. Producers are at-least-once,
so the same event may arrive twice; the worker counts it once (see
``tables/dedup.py``) and the store collapses it on the same key.

Bounds: every value that is counted has a documented range here, checked at
decoding, so nothing that passes can overflow later (the window state's
64-bit counters, the store's Int64 fen). A value beyond them is dead-lettered
as ``out_of_range``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct

MAX_AMOUNT_YUAN = 10_000_000.0
"""Largest order amount (yuan): ten million, 1e9 fen."""
MAX_UNIT_PRICE_YUAN = 1_000_000.0
"""Largest unit price of an order line (yuan)."""
MAX_LINE_QTY = 10_000
"""Largest quantity of one order line. With the price bound a line is at most
1e12 fen and an order of 500 lines 5e14, so ten thousand such orders in one
window still add up inside the Int64 counters of the state and the store."""
MAX_STOCK_QTY = 10_000_000
"""Largest quantity of one stock movement or count (a warehouse receipt)."""
MAX_TS_MS = 7_258_118_400_000
"""2200-01-01 UTC: the latest time any time field may carry (the store's
DateTime64(3) ends in 2299)."""
MINUTE = 60_000
"""One minute of event time: every time field, window and rule horizon is in
epoch milliseconds, so the code that works them out shares this one unit."""

LineQty = Annotated[int, Meta(gt=0, le=MAX_LINE_QTY)]
StockQty = Annotated[int, Meta(ge=-MAX_STOCK_QTY, le=MAX_STOCK_QTY)]
Amount = Annotated[float, Meta(ge=0, le=MAX_AMOUNT_YUAN)]
UnitPrice = Annotated[float, Meta(ge=0, le=MAX_UNIT_PRICE_YUAN)]
Id = Annotated[str, Meta(min_length=1, max_length=128)]
EpochMs = Annotated[int, Meta(ge=0, le=MAX_TS_MS)]
WireTime = EpochMs | Annotated[str, Meta(max_length=64)]
"""Epoch milliseconds, or ISO 8601 text with an offset; an ``int`` after decoding."""


def parse_ts(value: int | str, field: str = "ts") -> int:
    """Epoch milliseconds from the two accepted wire forms.

    A naive ISO time is refused: guessing its zone would shift a whole store's
    day by eight hours without anyone noticing.
    """
    if isinstance(value, int):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"`{field}` is not ISO 8601 or epoch ms: {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"`{field}` has no UTC offset: {value!r}")
    ms = int(parsed.timestamp() * 1000)
    if not 0 <= ms <= MAX_TS_MS:
        raise ValueError(f"`{field}` is out of range (1970 to 2200): {value!r}")
    return ms


class Event(Struct, kw_only=True, omit_defaults=True):
    """Fields and checks every stream shares."""

    stream: ClassVar[str]
    key_field: ClassVar[str]
    """The field Kafka partitions this stream by."""

    ts: WireTime
    event_id: Id | None = None

    def __post_init__(self) -> None:
        self.ts = parse_ts(self.ts)

    @property
    def partition_key(self) -> str:
        key: str = getattr(self, self.key_field)
        return key

    def identity(self) -> str:
        """What makes two deliveries the same event (a re-send counts once)."""
        raise NotImplementedError

    def dedup_key(self) -> str:
        """The store's name for :meth:`identity` (its ReplacingMergeTree key)."""
        return self.identity()


class Scan(Event, kw_only=True, omit_defaults=True):
    stream: ClassVar[str] = "scan"
    key_field: ClassVar[str] = "store_id"

    scan_id: Id
    store_id: Id
    sku: Id
    action: Literal["view", "add_to_cart"]
    member_id: Id | None = None

    def identity(self) -> str:
        return self.event_id or self.scan_id


class OrderLine(Struct, kw_only=True):
    sku: Id
    qty: LineQty
    unit_price: UnitPrice


Channel = Literal["scan_and_go", "mini_program", "community_group", "live_stream", "guide"]
Fulfillment = Literal["in_store", "store_pickup", "warehouse_direct", "guide_delivery"]
OrderStatus = Literal["created", "paid", "cancelled", "refunded"]


class Order(Event, kw_only=True, omit_defaults=True):
    stream: ClassVar[str] = "order"
    key_field: ClassVar[str] = "store_id"

    order_id: Id
    member_id: Id
    store_id: Id
    channel: Channel
    fulfillment: Fulfillment
    lines: Annotated[list[OrderLine], Meta(min_length=1, max_length=500)]
    amount: Amount
    status: OrderStatus
    coupon_id: Id | None = None
    ship_from: Id | None = None
    """Location the goods leave from; unset means the store itself."""

    @property
    def amount_fen(self) -> int:
        return round(self.amount * 100)

    @property
    def stock_location(self) -> str:
        return self.ship_from or self.store_id

    def identity(self) -> str:
        return self.event_id or f"{self.order_id}:{self.status}"


PickupState = Literal["booked", "ready", "arrived", "picked_up", "no_show", "cancelled"]


class Pickup(Event, kw_only=True, omit_defaults=True):
    stream: ClassVar[str] = "pickup"
    key_field: ClassVar[str] = "store_id"

    order_id: Id
    store_id: Id
    state: PickupState
    slot_start: WireTime | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.slot_start is not None:
            self.slot_start = parse_ts(self.slot_start, "slot_start")

    def identity(self) -> str:
        return self.event_id or f"{self.order_id}:{self.state}"


OriginType = Literal["central_warehouse", "store", "guide"]
ShipmentStatus = Literal[
    "created", "picked_up", "in_transit", "out_for_delivery", "delivered", "failed", "returned"
]


class Logistics(Event, kw_only=True, omit_defaults=True):
    stream: ClassVar[str] = "logistics"
    key_field: ClassVar[str] = "shipment_id"

    shipment_id: Id
    order_id: Id
    origin_type: OriginType
    origin_id: Id
    carrier: Id
    region: Id
    status: ShipmentStatus
    eta: WireTime | None = None
    district: Id | None = None
    """The delivery district (区), when the carrier says: districts with repeated
    failed deliveries are flagged."""
    guide_id: Id | None = None
    """The shopping guide (导购) delivering it, for a guide delivery (``origin_type``
    ``guide``, ``origin_id`` the store the guide serves): guides have a daily cap
    and an on-time rate of their own, which the carrier's lane hides."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eta is not None:
            self.eta = parse_ts(self.eta, "eta")

    def identity(self) -> str:
        return self.event_id or f"{self.shipment_id}:{self.status}:{self.ts}"


InventoryKind = Literal["snapshot", "receipt", "adjustment", "transfer_in", "transfer_out"]


class Inventory(Event, kw_only=True, omit_defaults=True):
    """A stock movement or count. ``qty`` is never negative, except for
    adjustments (shrinkage, damage), which carry their sign."""

    stream: ClassVar[str] = "inventory"
    key_field: ClassVar[str] = "location_id"

    location_id: Id
    sku: Id
    kind: InventoryKind
    qty: StockQty

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.qty < 0 and self.kind != "adjustment":
            raise ValueError(f"negative quantity {self.qty} for a {self.kind}")

    @property
    def signed_qty(self) -> int:
        """Change of on-hand stock; snapshots are absolute and handled apart."""
        return -self.qty if self.kind == "transfer_out" else self.qty

    def identity(self) -> str:
        return self.event_id or f"{self.location_id}:{self.sku}:{self.kind}:{self.ts}:{self.qty}"


CouponAction = Literal["issued", "claimed", "redeemed", "expired"]


class Coupon(Event, kw_only=True, omit_defaults=True):
    stream: ClassVar[str] = "coupon"
    key_field: ClassVar[str] = "campaign_id"

    coupon_id: Id
    campaign_id: Id
    store_id: Id
    member_id: Id
    action: CouponAction

    def identity(self) -> str:
        return self.event_id or f"{self.coupon_id}:{self.action}"


ServiceChannel = Literal["mini_program", "wechat_chat", "phone", "in_store", "live_stream"]
ServiceKind = Literal["inquiry", "complaint"]
ServiceTopic = Literal[
    "late_delivery", "out_of_stock", "quality", "wrong_item", "refund", "coupon", "pickup",
    "other",
]
ServiceState = Literal["opened", "closed"]


class Service(Event, kw_only=True, omit_defaults=True):
    """A customer-service ticket (客服) opening or closing: an inquiry or a complaint.

    Keyed by ``sku``, the ticket id when it names no SKU (``partition_key``):
    the complaint rules count bursts per SKU over the whole chain, and both
    events of a ticket must meet on one partition for its SLA. ``key_field``
    names the field every ticket has.
    """

    stream: ClassVar[str] = "service"
    key_field: ClassVar[str] = "ticket_id"
    key_doc: ClassVar[str] = "sku (ticket_id when the ticket names no SKU)"

    ticket_id: Id
    channel: ServiceChannel
    kind: ServiceKind
    topic: ServiceTopic
    state: ServiceState
    store_id: Id
    order_id: Id | None = None
    sku: Id | None = None

    @property
    def partition_key(self) -> str:
        return self.sku or self.ticket_id

    def identity(self) -> str:
        return self.event_id or f"{self.ticket_id}:{self.state}"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.stream: cls for cls in (Scan, Order, Pickup, Logistics, Inventory, Coupon, Service)
}
"""Stream name -> record type."""

encoder = msgspec.json.Encoder()
"""Shared JSON encoder for events (producers, simulator, tests)."""
