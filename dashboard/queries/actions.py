"""Action orders: the stock rules' transfer and pre-pack orders not yet closed.

``action_orders`` (0014) holds each order's furthest state, read with FINAL;
open orders are few (one per shortage at most), so the query stays cheap.
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame

ORDER_COLUMNS = ["order_id", "kind", "status", "source", "destination", "sku", "qty", "due_at",
                 "created_at", "ts", "region", "by", "late"]


def open_orders(client: Client) -> pd.DataFrame:
    """Open orders (proposed, approved, dispatched), the most overdue first."""
    return frame(
        client,
        """
        SELECT order_id, kind, status, source, destination, sku, qty, due_at, created_at, ts,
               region, by, due_at < now64(3) AS late
        FROM action_orders FINAL
        WHERE status IN ('proposed', 'approved', 'dispatched')
        ORDER BY due_at, order_id
        LIMIT 500
        """,
        optional=True, columns=ORDER_COLUMNS,
    )
