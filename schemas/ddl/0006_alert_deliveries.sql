-- Issue 4: every attempt to deliver an alert to a WeChat Work group robot
-- (ct.alert-deliveries, written by `ctower alerts deliver`), and the health
-- of each route as the dashboard shows it.

-- One row per attempt. (route, delivery_id, attempt) is the attempt's
-- natural key (delivery_id names alert, status, route and robot), so a
-- record re-sent after a crash collapses into one row (read with FINAL).
-- robot is the robot's name and masked key, never the webhook URL.
CREATE TABLE IF NOT EXISTS alert_deliveries
(
    delivery_id  String,
    alert_id     String,
    alert_key    String,
    kind         LowCardinality(String),
    severity     LowCardinality(String),
    route        LowCardinality(String),
    robot        String,
    attempt      UInt32,
    result       LowCardinality(String),
    errcode      Nullable(Int64),
    http_status  Nullable(Int32),
    latency_ms   Float64,
    message_kind LowCardinality(String),
    ts           DateTime64(3, 'UTC'),
    detail       String,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (route, delivery_id, attempt);

-- The latest state of each route. last_* come from the latest real attempt
-- ('rerouted' rows are not sends: they record the fallback taking over);
-- broken is true while that attempt said the route is broken (93000 or
-- another error of the route itself); it clears with the next success.
CREATE VIEW IF NOT EXISTS route_health_v AS
SELECT
    route,
    argMaxIf(result, ts, result != 'rerouted')         AS last_result,
    argMaxIf(errcode, ts, result != 'rerouted')        AS last_errcode,
    maxIf(ts, result != 'rerouted')                    AS last_attempt_at,
    argMaxIf(result, ts, result != 'rerouted') = 'broken' AS broken,
    countIf(result IN ('delivered', 'digest') AND ts >= now64(3) - INTERVAL 1 HOUR)
                                                       AS delivered_1h,
    countIf(result IN ('retry', 'rate_limited', 'broken', 'rejected', 'crashed')
            AND ts >= now64(3) - INTERVAL 1 HOUR)      AS failed_1h
FROM alert_deliveries FINAL
GROUP BY route;
