"""Coupons: issued against each cap, and the campaigns held back, with why.

- Caps in force come from ``coupon_policy_current_v`` (the latest policy per
  campaign and scope; ``store_id`` '' is the whole campaign). "Issued" is
  counted over the cap's own window, the last ``window_seconds`` of closed
  minutes in ``campaign_store_minute`` (event time, so a replay shows its own
  past), over the whole campaign or the one store the cap is for.
- Throttled and paused come from ``coupon_state_v``: the latest decision of
  the rules per campaign and store, with the reason and its evidence.
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame

CAP_COLUMNS = ["campaign_id", "store_id", "cap_per_window", "window_seconds", "per_member_limit",
               "paused", "set_by", "set_at", "issued"]


def caps_in_force(client: Client) -> pd.DataFrame:
    """Every policy in force with what was issued in its window.

    The minutes are summed first (per campaign, store and minute, over the
    longest window in force only), then matched to the policies of their
    campaign: few policies, a bounded number of minutes.
    """
    return frame(
        client,
        """
        WITH (SELECT max(window_end) FROM campaign_store_minute) AS anchor
        SELECT p.campaign_id AS campaign_id, p.store_id AS store_id,
               any(p.cap_per_window) AS cap_per_window, any(p.window_seconds) AS window_seconds,
               any(p.per_member_limit) AS per_member_limit, any(p.paused) AS paused,
               any(p.set_by) AS set_by, any(p.set_at) AS set_at,
               sumIf(u.issued, (p.store_id = '' OR u.store_id = p.store_id)
                     AND u.window_start >= anchor - toIntervalSecond(p.window_seconds)) AS issued
        FROM coupon_policy_current_v AS p
        LEFT JOIN
        (
            SELECT campaign_id, store_id, window_start, issued
            FROM campaign_store_minute_v
            WHERE window_start >= anchor - toIntervalSecond(
                (SELECT max(window_seconds) FROM coupon_policy_current_v))
        ) AS u ON u.campaign_id = p.campaign_id
        GROUP BY p.campaign_id, p.store_id
        ORDER BY campaign_id, store_id
        """,
        columns=CAP_COLUMNS,
    )


def issued_by_store(client: Client, minutes: int) -> pd.DataFrame:
    """Per campaign and store over the range: issued, claimed, redeemed, and
    the state the rules put it in (open when they never decided)."""
    return frame(
        client,
        """
        SELECT u.campaign_id AS campaign_id, u.store_id AS store_id, u.issued AS issued,
               u.claimed AS claimed, u.redeemed AS redeemed,
               if(s.state = '', 'open', s.state) AS state, s.reason AS reason
        FROM
        (
            SELECT campaign_id, store_id, sum(issued) AS issued, sum(claimed) AS claimed,
                   sum(redeemed) AS redeemed
            FROM campaign_store_minute_v
            WHERE window_start >= (SELECT max(window_start) FROM campaign_store_minute)
                                  - toIntervalMinute({minutes:UInt32} - 1)
            GROUP BY campaign_id, store_id
        ) AS u
        LEFT JOIN
        (
            SELECT toString(campaign_id) AS campaign_id, toString(store_id) AS store_id,
                   toString(state) AS state, reason
            FROM coupon_state_v
        ) AS s ON s.campaign_id = u.campaign_id AND s.store_id = u.store_id
        ORDER BY issued DESC, campaign_id, store_id
        """,
        {"minutes": minutes},
        columns=["campaign_id", "store_id", "issued", "claimed", "redeemed", "state", "reason"],
    )


def held_back(client: Client) -> pd.DataFrame:
    """Campaign x store pairs the rules throttled or paused, newest first."""
    return frame(
        client,
        """
        SELECT campaign_id, store_id, state, reason, evidence, decided_at
        FROM coupon_state_v
        WHERE state != 'open'
        ORDER BY decided_at DESC, campaign_id, store_id
        LIMIT 500
        """,
        columns=["campaign_id", "store_id", "state", "reason", "evidence", "decided_at"],
    )


def campaign_ids(client: Client) -> list[str]:
    """Campaigns seen in the last day or with a policy: the choices of the controls."""
    found = frame(
        client,
        """
        SELECT DISTINCT toString(campaign_id) AS campaign_id FROM
        (
            SELECT campaign_id FROM campaign_store_minute
            WHERE window_start >= (SELECT max(window_start) FROM campaign_store_minute)
                                  - toIntervalDay(1)
            UNION ALL
            SELECT campaign_id FROM coupon_policies
        )
        ORDER BY campaign_id
        """,
        columns=["campaign_id"],
    )
    return [str(c) for c in found["campaign_id"]]


def campaign_minutes(client: Client, campaign_id: str, store_id: str, minutes: int
                     ) -> pd.DataFrame:
    """One campaign's coupons per closed minute over the range (one store, or
    all with ``store_id`` ''): issued (what counts against a cap), claimed,
    redeemed."""
    return frame(
        client,
        """
        SELECT window_start AS minute, sum(issued) AS issued, sum(claimed) AS claimed,
               sum(redeemed) AS redeemed
        FROM campaign_store_minute_v
        WHERE campaign_id = {campaign:String}
          AND ({store:String} = '' OR store_id = {store:String})
          AND window_start >= (SELECT max(window_start) FROM campaign_store_minute)
                              - toIntervalMinute({minutes:UInt32} - 1)
        GROUP BY minute
        ORDER BY minute
        """,
        {"campaign": campaign_id, "store": store_id, "minutes": minutes},
        columns=["minute", "issued", "claimed", "redeemed"],
    )


def policy_history(client: Client, campaign_id: str, store_id: str, limit: int = 50
                   ) -> pd.DataFrame:
    """The policies set for one campaign and scope, newest last."""
    return frame(
        client,
        """
        SELECT * FROM
        (
            SELECT cap_per_window, window_seconds, per_member_limit, paused, set_by, set_at
            FROM coupon_policies FINAL
            WHERE campaign_id = {campaign:String} AND store_id = {store:String}
            ORDER BY set_at DESC
            LIMIT {limit:UInt32}
        )
        ORDER BY set_at
        """,
        {"campaign": campaign_id, "store": store_id, "limit": limit},
        columns=["cap_per_window", "window_seconds", "per_member_limit", "paused", "set_by",
                 "set_at"],
    )
