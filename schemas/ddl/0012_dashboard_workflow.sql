-- Issue 14: the dashboard's alert workflow and its hot-SKU view.

-- Who did what to an alert (schemas.control.AlertAck, from the dashboard
-- through ct.alert-acks): 'ack' (acknowledge), 'assign' (owner names who
-- owns it) or 'resolve' (closed by an operator, with a note). Rows written
-- before this migration were acknowledgements.
ALTER TABLE alert_acks ADD COLUMN IF NOT EXISTS action LowCardinality(String) DEFAULT 'ack';
ALTER TABLE alert_acks ADD COLUMN IF NOT EXISTS owner String DEFAULT '';

-- Scans and paid orders per (store, SKU, minute), for the top SKUs by scans
-- and by scan-to-order conversion. No aggregate of the workers counts scans
-- per SKU, so two materialized views fill this table from the raw tables as
-- the sink inserts. Each cell is a uniq state of the events' identities (the
-- scan's event_key, the order's id): an event inserted twice (a sink replay,
-- a producer's re-send with the same identity) lands in the same minute and
-- counts once when the states merge. Read with uniqMerge, never FINAL.
CREATE TABLE IF NOT EXISTS sku_store_minute
(
    window_start DateTime('UTC'),
    store_id     LowCardinality(String),
    sku          String,
    scans        AggregateFunction(uniq, String),
    paid_orders  AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, store_id, sku);

CREATE MATERIALIZED VIEW IF NOT EXISTS sku_store_minute_scans_mv TO sku_store_minute AS
SELECT toStartOfMinute(ts) AS window_start, store_id, sku,
       uniqState(event_key) AS scans, uniqStateIf(event_key, 0) AS paid_orders
FROM scan_events
GROUP BY window_start, store_id, sku;

CREATE MATERIALIZED VIEW IF NOT EXISTS sku_store_minute_orders_mv TO sku_store_minute AS
SELECT toStartOfMinute(ts) AS window_start, store_id, line_sku AS sku,
       uniqStateIf(order_id, 0) AS scans, uniqState(order_id) AS paid_orders
FROM order_events
ARRAY JOIN lines.sku AS line_sku
WHERE status = 'paid'
GROUP BY window_start, store_id, sku;

-- Events stored before this migration (the views only see new inserts).
-- Running it twice is harmless: the identities are counted once.
INSERT INTO sku_store_minute
SELECT toStartOfMinute(ts) AS window_start, store_id, sku,
       uniqState(event_key), uniqStateIf(event_key, 0)
FROM scan_events
GROUP BY window_start, store_id, sku;

INSERT INTO sku_store_minute
SELECT toStartOfMinute(ts) AS window_start, store_id, line_sku AS sku,
       uniqStateIf(order_id, 0), uniqState(order_id)
FROM order_events
ARRAY JOIN lines.sku AS line_sku
WHERE status = 'paid'
GROUP BY window_start, store_id, sku;
