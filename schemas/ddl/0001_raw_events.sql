-- Raw events, one table per stream: every field of the event record, plus
-- event_key (= the record's dedup_key()), the Kafka position it was read
-- from, and when the sink wrote it.
--
-- Producers are at-least-once and the sink replays whatever it had not
-- committed before a crash, so the same event can be inserted several times.
-- ReplacingMergeTree collapses rows with the same sorting key: the key is
-- made of columns that are part of the event itself and ends in event_key,
-- so a re-sent or replayed event always lands on the same key (and, since
-- its ts is the same, in the same daily partition). Queries that must count
-- events exactly read the table with FINAL.

CREATE TABLE IF NOT EXISTS scan_events
(
    event_key    String,
    event_id     Nullable(String),
    scan_id      String,
    store_id     LowCardinality(String),
    sku          String,
    action       LowCardinality(String),
    member_id    Nullable(String),
    ts           DateTime64(3, 'UTC'),
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (store_id, event_key);

-- Order lines are a Nested column: lines.sku, lines.qty and lines.unit_price
-- are parallel arrays (ARRAY JOIN lines to get one row per line).
-- amount is the yuan figure as sent; amount_fen is the exact integer the
-- aggregates add up.
CREATE TABLE IF NOT EXISTS order_events
(
    event_key    String,
    event_id     Nullable(String),
    order_id     String,
    member_id    String,
    store_id     LowCardinality(String),
    channel      LowCardinality(String),
    fulfillment  LowCardinality(String),
    lines        Nested(sku String, qty UInt32, unit_price Float64),
    amount       Float64,
    amount_fen   Int64,
    status       LowCardinality(String),
    coupon_id    Nullable(String),
    ship_from    Nullable(String),
    ts           DateTime64(3, 'UTC'),
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (store_id, event_key);

CREATE TABLE IF NOT EXISTS pickup_events
(
    event_key    String,
    event_id     Nullable(String),
    order_id     String,
    store_id     LowCardinality(String),
    state        LowCardinality(String),
    slot_start   Nullable(DateTime64(3, 'UTC')),
    ts           DateTime64(3, 'UTC'),
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (store_id, event_key);

CREATE TABLE IF NOT EXISTS logistics_events
(
    event_key    String,
    event_id     Nullable(String),
    shipment_id  String,
    order_id     String,
    origin_type  LowCardinality(String),
    origin_id    String,
    carrier      LowCardinality(String),
    region       LowCardinality(String),
    status       LowCardinality(String),
    eta          Nullable(DateTime64(3, 'UTC')),
    ts           DateTime64(3, 'UTC'),
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (shipment_id, event_key);

-- qty is as sent: never negative except for adjustments, which carry their
-- sign; a transfer_out removes qty units (see stock_on_hand_v).
CREATE TABLE IF NOT EXISTS inventory_events
(
    event_key    String,
    event_id     Nullable(String),
    location_id  LowCardinality(String),
    sku          String,
    kind         LowCardinality(String),
    qty          Int64,
    ts           DateTime64(3, 'UTC'),
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (location_id, sku, event_key);

CREATE TABLE IF NOT EXISTS coupon_events
(
    event_key    String,
    event_id     Nullable(String),
    coupon_id    String,
    campaign_id  LowCardinality(String),
    store_id     LowCardinality(String),
    member_id    String,
    action       LowCardinality(String),
    ts           DateTime64(3, 'UTC'),
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (campaign_id, event_key);
