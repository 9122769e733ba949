"""Shadow rules beside the live ones: what the candidate raised and what the
rules in force did over the same time.

The window is anchored at the newest opening of either table (event time, as
``alert_sla``), so a replay of last week compares last week. Both tables are
optional: a store migrated before 0016 or a pipeline without shadow rules
gives empty frames and the page says there is no shadow.
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame

COMPARE_COLUMNS = ["kind", "live", "shadow", "shadow_only", "live_only"]
SHADOW_FEED_COLUMNS = ["alert_id", "kind", "severity", "status", "message", "evidence",
                       "opened_at", "resolved_at", "region", "store_id", "sku", "carrier",
                       "also_live"]
SIGNAL_COLUMNS = ["campaign_id", "store_id", "cause", "sku", "active_now", "latest", "why"]

_WINDOW = """
    WITH greatest(
        (SELECT max(opened_at) FROM alerts), (SELECT max(opened_at) FROM shadow_alerts)
    ) - toIntervalMinute({minutes:UInt32}) AS since
"""


def shadow_compare(client: Client, minutes: int) -> pd.DataFrame:
    """Per kind: alerts opened by the rules in force and by the candidate, and how
    many keys only one of them alerted on."""
    return frame(
        client,
        _WINDOW + """
        SELECT kind,
               countIf(side = 'live') AS live,
               countIf(side = 'shadow') AS shadow,
               uniqExactIf(key, side = 'shadow' AND key NOT IN live_keys) AS shadow_only,
               uniqExactIf(key, side = 'live' AND key NOT IN shadow_keys) AS live_only
        FROM
        (
            SELECT 'live' AS side, kind, key FROM alerts FINAL WHERE opened_at >= since
            UNION ALL
            SELECT 'shadow' AS side, kind, key FROM shadow_alerts FINAL WHERE opened_at >= since
        )
        GROUP BY kind
        ORDER BY shadow + live DESC, kind
        """.replace("live_keys", "(SELECT key FROM alerts FINAL WHERE opened_at >= since)")
        .replace("shadow_keys", "(SELECT key FROM shadow_alerts FINAL WHERE opened_at >= since)"),
        {"minutes": int(minutes)},
        optional=True,
        columns=COMPARE_COLUMNS,
    )


def shadow_feed(client: Client, minutes: int, limit: int = 100) -> pd.DataFrame:
    """The candidate's newest alerts, each with whether the rules in force alerted
    on the same key in the window too."""
    return frame(
        client,
        _WINDOW + """
        SELECT alert_id, kind, severity, status, message, evidence, opened_at, resolved_at,
               region, store_id, sku, carrier,
               key IN (SELECT key FROM alerts FINAL WHERE opened_at >= since) AS also_live
        FROM shadow_alerts FINAL
        WHERE opened_at >= since
        ORDER BY opened_at DESC
        LIMIT {limit:UInt32}
        """,
        {"minutes": int(minutes), "limit": int(limit)},
        optional=True,
        columns=SHADOW_FEED_COLUMNS,
    )


def shadow_signals(client: Client, limit: int = 100) -> pd.DataFrame:
    """The candidate's coupon decisions now: the latest signal per campaign, store,
    cause and SKU, those in force first."""
    return frame(
        client,
        """
        SELECT campaign_id, store_id, cause, sku,
               argMax(active, ts) AS active_now, max(ts) AS latest, argMax(evidence, ts) AS why
        FROM shadow_coupon_signals
        GROUP BY campaign_id, store_id, cause, sku
        ORDER BY active_now DESC, latest DESC
        LIMIT {limit:UInt32}
        """,
        {"limit": int(limit)},
        optional=True,
        columns=SIGNAL_COLUMNS,
    )
