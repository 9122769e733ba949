"""The pipeline's own health, per stream, from the store.

What the store knows: malformed events the workers dead-lettered
(``dead_letters``) and rows the sink quarantined (``quarantine``), by reason
with the newest of each as a sample; events that came after their window
closed (``late_events``: one row per aggregate an event was late for, so
counted by Kafka position) and re-sent copies the workers dropped
(``duplicate_events``); how fresh each stream's newest stored event is
(``max(ts)`` of its raw table, answered from the parts' min/max index, not a
scan); and how long after its event an alert was raised (``raised_at`` is
the wall clock when the rule fired, ``opened_at``/``resolved_at`` the event
time that made it fire).

The live side (events per second, consumer lag) comes from the worker and
Kafka: ``ctower.dashboard.live_sources``.
"""

from __future__ import annotations

import pandas as pd
from clickhouse_connect.driver.client import Client

from ctower.dashboard.queries.sql import frame
from ctower.settings import STREAMS

BAD_INPUT_COLUMNS = ["source", "source_topic", "reason", "events", "last_at", "sample_detail",
                     "sample_raw", "sample_position"]
COUNT_COLUMNS = ["source_topic", "events", "events_1h"]
FRESHNESS_COLUMNS = ["stream", "newest_ts"]
LATENCY_COLUMNS = ["kind", "alerts", "p50_s", "p95_s", "max_s"]

FAMILY_STREAMS: dict[str, tuple[str, ...]] = {
    "pickup_congestion": ("pickup",),
    "stock_out": ("scan", "order", "inventory"),
    "restock": ("scan", "order", "inventory"),
    "demand_spike": ("scan",),
    "shipment_stale": ("logistics",),
    "shipment_failed": ("logistics",),
    "eta_passed": ("logistics",),
    "carrier_on_time": ("logistics",),
    "complaint_burst": ("service",),
    "complaint_sla": ("service",),
}
"""Which streams feed the rule behind each alert kind."""


def bad_input(client: Client) -> pd.DataFrame:
    """Dead letters (workers) and quarantined rows (sink) by topic and reason,
    with the newest of each as a sample (its detail and first bytes)."""
    return frame(
        client,
        """
        SELECT * FROM
        (
        SELECT 'worker' AS source, toString(source_topic) AS source_topic,
               toString(reason) AS reason, count() AS events, max(received_at) AS last_at,
               argMax(detail, received_at) AS sample_detail,
               argMax(toValidUTF8(substring(raw, 1, 160)), received_at) AS sample_raw,
               argMax(concat(toString(partition), '@', toString(offset),
                             if(index >= 0, concat('[', toString(index), ']'), '')),
                      received_at) AS sample_position
        FROM dead_letters FINAL
        GROUP BY source_topic, reason
        UNION ALL
        SELECT 'sink', toString(source_topic), toString(reason), count(), max(received_at),
               argMax(detail, received_at),
               argMax(toValidUTF8(substring(raw, 1, 160)), received_at),
               argMax(concat(toString(partition), '@', toString(offset),
                             if(index >= 0, concat('[', toString(index), ']'), '')),
                      received_at)
        FROM quarantine FINAL
        GROUP BY source_topic, reason
        )
        ORDER BY events DESC, source_topic, reason
        """,
        optional=True,
        columns=BAD_INPUT_COLUMNS,
    )


def late_events(client: Client) -> pd.DataFrame:
    """Per topic: events that came after their window closed (all, last hour)."""
    return frame(
        client,
        """
        SELECT toString(source_topic) AS source_topic,
               toInt64(uniqExact(partition, offset, index)) AS events,
               toInt64(uniqExactIf((partition, offset, index),
                                   ingested_at >= now64(3) - INTERVAL 1 HOUR)) AS events_1h
        FROM late_events
        GROUP BY source_topic
        """,
        optional=True,
        columns=COUNT_COLUMNS,
    )


def duplicate_events(client: Client) -> pd.DataFrame:
    """Per topic: re-sent copies dropped by the workers (all, last hour)."""
    return frame(
        client,
        """
        SELECT toString(source_topic) AS source_topic,
               toInt64(uniqExact(partition, offset, index)) AS events,
               toInt64(uniqExactIf((partition, offset, index),
                                   ingested_at >= now64(3) - INTERVAL 1 HOUR)) AS events_1h
        FROM duplicate_events
        GROUP BY source_topic
        """,
        optional=True,
        columns=COUNT_COLUMNS,
    )


def freshness(client: Client) -> pd.DataFrame:
    """Per stream: the newest event time stored (the raw tables' min/max index)."""
    sql = "\nUNION ALL\n".join(
        f"SELECT '{stream}' AS stream, max(ts) AS newest_ts FROM {stream}_events"
        for stream in STREAMS
    )
    return frame(client, sql, optional=True, columns=FRESHNESS_COLUMNS)


def alert_latency(client: Client, minutes: int = 60) -> pd.DataFrame:
    """Per alert kind over the last ``minutes`` of the wall clock: how long
    after the event time that made it fire (or clear) each alert was raised."""
    return frame(
        client,
        """
        SELECT kind, count() AS alerts, quantile(0.5)(lag_ms) / 1000 AS p50_s,
               quantile(0.95)(lag_ms) / 1000 AS p95_s, max(lag_ms) / 1000 AS max_s
        FROM
        (
            SELECT toString(kind) AS kind,
                   toUnixTimestamp64Milli(raised_at) - toUnixTimestamp64Milli(
                       if(status = 'resolved' AND resolved_at IS NOT NULL,
                          assumeNotNull(resolved_at), opened_at)) AS lag_ms
            FROM alerts FINAL
            WHERE raised_at >= now64(3) - toIntervalMinute({minutes:UInt32})
        )
        GROUP BY kind
        ORDER BY kind
        """,
        {"minutes": minutes},
        optional=True,
        columns=LATENCY_COLUMNS,
    )
