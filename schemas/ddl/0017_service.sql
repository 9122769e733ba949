-- Issue 16: the customer-service stream (ct.service): tickets, inquiries and
-- complaints, opened and closed (schemas.events.Service).

-- Raw events, as the other streams' (0001): one row per event, collapsed on
-- event_key. sku is empty for a ticket about no SKU.
CREATE TABLE IF NOT EXISTS service_events
(
    event_key    String,
    event_id     Nullable(String),
    ticket_id    String,
    channel      LowCardinality(String),
    kind         LowCardinality(String),
    topic        LowCardinality(String),
    state        LowCardinality(String),
    store_id     LowCardinality(String),
    order_id     Nullable(String),
    sku          Nullable(String),
    ts           DateTime64(3, 'UTC'),
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (ticket_id, event_key);

-- Closed minutes of tables.aggregates.SERVICE_MINUTE, per partition (0002).
CREATE TABLE IF NOT EXISTS service_minute
(
    store_id          LowCardinality(String),
    sku               String,
    window_start      DateTime64(3, 'UTC'),
    window_end        DateTime64(3, 'UTC'),
    inquiries         Int64,
    complaints        Int64,
    complaints_closed Int64,
    source_topic      LowCardinality(String),
    partition         Int32,
    through_offset    Int64,
    closed_at         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(through_offset)
PARTITION BY toYYYYMM(window_start)
ORDER BY (store_id, sku, window_start, source_topic, partition);

CREATE VIEW IF NOT EXISTS service_minute_v AS
SELECT
    store_id,
    sku,
    window_start,
    max(window_end)        AS window_end,
    sum(inquiries)         AS inquiries,
    sum(complaints)        AS complaints,
    sum(complaints_closed) AS complaints_closed,
    count()                AS partials,
    max(closed_at)         AS closed_at
FROM service_minute FINAL
GROUP BY store_id, sku, window_start;

-- Complaints per SKU per hour and per store per hour (sums of closed minutes).
CREATE VIEW IF NOT EXISTS complaints_sku_hour_v AS
SELECT
    sku,
    toStartOfHour(window_start) AS hour,
    sum(c)                      AS complaints,
    sum(cc)                     AS complaints_closed,
    sum(i)                      AS inquiries,
    uniqExactIf(store_id, c > 0) AS stores
FROM
(
    SELECT store_id, sku, window_start, complaints AS c, complaints_closed AS cc,
           inquiries AS i
    FROM service_minute_v
    WHERE sku != ''
)
GROUP BY sku, hour;

CREATE VIEW IF NOT EXISTS complaints_store_hour_v AS
SELECT
    store_id,
    toStartOfHour(window_start) AS hour,
    sum(complaints)             AS complaints,
    sum(complaints_closed)      AS complaints_closed,
    sum(inquiries)              AS inquiries
FROM service_minute_v
GROUP BY store_id, hour;

-- Each complaint's SLA state from the raw events: opened, closed (if it was),
-- and its topic, SKU and store. The deadline (opened + the rules' sla_hours)
-- is the reader's: the SLA is a rule threshold that can change at run time.
CREATE VIEW IF NOT EXISTS complaint_tickets_v AS
SELECT
    ticket_id,
    any(channel)                             AS channel,
    any(topic)                               AS topic,
    any(store_id)                            AS store_id,
    anyIf(sku, sku IS NOT NULL)              AS sku,
    anyIf(order_id, order_id IS NOT NULL)    AS order_id,
    minIf(ts, state = 'opened')              AS opened_at,
    minIfOrNull(ts, state = 'closed')        AS closed_at
FROM service_events FINAL
WHERE kind = 'complaint'
GROUP BY ticket_id;
