-- Issue 15: customer-service tasks per shipment (schemas.tasks.ShipmentTask),
-- from ct.tasks: opened by the lane rules, closed by them when the shipment
-- recovers or by a person (ctower tasks handle). One row per task: a closed
-- task wins over its opening (version), a re-sent record collapses (FINAL).
CREATE TABLE IF NOT EXISTS shipment_tasks
(
    task_id     String,
    shipment_id String,
    order_id    String,
    member_id   String,
    carrier     LowCardinality(String),
    region      LowCardinality(String),
    district    String,
    kind        LowCardinality(String),
    status      LowCardinality(String),
    detail      String,
    message     String,
    opened_at   DateTime64(3, 'UTC'),
    closed_at   Nullable(DateTime64(3, 'UTC')),
    closed_by   String,
    ts          DateTime64(3, 'UTC'),
    version     UInt64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY task_id;

-- The optional delivery district of logistics events (NULL when the carrier
-- does not say).
ALTER TABLE logistics_events ADD COLUMN IF NOT EXISTS district Nullable(String) AFTER eta;
