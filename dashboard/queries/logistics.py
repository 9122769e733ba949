"""Logistics: shipments by status, late ones, on-time rate per carrier and region.

Shipment status comes from ``shipment_latest`` (0007: one row per shipment,
kept by a materialized view), not from the raw events: the latest status of
every shipment out of millions of tracking events would otherwise be a full
scan every refresh. "Now" is the newest tracking event seen, not the wall
clock, so a replay of past days shows what was late then. Stale shipments
(no update for longer than their stage allows) are the rules' call: they are
the open ``shipment_stale`` alerts, shown with the other alerts.
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame, row

IN_FLIGHT = ("created", "picked_up", "in_transit", "out_for_delivery")
LAST_WINDOWS = (
    "window_start >= (SELECT max(window_start) FROM carrier_region_15min)"
    " - toIntervalMinute(greatest({minutes:UInt32}, 15) - 15)"
)
"""The 15-minute windows inside the last ``minutes`` (at least the newest one)."""


def shipments_by_status(client: Client) -> pd.DataFrame:
    return frame(
        client,
        "SELECT status, count() AS shipments FROM shipment_latest FINAL "
        "GROUP BY status ORDER BY shipments DESC",
        optional=True,
        columns=["status", "shipments"],
    )


def late_shipments(client: Client, limit: int = 200) -> pd.DataFrame:
    """In-flight shipments whose ETA has passed, the most overdue first."""
    return frame(
        client,
        """
        WITH (SELECT max(ts) FROM shipment_latest) AS now_ts
        SELECT shipment_id, carrier, region, origin_type, origin_id, status, eta,
               ts AS last_update,
               round(dateDiff('second', eta, now_ts) / 3600, 1) AS hours_late
        FROM shipment_latest FINAL
        WHERE status IN {in_flight:Array(String)} AND eta IS NOT NULL AND eta < now_ts
        ORDER BY eta
        LIMIT {limit:UInt32}
        """,
        {"in_flight": list(IN_FLIGHT), "limit": limit},
        optional=True,
        columns=["shipment_id", "carrier", "region", "origin_type", "origin_id", "status",
                 "eta", "last_update", "hours_late"],
    )


def failed_shipments(client: Client, limit: int = 100) -> pd.DataFrame:
    """Failed or returned deliveries, newest first."""
    return frame(
        client,
        """
        SELECT shipment_id, carrier, region, origin_type, origin_id, status, ts AS last_update
        FROM shipment_latest FINAL
        WHERE status IN ('failed', 'returned')
        ORDER BY ts DESC
        LIMIT {limit:UInt32}
        """,
        {"limit": limit},
        optional=True,
        columns=["shipment_id", "carrier", "region", "origin_type", "origin_id", "status",
                 "last_update"],
    )


def on_time_by_carrier_region(client: Client, minutes: int) -> pd.DataFrame:
    """Deliveries and the on-time share per carrier and region over the range."""
    return frame(
        client,
        f"""
        SELECT carrier, region, sum(delivered) AS delivered,
               sum(delivered_on_time) AS on_time, sum(delivered_late) AS late,
               sum(failed) + sum(returned) AS failed_or_returned,
               if(on_time + late > 0, on_time / (on_time + late), NULL) AS on_time_rate
        FROM carrier_region_15min_v
        WHERE {LAST_WINDOWS}
        GROUP BY carrier, region
        ORDER BY on_time_rate NULLS LAST, carrier, region
        """,
        {"minutes": minutes},
        columns=["carrier", "region", "delivered", "on_time", "late", "failed_or_returned",
                 "on_time_rate"],
    )


def on_time_rate(client: Client, minutes: int) -> float | None:
    """Deliveries on time out of those with a known ETA, over the range."""
    found = row(
        client,
        f"""
        SELECT sum(delivered_on_time), sum(delivered_late)
        FROM carrier_region_15min_v
        WHERE {LAST_WINDOWS}
        """,
        {"minutes": minutes},
    )
    if found is None:
        return None
    on_time, late = int(found[0] or 0), int(found[1] or 0)
    return on_time / (on_time + late) if on_time + late else None
