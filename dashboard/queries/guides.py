"""Shopping guides: per guide today's deliveries (on time, late, failed), per store
the guide deliveries open and the orders waiting for a guide.

"Today" and "now" are the newest logistics event's (event time), as the rules
judge: a replay of last week shows last week's day. The day is the local one
(Asia/Shanghai), a guide's working day. Caps and shifts are master data, joined
by the page.
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame, row

DAY_COLUMNS = ["guide_id", "store_id", "delivered", "on_time", "late", "failed"]
STORE_COLUMNS = ["store_id", "open", "waiting", "waiting_over", "oldest_wait_min", "guides_out"]
OPEN_COLUMNS = ["guide_id", "store_id", "open"]

_ANCHOR = "WITH (SELECT max(last_ts) FROM guide_deliveries) AS anchor "
_FORGET = "created_at >= anchor - toIntervalDay(1)"
"""An open delivery without news for a day is lost, as the rules forget it."""


def anchor(client: Client) -> int | None:
    """Epoch ms of the newest guide-delivery event, or None when there is none."""
    found = row(
        client,
        "SELECT toUnixTimestamp64Milli(max(last_ts)), count() FROM guide_deliveries",
        optional=True,
    )
    return int(found[0]) if found and found[1] else None


def guide_days(client: Client) -> pd.DataFrame:
    """Each guide's deliveries of the anchor's local day."""
    return frame(
        client,
        _ANCHOR + """
        SELECT guide_id, store_id, delivered, on_time, late, failed
        FROM guide_day_v
        WHERE day = toDate(anchor, 'Asia/Shanghai')
        ORDER BY store_id, guide_id
        """,
        optional=True,
        columns=DAY_COLUMNS,
    )


def open_by_store(client: Client, wait_minutes: float) -> pd.DataFrame:
    """Per store: guide deliveries open, how many wait for a guide (and longer than
    ``wait_minutes``), the longest wait."""
    return frame(
        client,
        _ANCHOR + f"""
        SELECT store_id, count() AS open,
               countIf(picked_up_at IS NULL) AS waiting,
               countIf(picked_up_at IS NULL AND toUnixTimestamp64Milli(anchor)
                       - toUnixTimestamp64Milli(created_at) > {{wait:Float64}} * 60000)
                   AS waiting_over,
               round(maxIf(toUnixTimestamp64Milli(anchor) - toUnixTimestamp64Milli(created_at),
                           picked_up_at IS NULL) / 60000, 1) AS oldest_wait_min,
               uniqExactIf(guide_id, guide_id IS NOT NULL) AS guides_out
        FROM guide_deliveries_v
        WHERE finished_at IS NULL AND outcome = '' AND {_FORGET}
        GROUP BY store_id
        ORDER BY waiting DESC, open DESC, store_id
        """,
        {"wait": float(wait_minutes)},
        optional=True,
        columns=STORE_COLUMNS,
    )


def open_by_guide(client: Client) -> pd.DataFrame:
    """Per guide: the deliveries the guide is out with now."""
    return frame(
        client,
        _ANCHOR + f"""
        SELECT guide_id, any(store_id) AS store_id, count() AS open
        FROM guide_deliveries_v
        WHERE finished_at IS NULL AND outcome = '' AND guide_id IS NOT NULL AND {_FORGET}
        GROUP BY guide_id
        """,
        optional=True,
        columns=OPEN_COLUMNS,
    )
