"""Stock risk: where cover is running out, from the rules' live stock levels.

``stock_levels`` holds the latest on-hand, sales velocity, cover and
suggested transfer source per (location, sku), as the restock rule computed
them (read with FINAL: one row per key). The dashboard shows the rule's own
figures rather than recomputing them from raw events: one truth, and a
query that stays cheap at any volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame, row

RISK_COLUMNS = ["location_id", "sku", "region", "on_hand", "velocity_per_h", "cover_h",
                "transfer_from", "ts"]


@dataclass(frozen=True)
class StockSummary:
    """How many (location, sku) pairs are tracked, out of stock, short of cover."""

    tracked: int
    out_of_stock: int
    short: int


def stock_summary(client: Client, cover_hours: float) -> StockSummary | None:
    """Counts for the headline; None when the rules have published no levels."""
    found = row(
        client,
        """
        SELECT count(), countIf(on_hand <= 0),
               countIf(on_hand > 0 AND cover_h IS NOT NULL AND cover_h < {cover:Float64})
        FROM stock_levels FINAL
        """,
        {"cover": cover_hours},
        optional=True,
    )
    if found is None or not found[0]:
        return None
    return StockSummary(int(found[0]), int(found[1]), int(found[2]))


def stock_risk(client: Client, cover_hours: float, limit: int = 200) -> pd.DataFrame:
    """Pairs out of stock or under ``cover_hours`` of cover: stock-outs first,
    then the shortest cover, fastest sellers first among equals."""
    return frame(
        client,
        """
        SELECT location_id, sku, region, on_hand, velocity_per_h, cover_h, transfer_from, ts
        FROM stock_levels FINAL
        WHERE on_hand <= 0 OR (cover_h IS NOT NULL AND cover_h < {cover:Float64})
        ORDER BY on_hand > 0, ifNull(cover_h, 0), velocity_per_h DESC, location_id, sku
        LIMIT {limit:UInt32}
        """,
        {"cover": cover_hours, "limit": limit},
        optional=True,
        columns=RISK_COLUMNS,
    )
