"""The six event streams of the control tower, as typed records.

On the wire every event is UTF-8 JSON. ``ts`` is accepted as ISO 8601 with an
offset or as epoch milliseconds and is always an ``int`` (epoch ms, UTC) once
decoded, so windows and the store never deal with time zones. Money is
accepted in yuan and kept in integer fen (``amount_fen``) because GMV must
add up exactly, and float sums depend on their order.

``dedup_key`` names one real-world event: producers are at-least-once, so the
same event may arrive twice, and the store collapses it on this key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct

NonNegInt = Annotated[int, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
Id = Annotated[str, Meta(min_length=1, max_length=128)]
WireTime = int | str
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
    return int(parsed.timestamp() * 1000)


class Event(Struct, kw_only=True, omit_defaults=True):
    """Fields and checks every stream shares."""

    stream: ClassVar[str]
    key_field: ClassVar[str]
    """The field Kafka partitions this stream by."""

    ts: WireTime
    event_id: str | None = None

    def __post_init__(self) -> None:
        self.ts = parse_ts(self.ts)

    @property
    def partition_key(self) -> str:
        return getattr(self, self.key_field)

    def dedup_key(self) -> str:
        raise NotImplementedError


class Scan(Event, kw_only=True, omit_defaults=True):
    stream: ClassVar[str] = "scan"
    key_field: ClassVar[str] = "store_id"

    scan_id: Id
    store_id: Id
    sku: Id
    action: Literal["view", "add_to_cart"]
    member_id: str | None = None

    def dedup_key(self) -> str:
        return self.event_id or self.scan_id


class OrderLine(Struct, kw_only=True):
    sku: Id
    qty: PositiveInt
    unit_price: NonNegFloat


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
    amount: NonNegFloat
    status: OrderStatus
    coupon_id: str | None = None
    ship_from: str | None = None
    """Location the goods leave from; unset means the store itself."""

    @property
    def amount_fen(self) -> int:
        return round(self.amount * 100)

    @property
    def stock_location(self) -> str:
        return self.ship_from or self.store_id

    def dedup_key(self) -> str:
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

    def dedup_key(self) -> str:
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eta is not None:
            self.eta = parse_ts(self.eta, "eta")

    def dedup_key(self) -> str:
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
    qty: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.qty < 0 and self.kind != "adjustment":
            raise ValueError(f"negative quantity {self.qty} for a {self.kind}")

    @property
    def signed_qty(self) -> int:
        """Change of on-hand stock; snapshots are absolute and handled apart."""
        return -self.qty if self.kind == "transfer_out" else self.qty

    def dedup_key(self) -> str:
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

    def dedup_key(self) -> str:
        return self.event_id or f"{self.coupon_id}:{self.action}"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.stream: cls for cls in (Scan, Order, Pickup, Logistics, Inventory, Coupon)
}
"""Stream name -> record type."""

encoder = msgspec.json.Encoder()
"""Shared JSON encoder for events (producers, simulator, tests)."""
