"""Sales pulse: scans, orders, GMV and pickups per store and minute.

Everything here reads ``store_minute_v`` (closed one-minute windows), never
the raw events, so a refresh costs the same at 10M events as at 10k. Kept
apart from the pages so the queries can be tested and benchmarked against a
real store, and so no page builds SQL from user input (every value is a
bound parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame

LAST_MINUTES = (
    "window_start >= (SELECT max(window_start) FROM store_minute)"
    " - toIntervalMinute({minutes:UInt32} - 1)"
)
"""The last ``minutes`` closed minutes, counted back from the newest one (not
from the wall clock, so a replay of past days shows its own last hour)."""


@dataclass(frozen=True)
class Pulse:
    """Headline figures over a time range of closed minutes."""

    scans: int
    add_to_cart: int
    orders: int
    paid_orders: int
    gmv_yuan: float
    pickup_arrivals: int
    pickups_served: int
    minutes: int

    @property
    def conversion(self) -> float | None:
        """Paid orders per scan: how well in-store interest turns into sales."""
        return self.paid_orders / self.scans if self.scans else None


def sales_pulse(client: Client, minutes: int) -> Pulse:
    row = client.query(
        f"""
        SELECT sum(scans), sum(add_to_cart), sum(orders), sum(paid_orders), sum(gmv_fen),
               sum(pickup_arrivals), sum(pickups_served), uniqExact(window_start)
        FROM store_minute_v
        WHERE {LAST_MINUTES}
        """,
        parameters={"minutes": minutes},
    ).result_rows[0]  # sums without GROUP BY: always one row
    values = [int(v or 0) for v in row]
    return Pulse(
        scans=values[0],
        add_to_cart=values[1],
        orders=values[2],
        paid_orders=values[3],
        gmv_yuan=values[4] / 100,
        pickup_arrivals=values[5],
        pickups_served=values[6],
        minutes=values[7],
    )


def minute_trend(client: Client, minutes: int) -> pd.DataFrame:
    """Per-minute totals over all stores for the last ``minutes`` closed minutes."""
    return client.query_df(
        f"""
        SELECT window_start AS minute, sum(scans) AS scans, sum(orders) AS orders,
               sum(paid_orders) AS paid_orders, sum(gmv_fen) / 100 AS gmv_yuan
        FROM store_minute_v
        WHERE {LAST_MINUTES}
        GROUP BY minute ORDER BY minute
        """,
        parameters={"minutes": minutes},
    )


def top_stores(client: Client, minutes: int, limit: int = 10) -> pd.DataFrame:
    """The stores with the highest GMV in the range: where the day is being made."""
    return client.query_df(
        f"""
        SELECT store_id, sum(gmv_fen) / 100 AS gmv_yuan, sum(paid_orders) AS paid_orders,
               sum(scans) AS scans
        FROM store_minute_v
        WHERE {LAST_MINUTES}
        GROUP BY store_id ORDER BY gmv_yuan DESC LIMIT {{limit:UInt32}}
        """,
        parameters={"minutes": minutes, "limit": limit},
    )


def store_sales(client: Client, minutes: int) -> pd.DataFrame:
    """Per store over the range: the figures the region and store views add up."""
    return frame(
        client,
        f"""
        SELECT store_id, sum(gmv_fen) / 100 AS gmv_yuan, sum(orders) AS orders,
               sum(paid_orders) AS paid_orders, sum(scans) AS scans,
               sum(pickup_arrivals) AS pickup_arrivals, sum(pickups_served) AS pickups_served,
               sum(coupons_issued) AS coupons_issued
        FROM store_minute_v
        WHERE {LAST_MINUTES}
        GROUP BY store_id ORDER BY store_id
        """,
        {"minutes": minutes},
        columns=["store_id", "gmv_yuan", "orders", "paid_orders", "scans",
                 "pickup_arrivals", "pickups_served", "coupons_issued"],
    )


def store_minute_trend(client: Client, minutes: int, store_id: str) -> pd.DataFrame:
    """One store's minutes: what a store manager looks at after the drill-down."""
    return frame(
        client,
        f"""
        SELECT window_start AS minute, scans, paid_orders, gmv_fen / 100 AS gmv_yuan,
               pickup_arrivals, pickups_served
        FROM store_minute_v
        WHERE store_id = {{store:String}} AND {LAST_MINUTES}
        ORDER BY minute
        """,
        {"minutes": minutes, "store": store_id},
        columns=["minute", "scans", "paid_orders", "gmv_yuan", "pickup_arrivals",
                 "pickups_served"],
    )
