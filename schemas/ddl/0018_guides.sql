-- Issue 16: shopping guides (导购) as last-mile delivery nodes. A guide
-- delivery is a logistics event with origin_type 'guide', origin_id the store
-- the guide serves and guide_id the guide once one took it
-- (schemas.events.Logistics).

ALTER TABLE logistics_events ADD COLUMN IF NOT EXISTS guide_id Nullable(String);

-- One row per guide delivery once merged, kept by a materialized view over
-- logistics_events so the guides page never scans the raw events: when it was
-- first seen (the order starts waiting for a guide), when a guide had it (any
-- status after 'created'), when it was delivered or failed, by whom for which
-- store. Every column is a min, max or any of the events, so a replayed or
-- re-sent event changes nothing. Read it through guide_deliveries_v.
CREATE TABLE IF NOT EXISTS guide_deliveries
(
    shipment_id  String,
    store_id     SimpleAggregateFunction(any, String),
    order_id     SimpleAggregateFunction(any, String),
    region       SimpleAggregateFunction(any, String),
    guide_id     SimpleAggregateFunction(max, Nullable(String)),
    eta          SimpleAggregateFunction(max, Nullable(DateTime64(3, 'UTC'))),
    created_at   SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    picked_up_at SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    finished_at  SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    delivered    SimpleAggregateFunction(max, UInt8),
    failed       SimpleAggregateFunction(max, UInt8),
    last_ts      SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY shipment_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS guide_deliveries_mv TO guide_deliveries AS
SELECT
    shipment_id, origin_id AS store_id, order_id, toString(region) AS region, guide_id, eta,
    ts AS created_at,
    if(status != 'created', ts, NULL)                   AS picked_up_at,
    if(status IN ('delivered', 'failed'), ts, NULL)     AS finished_at,
    toUInt8(status = 'delivered')                       AS delivered,
    toUInt8(status = 'failed')                          AS failed,
    ts                                                  AS last_ts
FROM logistics_events
WHERE origin_type = 'guide';

-- Guide deliveries stored before this migration (the view only sees new inserts).
-- Running it twice is harmless: every column is a min, max or any.
INSERT INTO guide_deliveries
SELECT
    shipment_id, origin_id AS store_id, order_id, toString(region) AS region, guide_id, eta,
    ts AS created_at,
    if(status != 'created', ts, NULL)                   AS picked_up_at,
    if(status IN ('delivered', 'failed'), ts, NULL)     AS finished_at,
    toUInt8(status = 'delivered')                       AS delivered,
    toUInt8(status = 'failed')                          AS failed,
    ts                                                  AS last_ts
FROM logistics_events
WHERE origin_type = 'guide';

CREATE VIEW IF NOT EXISTS guide_deliveries_v AS
SELECT
    shipment_id,
    any(store_id)                                          AS store_id,
    any(order_id)                                          AS order_id,
    any(region)                                            AS region,
    max(guide_id)                                          AS guide_id,
    max(eta)                                               AS eta,
    min(created_at)                                        AS created_at,
    min(picked_up_at)                                      AS picked_up_at,
    min(finished_at)                                       AS finished_at,
    multiIf(max(delivered) = 1, 'delivered', max(failed) = 1, 'failed', '') AS outcome,
    max(last_ts)                                           AS last_ts
FROM guide_deliveries
GROUP BY shipment_id;

-- Per guide and local day (Asia/Shanghai: a guide's day is the store's day):
-- deliveries made, on time or late against the ETA, failed.
CREATE VIEW IF NOT EXISTS guide_day_v AS
SELECT
    guide_id,
    any(store_id)                                            AS store_id,
    toDate(finished_at, 'Asia/Shanghai')                     AS day,
    countIf(outcome = 'delivered')                           AS delivered,
    countIf(outcome = 'delivered' AND (eta IS NULL OR finished_at <= eta)) AS on_time,
    countIf(outcome = 'delivered' AND eta IS NOT NULL AND finished_at > eta) AS late,
    countIf(outcome = 'failed')                              AS failed
FROM guide_deliveries_v
WHERE finished_at IS NOT NULL AND guide_id IS NOT NULL
GROUP BY guide_id, day;
