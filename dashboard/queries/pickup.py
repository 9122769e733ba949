"""Pickup counters: who is waiting where, from the rules' live levels.

``pickup_levels`` is written by the rules (one row per store each time they
evaluate it: waiting, capacity, pressure, p90 wait). It is history, so the
queries look back from its newest row only: the latest level per store in
the last hour, and per-minute peaks over the selected range. The table may
not exist in a store whose rules are not deployed; the pages then show an
empty state.
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame

NOW_COLUMNS = ["store_id", "region", "waiting", "capacity", "pressure", "p90_wait_s",
               "arrivals_15m", "served_15m", "level_at"]


def pickup_now(client: Client) -> pd.DataFrame:
    """The latest level of every store reported in the last hour, most pressed first.

    The Nullable p90 travels inside a tuple: ``argMax`` alone skips NULLs and
    would show an old wait for a store whose queue has since emptied.
    """
    return frame(
        client,
        """
        SELECT store_id, argMax(region, ts) AS region, argMax(waiting, ts) AS waiting,
               argMax(capacity, ts) AS capacity, argMax(pressure, ts) AS pressure,
               argMax(tuple(p90_wait_s), ts).1 AS p90_wait_s,
               argMax(arrivals_15m, ts) AS arrivals_15m, argMax(served_15m, ts) AS served_15m,
               max(ts) AS level_at
        FROM pickup_levels
        WHERE ts >= (SELECT max(ts) FROM pickup_levels) - toIntervalHour(1)
        GROUP BY store_id
        ORDER BY pressure DESC, store_id
        """,
        optional=True,
        columns=NOW_COLUMNS,
    )


def pickup_trend(client: Client, minutes: int, store_ids: list[str]) -> pd.DataFrame:
    """Per minute, the most customers waiting at each of ``store_ids``."""
    return frame(
        client,
        """
        SELECT toStartOfMinute(ts) AS minute, store_id, max(waiting) AS waiting,
               max(pressure) AS pressure
        FROM pickup_levels
        WHERE store_id IN {stores:Array(String)}
          AND ts >= (SELECT max(ts) FROM pickup_levels) - toIntervalMinute({minutes:UInt32})
        GROUP BY minute, store_id
        ORDER BY minute, store_id
        """,
        {"minutes": minutes, "stores": store_ids},
        optional=True,
        columns=["minute", "store_id", "waiting", "pressure"],
    )
