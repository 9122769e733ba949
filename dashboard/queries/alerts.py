"""Alerts: the live feed with evidence, the operators' workflow and WeChat Work delivery.

Three sources, joined in the page rather than in SQL so that each can be
missing on its own: ``alerts`` (the rules' alerts, one row per alert with
FINAL), ``alert_acks`` (what operators did: acknowledged, assigned an owner,
resolved with a note; 0007, 0012) and ``alert_deliveries`` /
``route_health_v`` (the WeChat Work outbox). A store without the outbox
tables shows the feed without delivery status.

Times to acknowledge and to resolve count from the alert's ``opened_at``
(the event time its condition began; live, that is the wall clock give or
take the pipeline's latency) to the first acknowledgement, and to the
earlier of the rule's resolution and an operator's.
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame, row

FEED_COLUMNS = ["alert_id", "key", "kind", "severity", "status", "message", "evidence",
                "action", "opened_at", "resolved_at", "raised_at", "region", "store_id", "sku",
                "carrier", "acked_by", "acked_at", "ack_note", "owner", "closed_by", "closed_at",
                "close_note"]
SLA_COLUMNS = ["kind", "alerts", "acked", "tta_p50_s", "tta_p90_s", "resolved", "ttr_p50_s",
               "ttr_p90_s", "unacked_open"]
HISTORY_COLUMNS = ["alert_id", "action", "acked_by", "owner", "note", "ts"]

ACTIONS_BY_ALERT = """
    SELECT alert_id,
           argMinIf(acked_by, ts, action = 'ack') AS first_acked_by,
           minIfOrNull(ts, action = 'ack') AS acked_at,
           argMinIf(note, ts, action = 'ack') AS ack_note,
           argMaxIf(owner, ts, action = 'assign') AS owner_now,
           argMaxIf(acked_by, ts, action = 'resolve') AS closed_by,
           maxIfOrNull(ts, action = 'resolve') AS closed_at,
           argMaxIf(note, ts, action = 'resolve') AS close_note
    FROM alert_acks FINAL
    GROUP BY alert_id
"""
"""Per alert: the first acknowledgement, the current owner, the operator's resolution."""
DELIVERY_COLUMNS = ["alert_id", "result", "route", "attempts", "errcode", "last_attempt_at"]
ROUTE_COLUMNS = ["route", "last_result", "last_errcode", "last_attempt_at", "broken",
                 "delivered_1h", "failed_1h"]


def open_alert_count(client: Client) -> int:
    found = row(client, "SELECT count() FROM alerts FINAL WHERE status = 'open'")
    return int(found[0]) if found else 0


def alert_feed(client: Client, status: str | None = None, limit: int = 200,
               store_id: str | None = None, alert_id: str | None = None) -> pd.DataFrame:
    """The newest alerts with what operators did about each.

    ``status``: 'open' (open by the rule and not closed by an operator),
    'resolved' (by either), or None for both.
    """
    return frame(
        client,
        f"""
        SELECT a.alert_id AS alert_id, a.key AS key, a.kind AS kind, a.severity AS severity,
               a.status AS status, a.message AS message, a.evidence AS evidence,
               a.action AS action, a.opened_at AS opened_at, a.resolved_at AS resolved_at,
               a.raised_at AS raised_at, a.region AS region, a.store_id AS store_id,
               a.sku AS sku, a.carrier AS carrier,
               nullIf(k.first_acked_by, '') AS acked_by, k.acked_at AS acked_at,
               nullIf(k.ack_note, '') AS ack_note, nullIf(k.owner_now, '') AS owner,
               nullIf(k.closed_by, '') AS closed_by, k.closed_at AS closed_at,
               nullIf(k.close_note, '') AS close_note
        FROM
        (
            SELECT * FROM alerts FINAL
            WHERE ({{status:String}} != 'open' OR status = 'open')
              AND ({{store:String}} = '' OR store_id = {{store:String}})
              AND ({{alert:String}} = '' OR alert_id = {{alert:String}})
              AND ({{status:String}} != 'open' OR alert_id NOT IN (
                  SELECT alert_id FROM alert_acks WHERE action = 'resolve'))
              AND ({{status:String}} != 'resolved' OR status = 'resolved' OR alert_id IN (
                  SELECT alert_id FROM alert_acks WHERE action = 'resolve'))
            ORDER BY raised_at DESC, alert_id
            LIMIT {{limit:UInt32}}
        ) AS a
        LEFT JOIN ({ACTIONS_BY_ALERT}) AS k ON k.alert_id = a.alert_id
        ORDER BY raised_at DESC, alert_id
        SETTINGS join_use_nulls = 1
        """,
        {"status": status or "", "limit": limit, "store": store_id or "",
         "alert": alert_id or ""},
        optional=True,
        columns=FEED_COLUMNS,
    )


