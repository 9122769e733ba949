-- Issue 15: the stock rules' action orders (schemas.actions.ActionOrder), from
-- ct.actions: the whole order at every change of state. One row per order:
-- version ranks the states (proposed < approved < dispatched < an end) and
-- then the time, so a later state wins even when its answer's wall clock is
-- behind the rules' event time; a re-sent record collapses (read with FINAL).
CREATE TABLE IF NOT EXISTS action_orders
(
    order_id    String,
    kind        LowCardinality(String),
    status      LowCardinality(String),
    source      String,
    destination String,
    sku         String,
    qty         Int64,
    due_at      DateTime64(3, 'UTC'),
    created_at  DateTime64(3, 'UTC'),
    ts          DateTime64(3, 'UTC'),
    region      LowCardinality(String),
    cause       String,
    evidence    String,
    by          String,
    note        String,
    version     UInt64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY order_id;
