"""Customer service: complaints per SKU and per store per hour, and each open
complaint's SLA state.

Times are anchored at the newest service event (event time), as the rules
judge: a replay of last week shows last week's SLA states, not "all breached".
The SLA itself (hours, warning) is the rules' (``[service]`` of the rules
file), passed in by the page: it can change while the pipeline runs.
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame

OPEN_COLUMNS = ["ticket_id", "channel", "topic", "store_id", "sku", "order_id", "opened_at",
                "deadline", "hours_left", "sla_state"]
SKU_COLUMNS = ["sku", "complaints", "stores", "complaints_last_hour"]
STORE_COLUMNS = ["store_id", "complaints", "complaints_closed", "inquiries",
                 "complaints_last_hour"]

_ANCHOR = "WITH (SELECT max(ts) FROM service_events) AS anchor "


def open_complaints(client: Client, sla_hours: float, warn_hours: float,
                    limit: int = 200) -> pd.DataFrame:
    """Open complaints, the closest to their deadline first, with their SLA state:
    ``ok``, ``warning`` (within ``warn_hours`` of the deadline) or ``breached``."""
    return frame(
        client,
        _ANCHOR + """
        SELECT ticket_id, channel, topic, store_id, sku, order_id, opened_at,
               opened_at + toIntervalMillisecond(toInt64({sla:Float64} * 3600000)) AS deadline,
               round((toUnixTimestamp64Milli(deadline) - toUnixTimestamp64Milli(anchor))
                     / 3600000, 1) AS hours_left,
               multiIf(hours_left <= 0, 'breached', hours_left <= {warn:Float64}, 'warning',
                       'ok') AS sla_state
        FROM complaint_tickets_v
        WHERE closed_at IS NULL AND opened_at > toDateTime64(0, 3, 'UTC')
        ORDER BY hours_left, opened_at
        LIMIT {limit:UInt32}
        """,
        {"sla": float(sla_hours), "warn": float(warn_hours), "limit": int(limit)},
        optional=True,
        columns=OPEN_COLUMNS,
    )


def sla_summary(client: Client, sla_hours: float) -> pd.DataFrame:
    """Complaints answered in the window, and how many of them within the SLA."""
    return frame(
        client,
        """
        SELECT count() AS answered,
               countIf(closed_at <= opened_at
                       + toIntervalMillisecond(toInt64({sla:Float64} * 3600000))) AS within_sla
        FROM complaint_tickets_v
        WHERE closed_at IS NOT NULL
        """,
        {"sla": float(sla_hours)},
        optional=True,
        columns=["answered", "within_sla"],
    )


def complaints_by_sku(client: Client, hours: int, limit: int = 15) -> pd.DataFrame:
    """SKUs with the most complaints in the last ``hours`` (and in the last hour).

    Stores are counted over the whole period from the minutes, not taken as the
    largest hourly count: a SKU complained about at one store at 09:59 and at
    another at 10:00 was complained about at two stores.
    """
    return frame(
        client,
        _ANCHOR + """
        SELECT sku, sum(c) AS complaints, uniqExactIf(store_id, c > 0) AS stores,
               sumIf(c, window_start >= toStartOfHour(anchor)) AS complaints_last_hour
        FROM (SELECT store_id, sku, window_start, complaints AS c FROM service_minute_v
              WHERE sku != '')
        WHERE window_start >= toStartOfHour(anchor) - toIntervalHour({hours:UInt32})
        GROUP BY sku
        HAVING complaints > 0
        ORDER BY complaints_last_hour DESC, complaints DESC, sku
        LIMIT {limit:UInt32}
        """,
        {"hours": int(hours), "limit": int(limit)},
        optional=True,
        columns=SKU_COLUMNS,
    )


def complaints_by_store(client: Client, hours: int, limit: int = 15) -> pd.DataFrame:
    """Stores with the most complaints in the last ``hours`` (and in the last hour)."""
    return frame(
        client,
        _ANCHOR + """
        SELECT store_id, sum(c) AS complaints, sum(cc) AS complaints_closed,
               sum(i) AS inquiries,
               sumIf(c, hour >= toStartOfHour(anchor)) AS complaints_last_hour
        FROM (SELECT store_id, hour, complaints AS c, complaints_closed AS cc, inquiries AS i
              FROM complaints_store_hour_v)
        WHERE hour >= toStartOfHour(anchor) - toIntervalHour({hours:UInt32})
        GROUP BY store_id
        HAVING complaints + inquiries > 0
        ORDER BY complaints_last_hour DESC, complaints DESC, store_id
        LIMIT {limit:UInt32}
        """,
        {"hours": int(hours), "limit": int(limit)},
        optional=True,
        columns=STORE_COLUMNS,
    )
