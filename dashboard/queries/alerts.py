"""Alerts: the live feed with evidence, acknowledgements and WeChat Work delivery.

Three sources, joined in the page rather than in SQL so that each can be
missing on its own: ``alerts`` (the rules' alerts, one row per alert with
FINAL), ``alert_acks`` (operators' acknowledgements, 0007) and
``alert_deliveries`` / ``route_health_v`` (the WeChat Work outbox). A store
without the outbox tables shows the feed without delivery status.
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame, row

FEED_COLUMNS = ["alert_id", "key", "kind", "severity", "status", "message", "evidence",
                "action", "opened_at", "resolved_at", "raised_at", "region", "store_id", "sku",
                "carrier", "acked_by", "acked_at", "ack_note"]
DELIVERY_COLUMNS = ["alert_id", "result", "route", "attempts", "errcode", "last_attempt_at"]
ROUTE_COLUMNS = ["route", "last_result", "last_errcode", "last_attempt_at", "broken",
                 "delivered_1h", "failed_1h"]


def open_alert_count(client: Client) -> int:
    found = row(client, "SELECT count() FROM alerts FINAL WHERE status = 'open'")
    return int(found[0]) if found else 0


def alert_feed(client: Client, status: str | None = None, limit: int = 200) -> pd.DataFrame:
    """The newest alerts (``status`` 'open', 'resolved' or None for both),
    with the latest acknowledgement of each."""
    return frame(
        client,
        """
        SELECT a.alert_id AS alert_id, a.key AS key, a.kind AS kind, a.severity AS severity,
               a.status AS status, a.message AS message, a.evidence AS evidence,
               a.action AS action, a.opened_at AS opened_at, a.resolved_at AS resolved_at,
               a.raised_at AS raised_at, a.region AS region, a.store_id AS store_id,
               a.sku AS sku, a.carrier AS carrier,
               k.acked_by AS acked_by, k.acked_at AS acked_at, k.note AS ack_note
        FROM
        (
            SELECT * FROM alerts FINAL
            WHERE {status:String} = '' OR status = {status:String}
            ORDER BY raised_at DESC, alert_id
            LIMIT {limit:UInt32}
        ) AS a
        LEFT JOIN
        (
            SELECT alert_id, argMax(acked_by, ts) AS acked_by, max(ts) AS acked_at,
                   argMax(note, ts) AS note
            FROM alert_acks FINAL
            GROUP BY alert_id
        ) AS k ON k.alert_id = a.alert_id
        ORDER BY raised_at DESC, alert_id
        SETTINGS join_use_nulls = 1
        """,
        {"status": status or "", "limit": limit},
        optional=True,
        columns=FEED_COLUMNS,
    )


def deliveries(client: Client, alert_ids: list[str]) -> pd.DataFrame:
    """Per alert: the latest delivery result, its route and how many attempts."""
    if not alert_ids:
        return pd.DataFrame(columns=DELIVERY_COLUMNS)
    return frame(
        client,
        """
        SELECT alert_id, argMax(result, ts) AS result, argMax(route, ts) AS route,
               count() AS attempts, argMax(errcode, ts) AS errcode, max(ts) AS last_attempt_at
        FROM alert_deliveries
        WHERE alert_id IN {ids:Array(String)}
        GROUP BY alert_id
        """,
        {"ids": alert_ids},
        optional=True,
        columns=DELIVERY_COLUMNS,
    )


def route_health(client: Client) -> pd.DataFrame:
    """Every WeChat Work route with its last result; broken ones first."""
    return frame(
        client,
        "SELECT route, last_result, last_errcode, last_attempt_at, broken, delivered_1h, "
        "failed_1h FROM route_health_v ORDER BY broken DESC, route",
        optional=True,
        columns=ROUTE_COLUMNS,
    )
