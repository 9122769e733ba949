-- Records the system itself writes. Each table's sorting key is the
-- record's natural key, so a record re-sent by a restarted worker, or
-- replayed by a restarted sink, collapses into one row (read with FINAL).

-- An event that arrived after its window closed. One event can be late for
-- several aggregates, and for several keys of one aggregate (an order with
-- three SKUs is late for three sku_sales_5min keys), hence dims in the key.
CREATE TABLE IF NOT EXISTS late_events
(
    aggregate    LowCardinality(String),
    dims         Array(String),
    window_start DateTime64(3, 'UTC'),
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    `index`      Int32,
    event_ts     DateTime64(3, 'UTC'),
    watermark    DateTime64(3, 'UTC'),
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (source_topic, partition, offset, index, aggregate, dims);

-- A malformed event, kept whole: raw holds the exact bytes (any bytes; a
-- ClickHouse String is binary-safe). index is the position in a batch
-- envelope, -1 when the whole message was the event.
CREATE TABLE IF NOT EXISTS dead_letters
(
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    `index`      Int32,
    reason       LowCardinality(String),
    detail       String,
    raw          String,
    received_at  DateTime64(3, 'UTC'),
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (source_topic, partition, offset, index);

-- One row per alert: its latest state. version orders the updates of one
-- alert (the sink derives it from opened_at/resolved_at, a resolution
-- beating the opening at the same millisecond), so FINAL shows the newest.
-- evidence is the JSON object the alert carries (query with JSONExtract*).
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id     String,
    kind         LowCardinality(String),
    severity     LowCardinality(String),
    status       LowCardinality(String),
    message      String,
    evidence     String,
    opened_at    DateTime64(3, 'UTC'),
    resolved_at  Nullable(DateTime64(3, 'UTC')),
    region       Nullable(String),
    store_id     Nullable(String),
    sku          Nullable(String),
    carrier      Nullable(String),
    version      UInt64,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY alert_id;

-- Every coupon decision, as history (coupon_state_v gives the latest).
CREATE TABLE IF NOT EXISTS coupon_decisions
(
    campaign_id  LowCardinality(String),
    store_id     LowCardinality(String),
    state        LowCardinality(String),
    reason       String,
    evidence     String,
    ts           DateTime64(3, 'UTC'),
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (campaign_id, store_id, ts);

-- Every policy marketing set, as history (coupon_policy_current_v gives the
-- one in force). store_id '' means all stores of the campaign.
CREATE TABLE IF NOT EXISTS coupon_policies
(
    campaign_id      LowCardinality(String),
    store_id         LowCardinality(String),
    cap_per_window   Nullable(Int64),
    window_seconds   Int64,
    per_member_limit Nullable(Int64),
    paused           Bool,
    set_by           String,
    set_at           DateTime64(3, 'UTC'),
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (campaign_id, store_id, set_at);
