"""The store board: what is wrong at each store right now, and one store's detail.

Every store's open conditions in one round trip: its open stock-out and
restock alerts and its other open alerts by severity (``alerts``), in-flight
shipments from the store past their ETA (``shipment_latest``) and campaigns
paused or throttled there (``coupon_state_v``). Pickup pressure comes from
``pickup_now`` (shared with the other pages). Small tables and state only:
no raw events.
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.logistics import IN_FLIGHT
from ctower.dashboard.queries.sql import frame

FACTS = ("stock_out", "short_cover", "late_shipments", "coupon_paused", "coupon_throttled",
         "alerts_critical", "alerts_warning", "alerts_info")
CONDITION_COLUMNS = ["store_id", *FACTS]


def store_conditions(client: Client) -> pd.DataFrame:
    """One row per store with something to say, a column per fact (counts).

    Stock comes from the rules' open alerts (a stock-out is the stock rule's
    call: zero on hand while shoppers keep scanning; restock: cover under
    the lead time), not from every (store, SKU) level at zero: a SKU a store
    never stocked is no stock-out.
    """
    facts = frame(
        client,
        """
        SELECT store_id, fact, toInt64(n) AS n FROM
        (
            SELECT origin_id AS store_id, [('late_shipments', count())] AS pairs
            FROM shipment_latest FINAL
            WHERE origin_type IN ('store', 'guide') AND status IN {in_flight:Array(String)}
              AND eta IS NOT NULL
              AND eta < (SELECT max(ts) FROM shipment_latest)
            GROUP BY origin_id
            UNION ALL
            SELECT toString(store_id) AS store_id,
                   [('coupon_paused', countIf(state = 'paused')),
                    ('coupon_throttled', countIf(state = 'throttled'))] AS pairs
            FROM coupon_state_v
            WHERE state != 'open'
            GROUP BY store_id
            UNION ALL
            SELECT assumeNotNull(store_id) AS store_id,
                   [('stock_out', countIf(kind = 'stock_out')),
                    ('short_cover', countIf(kind = 'restock')),
                    ('alerts_critical', countIf(severity = 'critical'
                                                AND kind NOT IN ('stock_out', 'restock'))),
                    ('alerts_warning', countIf(severity = 'warning'
                                               AND kind NOT IN ('stock_out', 'restock'))),
                    ('alerts_info', countIf(severity = 'info'
                                            AND kind NOT IN ('stock_out', 'restock')))] AS pairs
            FROM alerts FINAL
            WHERE status = 'open' AND store_id IS NOT NULL
              AND alert_id NOT IN (SELECT alert_id FROM alert_acks WHERE action = 'resolve')
            GROUP BY store_id
        )
        ARRAY JOIN pairs.1 AS fact, pairs.2 AS n
        WHERE n > 0
        """,
        {"in_flight": list(IN_FLIGHT)},
        optional=True,
        columns=["store_id", "fact", "n"],
    )
    if facts.empty:
        return pd.DataFrame(columns=CONDITION_COLUMNS)
    wide = facts.pivot_table(index="store_id", columns="fact", values="n", aggfunc="sum",
                             fill_value=0)
    for fact in FACTS:
        if fact not in wide.columns:
            wide[fact] = 0
    wide = wide[list(FACTS)].astype("int64").reset_index()
    wide.columns.name = None
    return wide


def store_alerts(client: Client, store_id: str, limit: int = 50) -> pd.DataFrame:
    """The open alerts of one store, the worst first."""
    return frame(
        client,
        """
        SELECT alert_id, kind, severity, message, evidence, opened_at, sku
        FROM alerts FINAL
        WHERE status = 'open' AND store_id = {store:String}
        ORDER BY indexOf(['critical', 'warning', 'info'], toString(severity)), opened_at DESC
        LIMIT {limit:UInt32}
        """,
        {"store": store_id, "limit": limit},
        optional=True,
        columns=["alert_id", "kind", "severity", "message", "evidence", "opened_at", "sku"],
    )


def store_stock_risk(client: Client, store_id: str, cover_hours: float = 4.0,
                     limit: int = 50) -> pd.DataFrame:
    """One store's SKUs out of stock or short of cover."""
    return frame(
        client,
        """
        SELECT sku, on_hand, velocity_per_h, cover_h, transfer_from, ts
        FROM stock_levels FINAL
        WHERE location_id = {store:String}
          AND (on_hand <= 0 OR (cover_h IS NOT NULL AND cover_h < {cover:Float64}))
        ORDER BY on_hand > 0, ifNull(cover_h, 0), velocity_per_h DESC, sku
        LIMIT {limit:UInt32}
        """,
        {"store": store_id, "cover": cover_hours, "limit": limit},
        optional=True,
        columns=["sku", "on_hand", "velocity_per_h", "cover_h", "transfer_from", "ts"],
    )


def store_coupons(client: Client, store_id: str) -> pd.DataFrame:
    """The campaigns held back at one store, with why."""
    return frame(
        client,
        """
        SELECT campaign_id, state, reason, evidence, decided_at
        FROM coupon_state_v
        WHERE store_id = {store:String} AND state != 'open'
        ORDER BY decided_at DESC
        """,
        {"store": store_id},
        optional=True,
        columns=["campaign_id", "state", "reason", "evidence", "decided_at"],
    )
