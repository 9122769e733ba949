"""Tables the dashboard reads that other parts of the system own, as agreed.

The rules publish ``stock_levels`` and ``pickup_levels`` (``0005``), the
WeChat Work outbox ``alert_deliveries`` and ``route_health_v`` (``0006``).
A store whose schema predates them gets these stand-ins (same columns, all
``IF NOT EXISTS``, so the owners' own DDL wins wherever it ran first): the
benchmark and the tests need them to exist before the owners' migrations do.
Never applied by the sink: a production store gets the owners' files.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

PEER_DDL: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS stock_levels
    (
        location_id    LowCardinality(String),
        sku            String,
        region         LowCardinality(String),
        on_hand        Int64,
        velocity_per_h Float64,
        cover_h        Nullable(Float64),
        transfer_from  Nullable(String),
        ts             DateTime64(3, 'UTC')
    )
    ENGINE = ReplacingMergeTree(ts)
    ORDER BY (location_id, sku)
    """,
    """
    CREATE TABLE IF NOT EXISTS pickup_levels
    (
        store_id     LowCardinality(String),
        region       LowCardinality(String),
        waiting      Int64,
        capacity     Int64,
        pressure     Float64,
        p90_wait_s   Nullable(Float64),
        arrivals_15m Int64,
        served_15m   Int64,
        ts           DateTime64(3, 'UTC')
    )
    ENGINE = MergeTree
    ORDER BY (store_id, ts)
    """,
    """
    CREATE TABLE IF NOT EXISTS alert_deliveries
    (
        delivery_id  String,
        alert_id     String,
        alert_key    String,
        kind         LowCardinality(String),
        severity     LowCardinality(String),
        route        LowCardinality(String),
        robot        String,
        attempt      Int32,
        result       LowCardinality(String),
        errcode      Nullable(Int64),
        http_status  Nullable(Int32),
        latency_ms   Nullable(Float64),
        message_kind LowCardinality(String),
        ts           DateTime64(3, 'UTC')
    )
    ENGINE = ReplacingMergeTree
    ORDER BY (alert_id, delivery_id, attempt)
    """,
    """
    CREATE VIEW IF NOT EXISTS route_health_v AS
    SELECT
        route,
        argMax(result, ts)                                     AS last_result,
        argMax(errcode, ts)                                    AS last_errcode,
        max(ts)                                                AS last_attempt_at,
        argMax(result, ts) = 'broken'                          AS broken,
        countIf(result = 'delivered' AND ts >= now64(3) - toIntervalHour(1)) AS delivered_1h,
        countIf(result != 'delivered' AND ts >= now64(3) - toIntervalHour(1)) AS failed_1h
    FROM alert_deliveries
    GROUP BY route
    """,
)


def ensure_peer_tables(client: Client) -> None:
    """Create whichever of the agreed tables do not exist yet."""
    for statement in PEER_DDL:
        client.command(statement)
