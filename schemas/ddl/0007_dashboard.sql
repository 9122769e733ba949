-- Issue 5: what the dashboard needs beyond the aggregates.

-- Operators' acknowledgements of alerts (schemas.control.AlertAck), written
-- by the sink from the alert-acks topic. One row per acknowledgement; a
-- re-sent record has the same key and collapses (read with FINAL).
CREATE TABLE IF NOT EXISTS alert_acks
(
    alert_id    String,
    acked_by    String,
    note        String,
    ts          DateTime64(3, 'UTC'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (alert_id, ts, acked_by);

-- The latest state of every shipment, kept by a materialized view over
-- logistics_events so the logistics page reads one row per shipment instead
-- of scanning the raw events every 2 s. version orders the updates of one
-- shipment: the later ts wins, and at the same millisecond the later stage
-- (a delivery beats the out-for-delivery scan sent with it). A replayed
-- event has the same version and collapses.
CREATE TABLE IF NOT EXISTS shipment_latest
(
    shipment_id String,
    order_id    String,
    origin_type LowCardinality(String),
    origin_id   String,
    carrier     LowCardinality(String),
    region      LowCardinality(String),
    status      LowCardinality(String),
    eta         Nullable(DateTime64(3, 'UTC')),
    ts          DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY shipment_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS shipment_latest_mv TO shipment_latest AS
SELECT
    shipment_id, order_id, origin_type, origin_id, carrier, region, status, eta, ts,
    toUInt64(toUnixTimestamp64Milli(ts)) * 8
        + indexOf(['created', 'picked_up', 'in_transit', 'out_for_delivery',
                   'delivered', 'failed', 'returned'], toString(status)) AS version
FROM logistics_events;

-- Shipments stored before this migration (the view only sees new inserts).
-- Running it twice is harmless: the copies have the same version.
INSERT INTO shipment_latest
SELECT
    shipment_id, order_id, origin_type, origin_id, carrier, region, status, eta, ts,
    toUInt64(toUnixTimestamp64Milli(ts)) * 8
        + indexOf(['created', 'picked_up', 'in_transit', 'out_for_delivery',
                   'delivered', 'failed', 'returned'], toString(status)) AS version
FROM logistics_events;
