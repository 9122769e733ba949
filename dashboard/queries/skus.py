"""Hot SKUs: scans and paid orders per SKU and region, from ``sku_store_minute``.

``sku_store_minute`` (migration 0012) holds, per minute, store and SKU, the
identities of the scans and of the paid orders that contained the SKU (uniq
states: an event stored twice counts once). Regions are not in the events:
the page passes the store -> region map of the master data, applied in SQL
with ``transform`` so only one row per (region, SKU) comes back.

The range is the last ``minutes`` minutes back from the newest minute in the
table (event time: a replay shows its own last hour).
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame

SKU_COLUMNS = ["region", "sku", "scans", "paid_orders", "stores"]


def sku_by_region(client: Client, minutes: int, stores: list[str], regions: list[str],
                  unknown: str = "") -> pd.DataFrame:
    """Per region and SKU over the range: scans, paid orders with it, stores scanning it."""
    return frame(
        client,
        """
        WITH (SELECT max(window_start) FROM sku_store_minute) AS anchor
        SELECT transform(toString(store_id), {stores:Array(String)}, {regions:Array(String)},
                         {unknown:String}) AS region,
               sku, toInt64(uniqMerge(scans)) AS scans,
               toInt64(uniqMerge(paid_orders)) AS paid_orders,
               toInt64(uniqExact(store_id)) AS stores
        FROM sku_store_minute
        WHERE window_start > anchor - toIntervalMinute({minutes:UInt32})
        GROUP BY region, sku
        """,
        {"minutes": minutes, "stores": stores, "regions": regions, "unknown": unknown},
        optional=True,
        columns=SKU_COLUMNS,
    )


def sku_minutes(client: Client, minutes: int, sku: str) -> pd.DataFrame:
    """One SKU's scans and paid orders per minute over the range, all stores."""
    return frame(
        client,
        """
        WITH (SELECT max(window_start) FROM sku_store_minute) AS anchor
        SELECT window_start AS minute, toInt64(uniqMerge(scans)) AS scans,
               toInt64(uniqMerge(paid_orders)) AS paid_orders
        FROM sku_store_minute
        WHERE window_start > anchor - toIntervalMinute({minutes:UInt32}) AND sku = {sku:String}
        GROUP BY minute
        ORDER BY minute
        """,
        {"minutes": minutes, "sku": sku},
        optional=True,
        columns=["minute", "scans", "paid_orders"],
    )
