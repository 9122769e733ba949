-- Closed-window aggregates, one table per AggregateSpec in
-- tables/aggregates.py (a test checks the columns against the specs).
--
-- A row is one partial: the counters of one (dims, window) as folded by one
-- worker from one source partition. A key fed from several partitions has
-- several partials; the *_v views (0004) add them up. A partial re-sent
-- after a worker crash has the same sorting key and replaces the earlier
-- copy; the version column keeps the copy that folded in the most offsets.

CREATE TABLE IF NOT EXISTS store_minute
(
    store_id          LowCardinality(String),
    window_start      DateTime64(3, 'UTC'),
    window_end        DateTime64(3, 'UTC'),
    scans             Int64,
    add_to_cart       Int64,
    orders            Int64,
    paid_orders       Int64,
    gmv_fen           Int64,
    refunded_orders   Int64,
    pickup_arrivals   Int64,
    pickups_served    Int64,
    pickup_no_shows   Int64,
    coupons_issued    Int64,
    coupons_redeemed  Int64,
    source_topic      LowCardinality(String),
    partition         Int32,
    through_offset    Int64,
    closed_at         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(through_offset)
PARTITION BY toYYYYMM(window_start)
ORDER BY (store_id, window_start, source_topic, partition);

CREATE TABLE IF NOT EXISTS sku_sales_5min
(
    location_id       LowCardinality(String),
    sku               String,
    window_start      DateTime64(3, 'UTC'),
    window_end        DateTime64(3, 'UTC'),
    units             Int64,
    revenue_fen       Int64,
    source_topic      LowCardinality(String),
    partition         Int32,
    through_offset    Int64,
    closed_at         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(through_offset)
PARTITION BY toYYYYMM(window_start)
ORDER BY (location_id, sku, window_start, source_topic, partition);

CREATE TABLE IF NOT EXISTS carrier_region_15min
(
    carrier           LowCardinality(String),
    region            LowCardinality(String),
    window_start      DateTime64(3, 'UTC'),
    window_end        DateTime64(3, 'UTC'),
    created           Int64,
    picked_up         Int64,
    in_transit        Int64,
    out_for_delivery  Int64,
    delivered         Int64,
    failed            Int64,
    returned          Int64,
    delivered_on_time Int64,
    delivered_late    Int64,
    source_topic      LowCardinality(String),
    partition         Int32,
    through_offset    Int64,
    closed_at         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(through_offset)
PARTITION BY toYYYYMM(window_start)
ORDER BY (carrier, region, window_start, source_topic, partition);

CREATE TABLE IF NOT EXISTS campaign_store_minute
(
    campaign_id       LowCardinality(String),
    store_id          LowCardinality(String),
    window_start      DateTime64(3, 'UTC'),
    window_end        DateTime64(3, 'UTC'),
    issued            Int64,
    claimed           Int64,
    redeemed          Int64,
    expired           Int64,
    source_topic      LowCardinality(String),
    partition         Int32,
    through_offset    Int64,
    closed_at         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(through_offset)
PARTITION BY toYYYYMM(window_start)
ORDER BY (campaign_id, store_id, window_start, source_topic, partition);
