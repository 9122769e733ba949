"""The dashboard's questions, one module per domain, as SQL over the store.

:func:`refresh_queries` lists what the pages run on every refresh, so the
benchmark measures exactly those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clickhouse_connect.driver.client import Client


def refresh_queries(minutes: int = 60) -> dict[str, Callable[[Client], Any]]:
    """Query name -> a call of it as the pages make it every refresh."""
    from ctower.dashboard.queries import (
        alerts,
        board,
        coupons,
        guides,
        inventory,
        logistics,
        pickup,
        pipeline,
        sales,
        skus,
    )

    stores = [f"S{i:03d}" for i in range(1, 61)]
    regions = [("EAST", "SOUTH", "NORTH", "CENTRAL", "SW", "NW")[(i - 1) // 10]
               for i in range(1, 61)]

    def feed_and_deliveries(client: Client) -> Any:
        feed = alerts.alert_feed(client, status=None)
        return alerts.deliveries(client, [str(a) for a in feed["alert_id"]])

    return {
        "sales_pulse": lambda c: sales.sales_pulse(c, minutes),
        "minute_trend": lambda c: sales.minute_trend(c, minutes),
        "store_sales": lambda c: sales.store_sales(c, minutes),
        "store_minute_trend": lambda c: sales.store_minute_trend(c, minutes, "S001"),
        "pickup_now": pickup.pickup_now,
        "pickup_trend": lambda c: pickup.pickup_trend(
            c, minutes, [f"S{i:03d}" for i in range(1, 9)]
        ),
        "store_conditions": board.store_conditions,
        "store_alerts": lambda c: board.store_alerts(c, "S001"),
        "store_stock_risk": lambda c: board.store_stock_risk(c, "S001"),
        "store_coupons": lambda c: board.store_coupons(c, "S001"),
        "sku_by_region": lambda c: skus.sku_by_region(c, minutes, stores, regions, "?"),
        "stock_summary": lambda c: inventory.stock_summary(c, 4.0),
        "stock_risk": lambda c: inventory.stock_risk(c, 4.0),
        "shipments_by_status": logistics.shipments_by_status,
        "late_shipments": logistics.late_shipments,
        "failed_shipments": logistics.failed_shipments,
        "on_time_by_carrier_region": lambda c: logistics.on_time_by_carrier_region(c, minutes),
        "on_time_rate": lambda c: logistics.on_time_rate(c, minutes),
        "guide_anchor": guides.anchor,
        "guide_days": guides.guide_days,
        "guides_open_by_store": lambda c: guides.open_by_store(c, 20.0),
        "guides_open_by_guide": guides.open_by_guide,
        "caps_in_force": coupons.caps_in_force,
        "issued_by_store": lambda c: coupons.issued_by_store(c, minutes),
        "held_back": coupons.held_back,
        "campaign_ids": coupons.campaign_ids,
        "campaign_minutes": lambda c: coupons.campaign_minutes(c, "CMP01", "", max(minutes, 60)),
        "policy_history": lambda c: coupons.policy_history(c, "CMP01", ""),
        "open_alert_count": alerts.open_alert_count,
        "alert_feed_open": lambda c: alerts.alert_feed(c, status="open"),
        "alert_feed_deliveries": feed_and_deliveries,
        "alert_one": lambda c: alerts.alert_feed(c, None, 1, None, "A70"),
        "alert_history": lambda c: alerts.alert_history(c, "A70"),
        "alert_sla": lambda c: alerts.alert_sla(c, max(minutes, 1440), 900.0),
        "route_health": alerts.route_health,
        "bad_input": pipeline.bad_input,
        "late_events": pipeline.late_events,
        "duplicate_events": pipeline.duplicate_events,
        "freshness": pipeline.freshness,
        "alert_latency": lambda c: pipeline.alert_latency(c, 60),
    }