def alert_history(client: Client, alert_id: str) -> pd.DataFrame:
    """Who did what to one alert, oldest first."""
    return frame(
        client,
        """
        SELECT alert_id, action, acked_by, owner, note, ts
        FROM alert_acks FINAL
        WHERE alert_id = {alert:String}
        ORDER BY ts
        """,
        {"alert": alert_id},
        optional=True,
        columns=HISTORY_COLUMNS,
    )


def alert_sla(client: Client, minutes: int, overdue_seconds: float) -> pd.DataFrame:
    """Per kind, over the alerts opened in the last ``minutes`` (event time,
    back from the newest opening): how many, how many acknowledged and how
    fast (p50, p90 seconds), how many resolved and how fast, and how many
    are open, unacknowledged and older than ``overdue_seconds``."""
    return frame(
        client,
        f"""
        WITH (SELECT max(opened_at) FROM alerts) AS anchor
        SELECT kind, count() AS alerts,
               countIf(acked_at IS NOT NULL) AS acked,
               quantileIf(0.5)(tta, acked_at IS NOT NULL) AS tta_p50_s,
               quantileIf(0.9)(tta, acked_at IS NOT NULL) AS tta_p90_s,
               countIf(done_at IS NOT NULL) AS resolved,
               quantileIf(0.5)(ttr, done_at IS NOT NULL) AS ttr_p50_s,
               quantileIf(0.9)(ttr, done_at IS NOT NULL) AS ttr_p90_s,
               countIf(done_at IS NULL AND acked_at IS NULL
                       AND now64(3) - toIntervalMillisecond(
                           toInt64({{overdue:Float64}} * 1000)) > opened_at) AS unacked_open
        FROM
        (
            SELECT a.kind AS kind, a.opened_at AS opened_at, k.acked_at AS acked_at,
                   multiIf(a.status = 'resolved' AND k.closed_at IS NOT NULL,
                           least(assumeNotNull(a.resolved_at), k.closed_at),
                           a.status = 'resolved', a.resolved_at, k.closed_at) AS done_at,
                   (toUnixTimestamp64Milli(assumeNotNull(k.acked_at))
                    - toUnixTimestamp64Milli(a.opened_at)) / 1000 AS tta,
                   (toUnixTimestamp64Milli(assumeNotNull(done_at))
                    - toUnixTimestamp64Milli(a.opened_at)) / 1000 AS ttr
            FROM
            (
                SELECT alert_id, kind, status, opened_at, resolved_at FROM alerts FINAL
                WHERE opened_at >= anchor - toIntervalMinute({{minutes:UInt32}})
            ) AS a
            LEFT JOIN ({ACTIONS_BY_ALERT}) AS k ON k.alert_id = a.alert_id
            SETTINGS join_use_nulls = 1
        )
        GROUP BY kind
        ORDER BY alerts DESC, kind
        """,
        {"minutes": minutes, "overdue": overdue_seconds},
        optional=True,
        columns=SLA_COLUMNS,
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
