-- Issue 3: what the rules see live, for the dashboard.

-- The live stock of a (location, SKU) as the rules see it: the latest per
-- key (read with FINAL). Written whenever on-hand or cover changes.
CREATE TABLE IF NOT EXISTS stock_levels
(
    location_id    LowCardinality(String),
    sku            String,
    region         LowCardinality(String),
    on_hand        Int64,
    velocity_per_h Float64,
    cover_h        Nullable(Float64),
    transfer_from  Nullable(String),
    ts             DateTime64(3, 'UTC'),
    ingested_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ts)
ORDER BY (location_id, sku);

-- A store's pickup queue as the rules see it, as history: one row per
-- change (latest with argMax(..., ts)).
CREATE TABLE IF NOT EXISTS pickup_levels
(
    store_id      LowCardinality(String),
    region        LowCardinality(String),
    waiting       Int64,
    capacity      Int64,
    pressure      Float64,
    p90_wait_s    Nullable(Float64),
    arrivals_15m  Int64,
    served_15m    Int64,
    throttled     Bool,
    ts            DateTime64(3, 'UTC'),
    ingested_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (store_id, ts);
