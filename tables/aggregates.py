"""What the windowed tables count: one spec per aggregate.

An aggregate is a vector of integer counters per (dims, event-time window).
The same spec drives the worker's state, the closed-window records, the
ClickHouse table (``schemas/ddl``) and the simulator's ground truth, so the
four can be checked against each other.

Money is in fen (integers) so sums are exact. Hopping windows (sales
velocity over 1 h, step 5 min) are sums of consecutive 5-minute buckets:
keeping buckets instead of overlapping windows writes each event once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AggregateSpec:
    name: str
    dims: tuple[str, ...]
    fields: tuple[str, ...]
    window_seconds: int

    @property
    def window_ms(self) -> int:
        return self.window_seconds * 1000

    def window_start(self, ts_ms: int) -> int:
        return ts_ms - ts_ms % self.window_ms

    def index(self, field: str) -> int:
        return self.fields.index(field)


STORE_MINUTE = AggregateSpec(
    name="store_minute",
    dims=("store_id",),
    fields=(
        "scans",
        "add_to_cart",
        "orders",
        "paid_orders",
        "gmv_fen",
        "refunded_orders",
        "pickup_arrivals",
        "pickups_served",
        "pickup_no_shows",
        "coupons_issued",
        "coupons_redeemed",
    ),
    window_seconds=60,
)
"""Per store per minute: the sales pulse. Fed by scan, order, pickup, coupon."""

SKU_SALES_5MIN = AggregateSpec(
    name="sku_sales_5min",
    dims=("location_id", "sku"),
    fields=("units", "revenue_fen"),
    window_seconds=300,
)
"""Units sold per (location, sku) per 5 minutes, from paid orders. Sales
velocity (hopping 1 h, step 5 min) is the sum of 12 consecutive buckets."""

CARRIER_REGION_15MIN = AggregateSpec(
    name="carrier_region_15min",
    dims=("carrier", "region"),
    fields=(
        "created",
        "picked_up",
        "in_transit",
        "out_for_delivery",
        "delivered",
        "failed",
        "returned",
        "delivered_on_time",
        "delivered_late",
    ),
    window_seconds=900,
)
"""Shipments by status per (carrier, region) per 15 minutes. A delivery is on
time when its ``ts`` is at or before the ``eta`` last announced for it."""

CAMPAIGN_STORE_MINUTE = AggregateSpec(
    name="campaign_store_minute",
    dims=("campaign_id", "store_id"),
    fields=("issued", "claimed", "redeemed", "expired"),
    window_seconds=60,
)
"""Coupon actions per (campaign, store) per minute; caps over longer windows
add up minutes."""

SERVICE_MINUTE = AggregateSpec(
    name="service_minute",
    dims=("store_id", "sku"),
    fields=("inquiries", "complaints", "complaints_closed"),
    window_seconds=60,
)
"""Customer-service tickets opened (inquiries, complaints) and complaints closed per
(store, SKU; '' for a ticket about no SKU) per minute. Complaints per SKU and per
store per hour are sums of minutes (views of 0017): an hour-long window would
outlast the de-duplication horizon."""

AGGREGATES: dict[str, AggregateSpec] = {
    spec.name: spec
    for spec in (STORE_MINUTE, SKU_SALES_5MIN, CARRIER_REGION_15MIN, CAMPAIGN_STORE_MINUTE,
                 SERVICE_MINUTE)
}
